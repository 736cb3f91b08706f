"""One training job at a time: a queue with one worker thread, visible state, cancel.

The web UI submits a job (a function that takes a `JobContext`); the worker thread runs jobs one
after another in submission order. Every session can see the whole queue (`snapshot`) and poll a
job's progress, loss history and sample images while it runs. Cancel sets an event the job's code
checks each step (the trainer's `cancel` argument), so a running job stops within a step; a queued
job is dropped before it starts. Nothing here is global: the app state owns one `JobQueue`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdlora.errors import SdloraError

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = frozenset({DONE, FAILED, CANCELLED})


@dataclass
class Job:
    """What the UI shows about one job; the worker thread writes it, sessions read it."""

    id: int
    name: str
    status: str = QUEUED
    step: int = 0
    total: int = 0
    message: str = ""
    losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    samples: list[str] = field(default_factory=list)
    stages: dict[str, str] = field(default_factory=dict)  # stage name -> its latest line, in order entered
    result: Any = None
    error: str = ""
    submitted: float = field(default_factory=time.time)
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class JobContext:
    """Handed to a running job: report progress, record losses and samples, check for cancel."""

    def __init__(self, job: Job, lock: threading.Lock):
        self._job = job
        self._lock = lock

    @property
    def cancel_event(self) -> threading.Event:
        return self._job.cancel_event

    def cancelled(self) -> bool:
        return self._job.cancel_event.is_set()

    def progress(self, step: int, total: int, message: str = "") -> None:
        with self._lock:
            self._job.step, self._job.total, self._job.message = step, total, message

    def message(self, text: str, stage: str | None = None) -> None:
        """Say what the job is doing now, without moving its step (stages before and between steps);
        with `stage`, the line is also kept as that stage's latest (the page lists every stage seen)."""
        with self._lock:
            self._job.message = text
            if stage is not None:
                self._job.stages[stage] = text

    def add_loss(self, step: int, loss: float) -> None:
        with self._lock:
            self._job.losses.append((int(step), float(loss)))

    def add_val_loss(self, step: int, loss: float) -> None:
        with self._lock:
            self._job.val_losses.append((int(step), float(loss)))

    def add_samples(self, paths: list[str]) -> None:
        with self._lock:
            self._job.samples.extend(str(p) for p in paths)


JobFn = Callable[[JobContext], Any]


class JobQueue:
    """Runs submitted jobs one at a time on a daemon worker thread, in submission order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[int, Job] = {}
        self._fns: dict[int, JobFn] = {}
        self._ids = itertools.count(1)
        self._worker: threading.Thread | None = None
        self._closed = False

    def submit(self, name: str, fn: JobFn) -> Job:
        """Queue `fn` under a display name; it starts when every earlier job has finished."""
        with self._wake:
            job = Job(id=next(self._ids), name=name)
            self._jobs[job.id] = job
            self._fns[job.id] = fn
            self._ensure_worker()
            self._wake.notify()
        return job

    def cancel(self, job_id: int) -> Job:
        """Stop a running job within a step, or drop a queued one. Finished jobs stay as they are."""
        with self._lock:
            job = self._get(job_id)
            if job.status == QUEUED:
                job.status, job.message = CANCELLED, "cancelled before it started"
                self._fns.pop(job_id, None)
            job.cancel_event.set()
            return job

    def get(self, job_id: int) -> Job:
        with self._lock:
            return self._get(job_id)

    def snapshot(self) -> list[dict]:
        """A copy of every job's visible state, oldest first (safe to read without the lock)."""
        with self._lock:
            return [_visible(job) for job in self._jobs.values()]

    def job_state(self, job_id: int) -> dict:
        """A consistent copy of one job's visible state, including its loss history and samples."""
        with self._lock:
            job = self._get(job_id)
            state = _visible(job)
            state.update(losses=list(job.losses), val_losses=list(job.val_losses), samples=list(job.samples),
                         result=job.result,
                         stages=dict(job.stages))
            return state

    def wait(self, job_id: int, timeout: float | None = None) -> Job:
        """Block until the job has finished (used by tests and scripts, never by UI handlers)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
            time.sleep(0.05)

    def close(self) -> None:
        """Cancel everything and let the worker thread end."""
        with self._wake:
            self._closed = True
            for job in self._jobs.values():
                job.cancel_event.set()
            self._wake.notify_all()

    def _get(self, job_id: int) -> Job:
        try:
            return self._jobs[int(job_id)]
        except (KeyError, TypeError, ValueError):
            raise SdloraError(f"there is no job {job_id!r}") from None

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run_forever, name="sdlora-jobs", daemon=True)
            self._worker.start()

    def _next(self) -> tuple[Job, JobFn] | None:
        with self._wake:
            while not self._closed:
                for job_id, fn in list(self._fns.items()):
                    del self._fns[job_id]
                    job = self._jobs[job_id]
                    job.status = RUNNING
                    return job, fn
                self._wake.wait(timeout=1.0)
            return None

    def _run_forever(self) -> None:
        while (item := self._next()) is not None:
            self._run_one(*item)

    def _run_one(self, job: Job, fn: JobFn) -> None:
        try:
            result = fn(JobContext(job, self._lock))
        except SdloraError as err:
            status, error, result = FAILED, str(err), None
        except Exception as err:  # a bug, not the user's fault: log the traceback, show one line
            log.exception("job %s (%s) failed", job.id, job.name)
            status, error, result = FAILED, f"internal error: {type(err).__name__}: {err}", None
        else:
            status, error = (CANCELLED if job.cancel_event.is_set() else DONE), ""
        with self._lock:
            job.status, job.error, job.result = status, error, result
            if status == CANCELLED and not job.message.startswith("cancelled"):
                job.message = "cancelled"  # the job's own line, when it wrote one, says what was kept


def _visible(job: Job) -> dict:
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status,
        "step": job.step,
        "total": job.total,
        "message": job.message,
        "error": job.error,
        "last_loss": job.losses[-1][1] if job.losses else None,
    }

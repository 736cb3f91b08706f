"""The Library's download queue: one download at a time in a worker thread, with progress and cancel.

Every session sees the same queue (`snapshot`). A job's progress (bytes, speed, time left) is written by the
worker and read by the page's timer. Cancel sets the running job's event (the download stops within a chunk
and keeps its resumable `.part`) and drops the queued ones. The panel that builds the queue owns it: nothing
here is module-level.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from sdlora.errors import SdloraError

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "downloading", "done", "failed", "cancelled"


@dataclass
class DownloadJob:
    id: int
    target: str
    folder: str
    status: str = QUEUED
    done: int = 0          # bytes
    total: int = 0         # bytes, 0 while unknown
    speed: float = 0.0     # bytes per second
    eta: float | None = None
    message: str = ""
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)


class DownloadQueue:
    """`run(job)` does one download (reporting into the job) and returns the message shown when done."""

    def __init__(self, run: Callable[[DownloadJob], str]):
        self._run = run
        self._jobs: list[DownloadJob] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self.finished = 0  # jobs ended so far (the page refreshes the library when it grows)

    def submit(self, target: str, folder: str) -> DownloadJob:
        if not (target or "").strip():
            raise SdloraError("type a Civitai URL, a version id, model:ID or an https URL to download")
        with self._lock:
            job = DownloadJob(next(self._ids), target.strip(), folder)
            self._jobs.append(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="downloads", daemon=True)
                self._worker.start()
            self._wake.notify()
        return job

    def cancel(self) -> int:
        """Stop the running download and drop the queued ones; returns how many were cancelled."""
        count = 0
        with self._lock:
            for job in self._jobs:
                if job.status in (QUEUED, RUNNING):
                    job.cancel.set()
                    count += 1
                    if job.status == QUEUED:
                        job.status, job.message = CANCELLED, "cancelled before it started"
                        self.finished += 1
        return count

    def busy(self) -> bool:
        """Whether a download is queued or running."""
        with self._lock:
            return any(job.status in (QUEUED, RUNNING) for job in self._jobs)

    def snapshot(self) -> list[DownloadJob]:
        with self._lock:
            return [replace(job) for job in self._jobs]

    def _next(self) -> DownloadJob:
        with self._lock:
            while True:
                job = next((j for j in self._jobs if j.status == QUEUED), None)
                if job is not None:
                    job.status = RUNNING
                    return job
                self._wake.wait()

    def _work(self) -> None:
        while True:
            job = self._next()
            try:
                message, status = self._run(job), DONE
            except SdloraError as err:
                message, status = str(err), CANCELLED if job.cancel.is_set() else FAILED
            except Exception as err:  # a bug: the worker must live on for the next job
                log.exception("download %s failed", job.target)
                message, status = f"internal error ({type(err).__name__}: {err}); see the server log", FAILED
            with self._lock:
                job.status, job.message = status, message
                self.finished += 1

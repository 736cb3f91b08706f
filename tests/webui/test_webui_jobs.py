"""The job queue: one job at a time, in order, visible, cancellable, errors as one line."""

from __future__ import annotations

import threading

import pytest

from sdlora.errors import SdloraError, TrainingError
from sdlora_webui.jobs import CANCELLED, DONE, FAILED, QUEUED, JobQueue


@pytest.fixture
def queue():
    q = JobQueue()
    yield q
    q.close()


def test_jobs_run_one_at_a_time_in_order(queue):
    running = []
    overlap = []
    release = threading.Event()

    def make(name):
        def fn(ctx):
            running.append(name)
            if len(running) - len(done) > 1:
                overlap.append(name)
            release.wait(5)
            done.append(name)
            return name

        return fn

    done = []
    a = queue.submit("a", make("a"))
    b = queue.submit("b", make("b"))
    # while a runs, b is visibly queued
    for _ in range(1000):  # up to 10 s: a loaded CI machine can be slow to start the thread
        if queue.get(a.id).status == "running":
            break
        threading.Event().wait(0.01)
    statuses = {j["name"]: j["status"] for j in queue.snapshot()}
    assert statuses == {"a": "running", "b": QUEUED}
    release.set()
    assert queue.wait(b.id, timeout=5).status == DONE
    assert done == ["a", "b"] and not overlap
    assert queue.get(a.id).result == "a"


def test_cancel_stops_a_running_job_within_a_step(queue):
    steps = []

    def fn(ctx):
        for step in range(1, 10_000):
            if ctx.cancelled():
                return "stopped"
            ctx.progress(step, 10_000)
            ctx.add_loss(step, 1.0 / step)
            steps.append(step)
            threading.Event().wait(0.005)
        return "finished"

    job = queue.submit("train", fn)
    while queue.get(job.id).step < 3:
        threading.Event().wait(0.01)
    queue.cancel(job.id)
    finished = queue.wait(job.id, timeout=5)
    assert finished.status == CANCELLED
    assert finished.step < 10_000
    assert len(queue.job_state(job.id)["losses"]) == len(steps)


def test_cancel_a_queued_job_drops_it(queue):
    release = threading.Event()
    first = queue.submit("first", lambda ctx: release.wait(5))
    ran = []
    second = queue.submit("second", lambda ctx: ran.append(1))
    queue.cancel(second.id)
    release.set()
    queue.wait(first.id, timeout=5)
    assert queue.get(second.id).status == CANCELLED
    assert not ran


def test_user_error_is_one_line_and_bug_is_short(queue):
    def user_error(ctx):
        raise TrainingError("loss became NaN at step 3; lower the learning rate")

    def bug(ctx):
        raise KeyError("oops")

    a = queue.submit("a", user_error)
    b = queue.submit("b", bug)
    assert queue.wait(a.id, 5).status == FAILED
    assert queue.get(a.id).error == "loss became NaN at step 3; lower the learning rate"
    job_b = queue.wait(b.id, 5)
    assert job_b.status == FAILED
    assert job_b.error.startswith("internal error: KeyError") and "Traceback" not in job_b.error


def test_unknown_job_is_a_clear_error(queue):
    with pytest.raises(SdloraError, match="no job 42"):
        queue.get(42)

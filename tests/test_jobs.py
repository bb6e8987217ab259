"""The durable job queue: leases, retries, poison jobs, crash resume."""

from __future__ import annotations

import time

import pytest

from appliance.jobs import PROCESS_SERIES, JobQueue, LeaseLostError
from dicom_node.database import Database


@pytest.fixture
def queue(tmp_path) -> JobQueue:
    return JobQueue(Database(tmp_path / "db.sqlite"), max_attempts=3, retry_backoff_s=10.0)


def _enqueue(queue: JobQueue, series: str = "1.2.3", version: int = 1) -> int:
    job_id = queue.enqueue(kind=PROCESS_SERIES, series_uid=series, series_version=version)
    assert job_id is not None
    return job_id


def test_enqueueing_the_same_series_version_twice_makes_one_job(queue):
    _enqueue(queue)
    assert queue.enqueue(kind=PROCESS_SERIES, series_uid="1.2.3", series_version=1) is None
    assert queue.counts()["queued"] == 1


def test_jobs_are_claimed_oldest_first_and_only_once(queue):
    first, second = _enqueue(queue, "1.1"), _enqueue(queue, "1.2")
    a = queue.claim("w1", lease_s=60)
    b = queue.claim("w2", lease_s=60)
    assert (a.id, b.id) == (first, second)
    assert queue.claim("w3", lease_s=60) is None
    assert a.state == "running" and a.attempts == 1


def test_expired_lease_returns_the_job_to_another_worker(queue):
    job_id = _enqueue(queue)
    t = time.time()
    job = queue.claim("dead-worker", lease_s=5, now=t)
    assert queue.claim("w2", lease_s=5, now=t + 4) is None
    again = queue.claim("w2", lease_s=5, now=t + 6)
    assert again.id == job_id == job.id and again.attempts == 2
    with pytest.raises(LeaseLostError):
        queue.complete(job_id, "dead-worker", {})
    queue.complete(job_id, "w2", {"ok": True})
    assert queue.get(job_id).state == "done"
    assert queue.get(job_id).result == {"ok": True}


def test_job_that_keeps_losing_its_lease_ends_failed(queue):
    job_id = _enqueue(queue)
    now = time.time()
    for _ in range(3):
        assert queue.claim("crashing-worker", lease_s=1, now=now) is not None
        now += 2
    assert queue.claim("w", lease_s=1, now=now) is None
    job = queue.get(job_id)
    assert job.state == "failed" and "gave up after 3 attempts" in job.last_error


def test_retryable_failure_backs_off_then_fails_after_max_attempts(queue):
    job_id = _enqueue(queue)
    job = queue.claim("w", lease_s=60)
    assert queue.fail(job.id, "w", "disk hiccup", retryable=True) == "queued"
    assert queue.claim("w", lease_s=60) is None  # backoff not yet elapsed
    for attempt in (2, 3):
        job = queue.claim("w", lease_s=60, now=time.time() + 10**6)  # long after any backoff
        assert job.attempts == attempt
        state = queue.fail(job.id, "w", "disk hiccup", retryable=True)
    assert state == "failed"
    assert queue.get(job_id).last_error == "disk hiccup"


def test_permanent_failure_fails_at_once_and_operator_can_retry(queue):
    job_id = _enqueue(queue)
    job = queue.claim("w", lease_s=60)
    assert queue.fail(job.id, "w", "VolumeError: missing slice", retryable=False) == "failed"
    assert queue.retry(job_id)
    assert queue.claim("w", lease_s=60).attempts == 1


def test_restart_requeues_jobs_that_were_running(queue):
    job_id = _enqueue(queue)
    queue.claim("w-before-crash", lease_s=3600)
    assert queue.requeue_running() == 1
    assert queue.claim("w-after", lease_s=60).id == job_id


def test_clean_release_does_not_count_an_attempt(queue):
    job_id = _enqueue(queue)
    job = queue.claim("w", lease_s=60)
    queue.release(job.id, "w")
    assert queue.claim("w", lease_s=60).attempts == 1 == queue.get(job_id).attempts


def test_queue_survives_reopening_the_database(tmp_path):
    db_path = tmp_path / "db.sqlite"
    q1 = JobQueue(Database(db_path))
    q1.enqueue(kind=PROCESS_SERIES, series_uid="9.9", series_version=1)
    q2 = JobQueue(Database(db_path))
    assert q2.counts() == {"queued": 1, "running": 0, "done": 0, "failed": 0}


def _crashing_worker(queue: JobQueue, crashes: list[Exception]):  # noqa: ANN202 - a Worker
    """A Worker whose job body raises what the pipeline's handlers do not catch (SQLite busy, I/O error),
    then completes the job once `crashes` is used up."""
    from appliance.config import parse_config
    from appliance.worker import Worker

    class Crashing(Worker):
        ran: list[int] = []

        def _run_job(self, job) -> None:  # noqa: ANN001
            self.ran.append(job.id)
            if crashes:
                raise crashes.pop(0)
            queue.complete(job.id, self.owner, {})

    return Crashing("w", queue, None, None, parse_config(""), None, None, None, poll_s=0.05)


def test_a_worker_survives_an_uncaught_error_and_the_job_is_retried(queue):
    import sqlite3

    first, second = _enqueue(queue, "1.2.3"), _enqueue(queue, "1.2.4")
    worker = _crashing_worker(queue, [sqlite3.OperationalError("database is locked"), OSError(28, "full")])
    queue.retry_backoff_s = 0.0
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(queue.get(j).state == "done" for j in (first, second)):
            time.sleep(0.05)
    finally:
        worker.stop()
        worker.join(5)
    assert [queue.get(j).state for j in (first, second)] == ["done", "done"]
    assert len(worker.ran) == 4  # two crashes, each job then retried and done


def test_lease_renewal_survives_a_busy_database():
    import sqlite3
    import threading

    from appliance.config import parse_config
    from appliance.worker import Worker

    calls: list[str] = []

    class FlakyQueue:
        def renew(self, job_id, owner, lease_s) -> None:  # noqa: ANN001
            calls.append("renew")
            if len(calls) == 1:
                raise sqlite3.OperationalError("database is locked")

    worker = Worker("w", FlakyQueue(), None, None, parse_config("processing: {lease_s: 0.06}"), None, None, None)
    done = threading.Event()
    renewer = threading.Thread(target=worker._renew_until, args=(type("J", (), {"id": 1})(), done))
    renewer.start()
    time.sleep(0.2)
    done.set()
    renewer.join(2)
    assert len(calls) >= 3, "renewal went on after the database refused once"


def test_a_clean_shutdown_gives_back_held_jobs_without_counting_the_attempt(queue):
    from appliance.worker import release_unfinished

    job_id = _enqueue(queue)
    worker = _crashing_worker(queue, [])
    worker.current = queue.claim(worker.owner, 60)
    assert queue.get(job_id).attempts == 1
    assert release_unfinished(queue, [worker]) == 1
    job = queue.get(job_id)
    assert (job.state, job.attempts) == ("queued", 0)


def test_crashes_during_a_job_do_not_use_up_its_attempts_until_they_look_like_a_crash_loop(tmp_path):
    from appliance.jobs import MAX_INTERRUPTIONS

    queue = JobQueue(Database(tmp_path / "db.sqlite"), max_attempts=3)
    job_id = queue.enqueue(kind="process_series", series_uid="1.2.3", series_version=1)
    for _ in range(MAX_INTERRUPTIONS):  # kill -9 while it runs, then the node starts again
        assert queue.claim("w", lease_s=60).id == job_id
        assert queue.requeue_running() == 1
    assert queue.get(job_id).attempts == 0 and queue.get(job_id).state == "queued"
    for _ in range(3):  # from here on every crash counts: a series that kills the node ends failed
        queue.claim("w", lease_s=60)
        queue.requeue_running()
    assert queue.claim("w", lease_s=60) is None and queue.get(job_id).state == "failed"


def test_a_postponed_job_keeps_its_attempt_and_waits(tmp_path):
    queue = JobQueue(Database(tmp_path / "db.sqlite"), max_attempts=1)
    job_id = queue.enqueue(kind="process_series", series_uid="1.2.3", series_version=1)
    job = queue.claim("w", lease_s=60)
    queue.postpone(job.id, "w", 15.0, "disk full: waiting for free space")
    after = queue.get(job_id)
    assert (after.state, after.attempts, after.last_error) == ("queued", 0, "disk full: waiting for free space")
    assert queue.claim("w", lease_s=60, now=queue.clock() + 1) is None  # not before its delay
    assert queue.claim("w", lease_s=60, now=queue.clock() + 20).id == job_id

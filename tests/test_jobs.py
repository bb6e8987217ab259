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

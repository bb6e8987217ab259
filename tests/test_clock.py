"""The node's steady clock: a wall-clock step (a Jetson boots in 1970, then NTP steps it) must not expire
leases, complete series early or late, or make new data look old to retention."""

from __future__ import annotations

import logging
import os
import time

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from appliance.completion import SeriesCompletion
from appliance.config import parse_config, with_overrides
from appliance.jobs import PROCESS_SERIES, JobQueue
from appliance.node import Node
from appliance.outbox import Destination, Outbox, OutboxFile
from appliance.retention import sweep
from dicom_node.clock import SteadyClock, stored_time_floor
from dicom_node.database import Database
from dicom_node.index import InstanceIndex, InstanceRecord

YEAR_S = 365 * 86400.0
SEPT_2023 = 1_694_000_000.0


class Ticker:
    """A time source the test sets and steps."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def db(tmp_path) -> Database:
    return Database(tmp_path / "isonode.db")


def _steady(wall_t: float = SEPT_2023, floor: float = 0.0) -> tuple[Ticker, Ticker, SteadyClock]:
    wall, mono = Ticker(wall_t), Ticker(100.0)
    return wall, mono, SteadyClock(floor, wall=wall, monotonic=mono)


def _record(sop: str, series: str) -> InstanceRecord:
    return InstanceRecord(sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                          transfer_syntax_uid=ExplicitVRLittleEndian, study_uid="1.2", series_uid=series,
                          modality="CT", is_image=True, relpath=f"1.2/{series}/{sop}.dcm", size=10,
                          calling_ae="CT1", called_ae="ISONODE")


def _full_only(_sv) -> tuple[str, ...]:
    return ("full",)


def test_steady_clock_ignores_a_wall_clock_step_while_it_runs():
    wall, mono, clock = _steady()
    assert clock() == SEPT_2023
    mono.t += 10
    wall.t += 3600  # NTP steps forward
    assert clock() == SEPT_2023 + 10
    wall.t -= 2 * 3600  # and back
    mono.t += 5
    assert clock() == SEPT_2023 + 15


def test_steady_clock_never_starts_below_the_newest_stored_time():
    wall, mono, clock = _steady(wall_t=0.0, floor=SEPT_2023)  # booted in 1970
    assert (clock.wall_at_anchor, clock.anchor) == (0.0, SEPT_2023)
    mono.t += 7
    assert clock() == SEPT_2023 + 7
    assert _steady(wall_t=SEPT_2023 + 50, floor=SEPT_2023)[2]() == SEPT_2023 + 50  # a later wall clock wins


def test_a_lease_holds_when_the_wall_clock_jumps_an_hour_forward(db):
    wall, mono, clock = _steady()
    queue = JobQueue(db, clock=clock)
    queue.enqueue(kind=PROCESS_SERIES, series_uid="1.2.3", series_version=1)
    job = queue.claim("w1", lease_s=60)
    mono.t += 30
    wall.t += 3600
    assert queue.claim("w2", lease_s=60) is None  # the lease has 30 s left, whatever the wall clock says
    queue.renew(job.id, "w1", lease_s=60)  # still w1's
    mono.t += 61
    assert queue.claim("w2", lease_s=60).id == job.id  # a lease that really ran out still expires
    on_the_wall = JobQueue(db, clock=wall)  # the hazard: measured on the wall clock the lease is long gone
    assert on_the_wall.claim("w3", lease_s=60).id == job.id


def test_idle_completion_is_neither_early_after_a_forward_step_nor_late_after_a_backward_one(db):
    wall, mono, clock = _steady()
    index = InstanceIndex(db, clock=clock)
    jobs = JobQueue(db, clock=clock)
    config = parse_config("series: {completion_timeout_s: 5}").series
    completion = SeriesCompletion(index, jobs, config, _full_only, clock=clock)
    index.record(_record("1.1", "7.1"))
    mono.t += 1
    wall.t += 3600
    assert completion.complete_idle() == []  # 1 s idle, not an hour
    mono.t += 4
    assert completion.complete_idle() == [("7.1", 1)]
    index.record(_record("2.1", "7.2"))
    wall.t -= 2 * 3600
    mono.t += 5
    assert completion.complete_idle() == [("7.2", 1)]  # 5 s idle, not minus an hour


def test_a_pending_delivery_is_not_expired_by_a_wall_clock_step_of_a_week(db, tmp_path):
    wall, mono, clock = _steady()
    outbox = Outbox(db, tmp_path / "results", clock=clock)
    dest = Destination("PACS", "PACS", "127.0.0.1", 104)
    (row,) = outbox.enqueue(destination=dest, files=[OutboxFile("1.2.3/v1-full/x.dcm", "1.2.840.10008.5.1.4.1.1.66.5",
                                                                "9.9")])
    mono.t += 60
    wall.t += 8 * 86400
    assert outbox.expire(7 * 86400.0, now=clock()) == {}
    assert [d.id for d in outbox.due(dest, now=clock(), limit=10, max_age_s=7 * 86400.0)] == [row]


def _node(tmp_path, clock: SteadyClock | None = None) -> Node:
    config = with_overrides(parse_config("retention: {instances_days: 7, results_days: 30}"),
                            data_dir=tmp_path / "data")
    return Node(config, clock=clock)


def test_retention_keeps_a_series_received_a_minute_ago_when_the_wall_clock_steps_a_year_forward(tmp_path):
    wall, mono = Ticker(time.time() - YEAR_S), Ticker(100.0)  # booted with the clock a year behind
    node = _node(tmp_path, SteadyClock(wall=wall, monotonic=mono))
    try:
        node.index.record(_record("1.1", "9.1"))
        assert node.completion.complete_now("9.1") == 1
        while (job := node.jobs.claim("w", lease_s=60)) is not None:
            node.jobs.complete(job.id, "w", {})
        mono.t += 60
        wall.t += YEAR_S  # NTP steps to the real time
        assert node.sweep_retention().series_deleted == 0
        assert node.index.counts()["instances"] == 1
    finally:
        node.shutdown()


def test_a_result_folder_written_while_the_wall_clock_says_1970_is_kept(db, tmp_path):
    wall, mono, clock = _steady(wall_t=1000.0, floor=SEPT_2023)  # booted in 1970, database from 2023
    InstanceIndex(db, clock=clock)
    jobs = JobQueue(db, clock=clock)
    jobs.enqueue(kind=PROCESS_SERIES, series_uid="1.2.3", series_version=1)
    job = jobs.claim("w", lease_s=60)
    folder = tmp_path / "results" / "1.2.3" / "v1-full"
    folder.mkdir(parents=True)
    os.utime(folder, (wall.t, wall.t))  # the file system stamps it with the wall clock
    jobs.complete(job.id, "w", {"result_dir": "1.2.3/v1-full"})
    mono.t += 600
    report = sweep(db, tmp_path / "spool", tmp_path / "results", parse_config("").retention, now=clock())
    assert report.result_dirs_deleted == 0 and folder.exists()
    later = sweep(db, tmp_path / "spool", tmp_path / "results", parse_config("").retention, now=clock() + 31 * 86400)
    assert later.result_dirs_deleted == 1  # it still ages, on the node's clock


def test_the_floor_is_the_newest_stored_time_even_when_it_is_ahead_of_the_wall_clock(db):
    assert stored_time_floor(db) == 0.0  # a fresh database: no tables yet
    InstanceIndex(db, clock=lambda: SEPT_2023).record(_record("1.1", "7.1"))
    JobQueue(db, clock=lambda: SEPT_2023 + 500).enqueue(kind=PROCESS_SERIES, series_uid="7.1", series_version=1)
    assert stored_time_floor(db) == SEPT_2023 + 500
    wall, mono, clock = _steady(wall_t=SEPT_2023 + 100, floor=stored_time_floor(db))
    assert clock() == SEPT_2023 + 500


def test_the_node_anchors_one_clock_at_the_stored_time_and_shares_it(tmp_path, caplog):
    ahead = time.time() + 3600  # a job stamped an hour ahead of this wall clock
    db = Database(tmp_path / "data" / "isonode.db")
    JobQueue(db, clock=lambda: ahead).enqueue(kind=PROCESS_SERIES, series_uid="1.2.3", series_version=1)
    db.close()
    with caplog.at_level(logging.INFO, logger="appliance.node"):
        node = _node(tmp_path)
    try:
        (event,) = [r for r in caplog.records if r.getMessage() == "clock.anchored"]
        assert event.levelno == logging.WARNING and event.fields["behind_s"] > 3500
        assert node.clock() >= ahead
        shared = (node.index.clock, node.jobs.clock, node.outbox.clock, node.sender.clock, node.completion.clock,
                  node._make_worker("w").clock)
        assert all(c is node.clock for c in shared)
    finally:
        node.shutdown()

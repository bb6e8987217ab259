"""Retention: received instances and results are deleted once they are old and fully processed.

The index row goes first (one transaction), the files after: a crash in between leaves files the
start-up recovery re-indexes and the next sweep deletes again, never an index entry without its file.
A series with a job still queued or running is never touched, and neither is a result folder with a
delivery still pending (nothing is deleted before its destination acknowledged it).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from appliance.config import RetentionConfig
from dicom_node.catalog import Catalog
from dicom_node.database import Database
from dicom_node.index import InstanceIndex
from dicom_node.logfmt import log_event
from dicom_node.spool import free_bytes

logger = logging.getLogger(__name__)
DAY_S = 86400.0


@dataclass(frozen=True)
class SweepReport:
    series_deleted: int  # by age and evicted
    instances_deleted: int
    result_dirs_deleted: int
    series_evicted: int = 0  # under disk pressure
    records_pruned: int = 0


def _remove_empty_parents(path: Path, stop: Path) -> None:
    for parent in path.parents:
        if parent == stop or not parent.is_relative_to(stop):
            return
        try:
            parent.rmdir()
        except OSError:
            return


def _undelivered_result_dirs(db: Database) -> set[str]:
    """Result folders ("<series>/<version-mode>") that hold a file still pending delivery."""
    conn = db.connection
    if not _has_outbox(conn):
        return set()
    rows = conn.execute("SELECT DISTINCT relpath FROM outbox WHERE state = 'pending'")
    return {"/".join(r["relpath"].split("/")[:2]) for r in rows}


def _forget_series(db: Database, spool_root: Path, series_uid: str, still_doomed: Callable[[sqlite3.Connection], bool],
                   guard: AbstractContextManager) -> int | None:
    """Forget one series (index and catalog, one transaction) and delete its files, with the spool guard
    held; None if `still_doomed` says no once the transaction holds the write lock."""
    with guard:
        with db.transaction() as tx:
            if not still_doomed(tx) or tx.execute(
                    "SELECT 1 FROM jobs WHERE series_uid = ? AND state IN ('queued', 'running')",
                    (series_uid,)).fetchone():
                return None  # received again, or given work, since the candidates were read
            doomed = InstanceIndex.forget_series_in(tx, series_uid)
        for rel in doomed:
            path = spool_root / rel
            path.unlink(missing_ok=True)
            _remove_empty_parents(path, spool_root)
    return len(doomed)


EVICTABLE_SERIES = """
SELECT s.series_uid FROM series AS s GROUP BY s.series_uid
HAVING SUM(s.state != 'complete') = 0
   AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.series_uid = s.series_uid AND j.state != 'done')
   AND NOT EXISTS (SELECT 1 FROM outbox AS o JOIN jobs AS j ON o.job_id = j.id
                   WHERE j.series_uid = s.series_uid AND o.state != 'done')
ORDER BY MAX(s.last_received_at)
"""


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _has_outbox(conn: sqlite3.Connection) -> bool:
    """A node has one; a database that never delivered (a test, a store-only node) may not."""
    return _has_table(conn, "outbox")


def _result_dir_times(db: Database) -> dict[str, float]:
    """When each finished job's result folder was written, on the node's clock (the one `now` comes from):
    a folder's mtime is wall-clock time, decades off on a Jetson that booted in 1970."""
    conn = db.connection
    if not _has_table(conn, "jobs"):
        return {}
    rows = conn.execute("SELECT json_extract(result, '$.result_dir') AS d, MAX(updated_at) AS t FROM jobs"
                        " WHERE state = 'done' GROUP BY d")
    return {r["d"]: r["t"] for r in rows if r["d"]}


def sweep(db: Database, spool_root: Path, results_dir: Path, config: RetentionConfig,
          now: float | None = None, guard: AbstractContextManager | None = None, evict_below_bytes: int = 0,
          free_space: Callable[[], int] | None = None) -> SweepReport:
    """Delete what is old and done; under disk pressure (free space below `evict_below_bytes`) also the
    received instances of the series processed and delivered longest ago, oldest first, never one with
    work queued, running or failed, or a delivery not yet acknowledged. `guard` (the SCP's spool guard)
    is held while a series is forgotten and its files deleted, one series at a time: an instance re-sent
    meanwhile waits, then is stored anew (without it, it could be acknowledged as a duplicate of a file
    about to be deleted). Old job and delivery records go with their results."""
    now = time.time() if now is None else now
    guard = guard or nullcontext()
    free_space = free_space or (lambda: free_bytes(spool_root))
    series_deleted = instances_deleted = evicted = 0
    conn = db.connection
    older_than = now - config.instances_days * DAY_S
    for series_uid in InstanceIndex.expired_series_in(conn, older_than):
        n = _forget_series(db, spool_root, series_uid,
                           lambda tx, uid=series_uid: uid in InstanceIndex.expired_series_in(tx, older_than), guard)
        if n is not None:
            series_deleted, instances_deleted = series_deleted + 1, instances_deleted + n
    floor = evict_below_bytes
    if floor and free_space() < floor and _has_outbox(conn):
        for (series_uid,) in conn.execute(EVICTABLE_SERIES).fetchall():
            if free_space() >= floor:
                break
            n = _forget_series(db, spool_root, series_uid, lambda tx, uid=series_uid: uid in {
                r[0] for r in tx.execute(EVICTABLE_SERIES)}, guard)
            if n is not None:
                evicted, instances_deleted = evicted + 1, instances_deleted + n
        log_event(logger, "retention.disk_pressure", level=logging.WARNING, series_evicted=evicted,
                  free_mb=free_space() // (1024 * 1024), floor_mb=floor // (1024 * 1024))
    result_dirs = 0
    cutoff = now - config.results_days * DAY_S
    undelivered = _undelivered_result_dirs(db)
    written_at = _result_dir_times(db)
    if results_dir.exists():
        for version_dir in results_dir.glob("*/*"):
            rel = version_dir.relative_to(results_dir).as_posix()
            if rel in undelivered or not version_dir.is_dir():
                continue
            if written_at.get(rel, version_dir.stat().st_mtime) < cutoff:  # mtime: a folder no job names
                with db.transaction() as tx:  # the catalog forgets it first: Q/R never offers a missing file
                    Catalog.forget_folder_in(tx, "results", rel)
                shutil.rmtree(version_dir, ignore_errors=True)
                _remove_empty_parents(version_dir, results_dir)
                result_dirs += 1
    pruned = _prune_records(db, cutoff)
    report = SweepReport(series_deleted + evicted, instances_deleted, result_dirs, evicted, pruned)
    if series_deleted or evicted or result_dirs or pruned:
        log_event(logger, "retention.swept", series=series_deleted, evicted=evicted, instances=instances_deleted,
                  result_dirs=result_dirs, records_pruned=pruned)
    return report


def _prune_records(db: Database, cutoff: float) -> int:
    """Finished jobs of series no longer held, and acknowledged deliveries, older than the results: the
    database does not grow without bound (a job row holds its result record)."""
    with db.transaction() as tx:
        if not _has_outbox(tx):
            return 0
        deliveries = tx.execute("DELETE FROM outbox WHERE state = 'done' AND updated_at < ?", (cutoff,)).rowcount
        jobs = tx.execute(
            "DELETE FROM jobs WHERE state IN ('done', 'failed') AND updated_at < ?"
            " AND series_uid NOT IN (SELECT series_uid FROM series)"
            " AND id NOT IN (SELECT job_id FROM outbox WHERE job_id IS NOT NULL)", (cutoff,)).rowcount
    return deliveries + jobs

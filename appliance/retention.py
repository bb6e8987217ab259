"""Retention: received instances and results are deleted once they are old and fully processed.

The index row goes first (one transaction), the files after: a crash in between leaves files the
start-up recovery re-indexes and the next sweep deletes again, never an index entry without its file.
A series with a job still queued or running is never touched, and neither is a result folder with a
delivery still pending (nothing is deleted before its destination acknowledged it).
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from appliance.config import RetentionConfig
from dicom_node.catalog import Catalog
from dicom_node.database import Database
from dicom_node.index import InstanceIndex
from dicom_node.logfmt import log_event

logger = logging.getLogger(__name__)
DAY_S = 86400.0


@dataclass(frozen=True)
class SweepReport:
    series_deleted: int
    instances_deleted: int
    result_dirs_deleted: int


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
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'").fetchone() is None:
        return set()
    rows = conn.execute("SELECT DISTINCT relpath FROM outbox WHERE state = 'pending'")
    return {"/".join(r["relpath"].split("/")[:2]) for r in rows}


def sweep(db: Database, spool_root: Path, results_dir: Path, config: RetentionConfig,
          now: float | None = None, guard: AbstractContextManager | None = None) -> SweepReport:
    """Delete what is old and done. `guard` (the SCP's spool guard) is held while a series is forgotten
    and its files deleted, one series at a time: an instance re-sent meanwhile waits, then is stored anew
    (without it, it could be acknowledged as a duplicate of a file about to be deleted)."""
    now = time.time() if now is None else now
    guard = guard or nullcontext()
    series_deleted = instances_deleted = 0
    conn = db.connection
    busy = {r["series_uid"] for r in conn.execute(
        "SELECT DISTINCT series_uid FROM jobs WHERE state IN ('queued', 'running')")}
    for series_uid in InstanceIndex.expired_series_in(conn, now - config.instances_days * DAY_S):
        if series_uid in busy:
            continue
        with guard:
            with db.transaction() as tx:
                if (series_uid not in InstanceIndex.expired_series_in(tx, now - config.instances_days * DAY_S)
                        or tx.execute("SELECT 1 FROM jobs WHERE series_uid = ? AND state IN ('queued', 'running')",
                                      (series_uid,)).fetchone()):
                    continue  # received again, or given work, since the list was read
                doomed = InstanceIndex.forget_series_in(tx, series_uid)
            for rel in doomed:
                path = spool_root / rel
                path.unlink(missing_ok=True)
                _remove_empty_parents(path, spool_root)
        series_deleted += 1
        instances_deleted += len(doomed)
    result_dirs = 0
    cutoff = now - config.results_days * DAY_S
    undelivered = _undelivered_result_dirs(db)
    if results_dir.exists():
        for version_dir in results_dir.glob("*/*"):
            if version_dir.relative_to(results_dir).as_posix() in undelivered:
                continue
            if version_dir.is_dir() and version_dir.stat().st_mtime < cutoff:
                with db.transaction() as conn:  # the catalog forgets it first: Q/R never offers a missing file
                    Catalog.forget_folder_in(conn, "results", version_dir.relative_to(results_dir).as_posix())
                shutil.rmtree(version_dir, ignore_errors=True)
                _remove_empty_parents(version_dir, results_dir)
                result_dirs += 1
    report = SweepReport(series_deleted, instances_deleted, result_dirs)
    if series_deleted or result_dirs:
        log_event(logger, "retention.swept", series=series_deleted, instances=instances_deleted,
                  result_dirs=result_dirs)
    return report

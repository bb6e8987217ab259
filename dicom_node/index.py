"""The instance index: which instances are stored, grouped into series versions.

A series is received as a *version*: instances arriving after a version was completed open a new version
(the earlier version's job already ran), so late instances are never silently dropped. A version's job
processes every instance of the series stored so far.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from dicom_node.catalog import Catalog, CatalogEntry
from dicom_node.clock import Clock
from dicom_node.database import Database

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT NOT NULL,
    version INTEGER NOT NULL,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL CHECK (state IN ('receiving', 'complete')),
    calling_ae TEXT NOT NULL DEFAULT '',
    called_ae TEXT NOT NULL DEFAULT '',
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    completed_at REAL,
    completion_reason TEXT,
    instance_count INTEGER NOT NULL DEFAULT 0,
    image_count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (series_uid, version)
);
CREATE INDEX IF NOT EXISTS series_by_state ON series (state, last_received_at);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    series_version INTEGER NOT NULL,
    is_image INTEGER NOT NULL,
    relpath TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances (series_uid, series_version)
"""


@dataclass(frozen=True)
class InstanceRecord:
    """What the index keeps about one stored instance (no patient attributes: those stay in the file)."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_uid: str
    series_uid: str
    modality: str
    is_image: bool
    relpath: str
    size: int
    calling_ae: str = ""
    called_ae: str = ""


@dataclass(frozen=True)
class SeriesVersion:
    series_uid: str
    version: int
    study_uid: str
    modality: str
    state: str
    calling_ae: str
    called_ae: str
    last_received_at: float
    instance_count: int
    image_count: int


def _series_from_row(row: sqlite3.Row) -> SeriesVersion:
    return SeriesVersion(
        series_uid=row["series_uid"],
        version=row["version"],
        study_uid=row["study_uid"],
        modality=row["modality"],
        state=row["state"],
        calling_ae=row["calling_ae"],
        called_ae=row["called_ae"],
        last_received_at=row["last_received_at"],
        instance_count=row["instance_count"],
        image_count=row["image_count"],
    )


class InstanceIndex:
    """`clock` stamps receive times, which idle completion and retention measure from."""

    def __init__(self, db: Database, *, clock: Clock = time.time) -> None:
        self.db = db
        self.clock = clock
        db.ensure_schema("instance_index", SCHEMA_VERSION, SCHEMA)
        self.catalog = Catalog(db)  # its tables exist before the first record() writes to them

    def contains(self, sop_instance_uid: str) -> bool:
        return self.relpath_of(sop_instance_uid) is not None

    def touch(self, sop_instance_uid: str, now: float | None = None) -> None:
        """An instance was received again: its series version counts as active now (retention and idle
        completion measure from the last instance received)."""
        now = self.clock() if now is None else now
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE series SET last_received_at = MAX(last_received_at, ?) WHERE (series_uid, version) ="
                " (SELECT series_uid, series_version FROM instances WHERE sop_instance_uid = ?)",
                (now, sop_instance_uid))

    def relpath_of(self, sop_instance_uid: str) -> str | None:
        """Where the stored instance lies under the spool; None if it is not stored."""
        row = self.db.connection.execute(
            "SELECT relpath FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        return None if row is None else row["relpath"]

    def record(self, rec: InstanceRecord, now: float | None = None, *,
               catalog: CatalogEntry | None = None) -> int | None:
        """Index (and catalog, for Query/Retrieve) a durably stored instance in one transaction; return its
        series version (None: duplicate)."""
        now = self.clock() if now is None else now
        with self.db.transaction() as conn:
            if conn.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (rec.sop_instance_uid,)
            ).fetchone():
                return None
            row = conn.execute(
                "SELECT version, state FROM series WHERE series_uid = ? ORDER BY version DESC LIMIT 1",
                (rec.series_uid,),
            ).fetchone()
            if row is None or row["state"] != "receiving":
                version = 1 if row is None else row["version"] + 1
                conn.execute(
                    "INSERT INTO series (series_uid, version, study_uid, modality, state, calling_ae, called_ae,"
                    " first_received_at, last_received_at) VALUES (?, ?, ?, ?, 'receiving', ?, ?, ?, ?)",
                    (rec.series_uid, version, rec.study_uid, rec.modality, rec.calling_ae, rec.called_ae, now, now),
                )
            else:
                version = row["version"]
            conn.execute(
                "UPDATE series SET last_received_at = ?, instance_count = instance_count + 1,"
                " image_count = image_count + ? WHERE series_uid = ? AND version = ?",
                (now, int(rec.is_image), rec.series_uid, version),
            )
            conn.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, transfer_syntax_uid, study_uid, series_uid,"
                " series_version, is_image, relpath, size, received_at, calling_ae)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.sop_instance_uid,
                    rec.sop_class_uid,
                    rec.transfer_syntax_uid,
                    rec.study_uid,
                    rec.series_uid,
                    version,
                    int(rec.is_image),
                    rec.relpath,
                    rec.size,
                    now,
                    rec.calling_ae,
                ),
            )
            if catalog is not None:
                Catalog.record_in(conn, catalog)
            return version

    def receiving_series(self) -> list[SeriesVersion]:
        rows = self.db.connection.execute("SELECT * FROM series WHERE state = 'receiving'").fetchall()
        return [_series_from_row(r) for r in rows]

    def latest_version(self, series_uid: str) -> SeriesVersion | None:
        row = self.db.connection.execute(
            "SELECT * FROM series WHERE series_uid = ? ORDER BY version DESC LIMIT 1", (series_uid,)
        ).fetchone()
        return None if row is None else _series_from_row(row)

    @staticmethod
    def mark_complete(conn: sqlite3.Connection, series_uid: str, version: int, reason: str, now: float) -> bool:
        """Close a receiving version inside the caller's transaction; False if it was already closed."""
        cur = conn.execute(
            "UPDATE series SET state = 'complete', completed_at = ?, completion_reason = ?"
            " WHERE series_uid = ? AND version = ? AND state = 'receiving'",
            (now, reason, series_uid, version),
        )
        return cur.rowcount == 1

    def series_files(self, series_uid: str, *, up_to_version: int | None = None,
                     images_only: bool = True) -> list[str]:
        """Relative paths of the series' stored instances: of versions 1..`up_to_version` (the series as
        that version completed it, never instances of a newer version still arriving), or of all."""
        sql = "SELECT relpath FROM instances WHERE series_uid = ?" + (" AND is_image = 1" if images_only else "")
        params: tuple = (series_uid,)
        if up_to_version is not None:
            sql, params = sql + " AND series_version <= ?", (series_uid, up_to_version)
        return [r["relpath"] for r in self.db.connection.execute(sql + " ORDER BY relpath", params)]

    def version(self, series_uid: str, version: int) -> SeriesVersion | None:
        row = self.db.connection.execute(
            "SELECT * FROM series WHERE series_uid = ? AND version = ?", (series_uid, version)).fetchone()
        return None if row is None else _series_from_row(row)

    @staticmethod
    def expired_series_in(conn: sqlite3.Connection, older_than: float) -> list[str]:
        """Series whose every version is complete and whose last instance arrived before `older_than`."""
        rows = conn.execute(
            "SELECT series_uid FROM series GROUP BY series_uid"
            " HAVING SUM(state != 'complete') = 0 AND MAX(last_received_at) < ?",
            (older_than,),
        ).fetchall()
        return [r["series_uid"] for r in rows]

    @staticmethod
    def forget_series_in(conn: sqlite3.Connection, series_uid: str) -> list[str]:
        """Remove a series from the index inside the caller's transaction; the relpaths it held."""
        relpaths = [r["relpath"] for r in conn.execute(
            "SELECT relpath FROM instances WHERE series_uid = ?", (series_uid,))]
        conn.execute("DELETE FROM instances WHERE series_uid = ?", (series_uid,))
        conn.execute("DELETE FROM series WHERE series_uid = ?", (series_uid,))
        Catalog.forget_series_in(conn, series_uid)
        return relpaths

    def all_relpaths(self) -> set[str]:
        return {r["relpath"] for r in self.db.connection.execute("SELECT relpath FROM instances")}

    def counts(self) -> dict[str, int]:
        conn = self.db.connection
        one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "instances": one("SELECT COUNT(*) FROM instances"),
            "series": one("SELECT COUNT(DISTINCT series_uid) FROM series"),
            "studies": one("SELECT COUNT(DISTINCT study_uid) FROM series"),
            "series_receiving": one("SELECT COUNT(*) FROM series WHERE state = 'receiving'"),
            "bytes": one("SELECT COALESCE(SUM(size), 0) FROM instances"),
        }

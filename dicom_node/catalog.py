"""The catalog: what the node holds, by patient, study, series and instance, for Query/Retrieve.

C-FIND must answer from an index, never by opening files, so the attributes a query can match or return
are copied here when an instance is stored (in the index's transaction) and when a result series is
written (in the job's completion transaction). Received instances live in the spool, results in the
results folder; each row says which (`store`) and where (`relpath`), so C-MOVE and C-GET can send either.

This is the only table holding patient attributes (names, IDs, birth dates): they are matched and returned
to permitted peers, never logged. Study and series attributes are those of the first instance seen.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Literal

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_node.database import Database

Store = Literal["spool", "results"]

# DICOM keyword -> column, per table. The query layer matches and returns these; the DDL is built from them.
STUDY_COLUMNS: dict[str, str] = {
    "StudyInstanceUID": "study_uid",
    "PatientID": "patient_id",
    "IssuerOfPatientID": "issuer_of_patient_id",
    "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "AccessionNumber": "accession_number",
    "StudyID": "study_id",
    "StudyDescription": "study_description",
    "ReferringPhysicianName": "referring_physician_name",
}
SERIES_COLUMNS: dict[str, str] = {
    "SeriesInstanceUID": "series_uid",
    "Modality": "modality",
    "SeriesNumber": "series_number",
    "SeriesDescription": "series_description",
    "SeriesDate": "series_date",
    "SeriesTime": "series_time",
    "BodyPartExamined": "body_part_examined",
}
INSTANCE_COLUMNS: dict[str, str] = {
    "SOPInstanceUID": "sop_instance_uid",
    "SOPClassUID": "sop_class_uid",
    "InstanceNumber": "instance_number",
}
_KEYWORDS = (*STUDY_COLUMNS, *SERIES_COLUMNS, *INSTANCE_COLUMNS)


def _columns(cols: dict[str, str], key: str) -> str:
    return ",\n".join(f"    {c} TEXT {'PRIMARY KEY' if c == key else 'NOT NULL DEFAULT'}"
                      + ("" if c == key else " ''") for c in cols.values())


SCHEMA_VERSION = 1
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS catalog_studies (
{_columns(STUDY_COLUMNS, 'study_uid')}
);
CREATE INDEX IF NOT EXISTS catalog_studies_by_patient ON catalog_studies (patient_id);
CREATE INDEX IF NOT EXISTS catalog_studies_by_date ON catalog_studies (study_date);
CREATE TABLE IF NOT EXISTS catalog_series (
{_columns(SERIES_COLUMNS, 'series_uid')},
    study_uid TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS catalog_series_by_study ON catalog_series (study_uid);
CREATE TABLE IF NOT EXISTS catalog_instances (
{_columns(INSTANCE_COLUMNS, 'sop_instance_uid')},
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    store TEXT NOT NULL CHECK (store IN ('spool', 'results')),
    relpath TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS catalog_instances_by_series ON catalog_instances (series_uid);
CREATE INDEX IF NOT EXISTS catalog_instances_by_study ON catalog_instances (study_uid);
CREATE INDEX IF NOT EXISTS catalog_instances_by_path ON catalog_instances (store, relpath)
"""


def value_text(value: object) -> str:
    """A value as the catalog stores and matches it: multiple values joined by backslash, padding stripped."""
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip().rstrip("\x00")


def attribute_text(ds: Dataset, keyword: str) -> str:
    return value_text(ds.get(keyword))


@dataclass(frozen=True)
class CatalogEntry:
    """One instance's queryable attributes (keyword -> text) and where its file is."""

    attributes: dict[str, str]
    transfer_syntax_uid: str
    store: Store
    relpath: str
    size: int

    @classmethod
    def from_dataset(cls, ds: Dataset, *, transfer_syntax_uid: str, store: Store, relpath: str,
                     size: int) -> CatalogEntry:
        return cls({k: attribute_text(ds, k) for k in _KEYWORDS}, transfer_syntax_uid, store, relpath, size)

    @classmethod
    def from_file(cls, path: Path, *, store: Store, relpath: str) -> CatalogEntry:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=list(_KEYWORDS))
        return cls.from_dataset(ds, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), store=store,
                                relpath=relpath, size=path.stat().st_size)

    @classmethod
    def from_part10(cls, data: bytes, *, store: Store, relpath: str) -> CatalogEntry:
        ds = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=list(_KEYWORDS))
        return cls.from_dataset(ds, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), store=store,
                                relpath=relpath, size=len(data))


@dataclass(frozen=True)
class StoredInstance:
    """An instance to send for C-MOVE / C-GET."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    store: Store
    relpath: str
    size: int


def _insert(conn: sqlite3.Connection, table: str, cols: dict[str, str], values: dict[str, str],
            extra: dict[str, str | int]) -> None:
    names = [*cols.values(), *extra]
    row = [values[k] for k in cols] + list(extra.values())
    conn.execute(f"INSERT OR IGNORE INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                 row)


class Catalog:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure_schema("catalog", SCHEMA_VERSION, SCHEMA)

    @staticmethod
    def record_in(conn: sqlite3.Connection, entry: CatalogEntry) -> None:
        """Catalog one instance inside the caller's transaction (a known SOP Instance UID is kept as is)."""
        a = entry.attributes
        _insert(conn, "catalog_studies", STUDY_COLUMNS, a, {})
        _insert(conn, "catalog_series", SERIES_COLUMNS, a, {"study_uid": a["StudyInstanceUID"]})
        _insert(conn, "catalog_instances", INSTANCE_COLUMNS, a, {
            "series_uid": a["SeriesInstanceUID"], "study_uid": a["StudyInstanceUID"],
            "transfer_syntax_uid": entry.transfer_syntax_uid, "store": entry.store, "relpath": entry.relpath,
            "size": entry.size})

    def record(self, entries: Iterable[CatalogEntry]) -> None:
        with self.db.transaction() as conn:
            for entry in entries:
                self.record_in(conn, entry)

    @staticmethod
    def _drop_empty_parents(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM catalog_series WHERE NOT EXISTS"
                     " (SELECT 1 FROM catalog_instances i WHERE i.series_uid = catalog_series.series_uid)")
        conn.execute("DELETE FROM catalog_studies WHERE NOT EXISTS"
                     " (SELECT 1 FROM catalog_series s WHERE s.study_uid = catalog_studies.study_uid)")

    @classmethod
    def forget_series_in(cls, conn: sqlite3.Connection, series_uid: str, store: Store = "spool") -> None:
        """Drop a received series' instances (retention), and its series and study once empty."""
        conn.execute("DELETE FROM catalog_instances WHERE series_uid = ? AND store = ?", (series_uid, store))
        cls._drop_empty_parents(conn)

    @classmethod
    def forget_folder_in(cls, conn: sqlite3.Connection, store: Store, folder: str) -> None:
        """Drop every instance stored under `folder` (a result folder deleted by retention)."""
        prefix = folder.rstrip("/") + "/"
        conn.execute("DELETE FROM catalog_instances WHERE store = ? AND substr(relpath, 1, ?) = ?",
                     (store, len(prefix), prefix))
        cls._drop_empty_parents(conn)

    def known_relpaths(self, store: Store) -> set[str]:
        return {r["relpath"] for r in self.db.connection.execute(
            "SELECT relpath FROM catalog_instances WHERE store = ?", (store,))}

    def instances(self, where: str, params: tuple) -> list[StoredInstance]:
        """Instances matching a WHERE clause over the query view (aliases i, se, st), in series order."""
        rows = self.db.connection.execute(
            "SELECT i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.store, i.relpath, i.size"
            f" FROM {INSTANCE_VIEW} WHERE {where}"
            " ORDER BY i.study_uid, i.series_uid, CAST(i.instance_number AS INTEGER), i.sop_instance_uid",
            params).fetchall()
        return [StoredInstance(*r) for r in rows]

    def counts(self) -> dict[str, int]:
        conn = self.db.connection
        return {t: conn.execute(f"SELECT COUNT(*) FROM catalog_{t}").fetchone()[0]
                for t in ("studies", "series", "instances")}


# The joined rows a query runs over, one per entity of its level (st: studies, se: series, i: instances).
STUDY_VIEW = "catalog_studies st"
SERIES_VIEW = "catalog_series se JOIN catalog_studies st ON st.study_uid = se.study_uid"
INSTANCE_VIEW = ("catalog_instances i JOIN catalog_series se ON se.series_uid = i.series_uid"
                 " JOIN catalog_studies st ON st.study_uid = se.study_uid")

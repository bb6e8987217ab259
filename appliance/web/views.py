"""Read models of the JSON API: series, jobs with per-stage progress, results, deliveries, system.

Plain SQL over the node's tables in one read each, so the event stream can rebuild the whole list several
times a second during ingest without touching a file. URLs carry the node's own integer ids, never a UID
or anything about the patient (they end up in browser histories and proxy logs).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dicom_node.derived import EXPERIMENTAL_LABEL_SUFFIX, experimental_label

PIPELINE_STAGES = ("read", "segment", "mesh", "encode", "write")
STUDY_FIELDS = ("patient_name", "patient_id", "patient_sex", "patient_birth_date", "study_date", "study_time",
                "study_description", "accession_number")

SERIES_SQL = """
SELECT s.rowid AS id, s.series_uid, s.version, s.modality, s.state, s.instance_count, s.first_received_at,
       s.last_received_at, s.completed_at, cs.series_number, cs.series_description, {study}
FROM series AS s
LEFT JOIN catalog_series AS cs ON cs.series_uid = s.series_uid
LEFT JOIN catalog_studies AS st ON st.study_uid = s.study_uid
""".format(study=", ".join(f"st.{f}" for f in STUDY_FIELDS))

JOBS_SQL = """
SELECT j.*, p.attempt AS progress_attempt, p.stages AS progress_stages, s.rowid AS series_id
FROM jobs AS j
LEFT JOIN job_progress AS p ON p.job_id = j.id
LEFT JOIN series AS s ON s.series_uid = j.series_uid AND s.version = j.series_version
"""


def _stages(row: sqlite3.Row, result: dict | None) -> list[dict[str, Any]]:
    """Each pipeline stage: pending, running, done or failed, when it started and how long it took."""
    recorded: dict[str, dict] = {}
    if row["progress_stages"] and row["progress_attempt"] == row["attempts"] and row["state"] != "queued":
        recorded = {s["name"]: s for s in json.loads(row["progress_stages"])}
    timings = (result or {}).get("timings_s", {})
    out = []
    for name in PIPELINE_STAGES:
        rec = recorded.get(name)
        seconds = rec["seconds"] if rec else timings.get(f"{name}_s")
        if row["state"] == "done":
            state = "done"
        elif rec is None:
            state = "pending"
        elif rec["seconds"] is not None:
            state = "done"
        else:
            state = "failed" if row["state"] == "failed" else "running"
        out.append({"name": name, "state": state, "started_at": rec["started_at"] if rec else None,
                    "seconds": seconds})
    return out


def _files(result_dir: Path, job_id: int) -> list[dict[str, Any]]:
    try:
        entries = sorted(p for p in result_dir.iterdir() if p.is_file() and not p.name.startswith("display_"))
    except OSError:
        return []
    return [{"name": p.name, "url": f"/api/jobs/{job_id}/files/{p.name}", "size": p.stat().st_size}
            for p in entries]


def _legend_label(segment: dict[str, Any]) -> str:
    """The label the page shows: an experimental segment's says so (results recorded before the label
    itself carried the mark get it here)."""
    label = segment["label"]
    if segment.get("experimental") and not label.endswith(EXPERIMENTAL_LABEL_SUFFIX):
        return experimental_label(label)
    return label


def _result(row: sqlite3.Row, result: dict | None, results_dir: Path) -> dict[str, Any] | None:
    if row["state"] != "done" or not result:
        return None
    display = result.get("display") or {}
    sizes = result.get("segments", {})
    segments = [{**{k: s[k] for k in ("number", "name", "color", "experimental")}, "label": _legend_label(s),
                 "triangles": sizes.get(s["name"], {}).get("triangles"),
                 "volume_ml": sizes.get(s["name"], {}).get("volume_ml"),
                 "mesh_url": f"/api/jobs/{row['id']}/meshes/{s['number']}.mz3"}
                for s in display.get("segments", [])]
    return {"model": display.get("model"), "seconds": result.get("timings_s", {}).get("total_s"),
            "ct_url": f"/api/jobs/{row['id']}/ct.nii.gz" if display.get("ct") else None,
            "segments": segments, "backends": result.get("backends"),
            "files": _files(results_dir / result.get("result_dir", ""), row["id"]) if result.get("result_dir")
            else []}


def _deliveries(conn: sqlite3.Connection, job_ids: Iterable[int]) -> dict[int, list[dict[str, str]]]:
    ids = list(job_ids)
    if not ids:
        return {}
    rows = conn.execute(
        f"SELECT job_id, destination, SUM(state = 'failed') AS failed, SUM(state = 'pending') AS pending"
        f" FROM outbox WHERE job_id IN ({','.join('?' * len(ids))}) GROUP BY job_id, destination", ids)
    out: dict[int, list[dict[str, str]]] = {}
    for r in rows:
        state = "failed" if r["failed"] else "pending" if r["pending"] else "sent"
        out.setdefault(r["job_id"], []).append({"destination": r["destination"], "state": state})
    return out


def job_view(row: sqlite3.Row, results_dir: Path, deliveries: list[dict[str, str]]) -> dict[str, Any]:
    result = json.loads(row["result"]) if row["result"] else None
    return {"id": row["id"], "series_id": row["series_id"], "series_uid": row["series_uid"],
            "series_version": row["series_version"], "mode": row["mode"], "state": row["state"],
            "attempts": row["attempts"], "created_at": row["created_at"], "updated_at": row["updated_at"],
            "error": row["last_error"] if row["state"] != "done" else None,
            "stages": _stages(row, result), "result": _result(row, result, results_dir),
            "deliveries": deliveries}


def list_jobs(conn: sqlite3.Connection, results_dir: Path, *, limit: int = 100, job_id: int | None = None,
              series: Iterable[tuple[str, int]] | None = None) -> list[dict[str, Any]]:
    """Newest first; one job by id, or the jobs of the given series versions."""
    sql, params = JOBS_SQL, []
    if job_id is not None:
        sql, params = sql + " WHERE j.id = ?", [job_id]
    elif series is not None:
        keys = list(series)
        if not keys:
            return []
        sql += " WHERE (j.series_uid, j.series_version) IN (VALUES " + ",".join("(?, ?)" for _ in keys) + ")"
        params = [v for key in keys for v in key]
    rows = conn.execute(sql + " ORDER BY j.id DESC LIMIT ?", [*params, limit]).fetchall()
    deliveries = _deliveries(conn, (r["id"] for r in rows))
    return [job_view(r, results_dir, deliveries.get(r["id"], [])) for r in rows]


def list_series(conn: sqlite3.Connection, results_dir: Path, *, limit: int = 50,
                series_id: int | None = None) -> list[dict[str, Any]]:
    """Recent series versions (newest activity first) with their study and jobs."""
    sql, params = SERIES_SQL, []
    if series_id is not None:
        sql, params = sql + " WHERE s.rowid = ?", [series_id]
    rows = conn.execute(sql + " ORDER BY s.last_received_at DESC LIMIT ?", [*params, limit]).fetchall()
    jobs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    keys = [(r["series_uid"], r["version"]) for r in rows]
    for job in list_jobs(conn, results_dir, limit=10 * len(keys) + 10, series=keys):
        jobs.setdefault((job["series_uid"], job["series_version"]), []).append(job)
    return [{"id": r["id"], "series_uid": r["series_uid"], "version": r["version"], "modality": r["modality"],
             "series_number": _int(r["series_number"]), "series_description": r["series_description"] or "",
             "instances": r["instance_count"], "state": r["state"], "first_received_at": r["first_received_at"],
             "last_received_at": r["last_received_at"], "completed_at": r["completed_at"],
             "study": {f: r[f] or "" for f in STUDY_FIELDS},
             "jobs": sorted(jobs.get((r["series_uid"], r["version"]), []), key=lambda j: j["id"])}
            for r in rows]


def list_studies(conn: sqlite3.Connection, *, limit: int = 50, study_id: int | None = None) -> list[dict[str, Any]]:
    """Studies with received series, newest activity first: patient and study attributes, and the ids of
    their series versions (the REST tree's level above /api/series)."""
    where, params = ("WHERE st.rowid = ?", [study_id]) if study_id is not None else ("", [])
    rows = conn.execute(
        f"SELECT st.rowid AS id, st.study_uid, {', '.join(f'st.{f}' for f in STUDY_FIELDS)},"
        f" MAX(s.last_received_at) AS last_received_at FROM catalog_studies AS st"
        f" JOIN series AS s ON s.study_uid = st.study_uid {where}"
        f" GROUP BY st.study_uid ORDER BY last_received_at DESC LIMIT ?", [*params, limit]).fetchall()
    series: dict[str, list[int]] = {}
    uids = [r["study_uid"] for r in rows]
    if uids:
        for r in conn.execute(f"SELECT rowid AS id, study_uid FROM series WHERE study_uid IN"
                              f" ({','.join('?' * len(uids))}) ORDER BY rowid", uids):
            series.setdefault(r["study_uid"], []).append(r["id"])
    return [{"id": r["id"], "study_uid": r["study_uid"], "last_received_at": r["last_received_at"],
             "study": {f: r[f] or "" for f in STUDY_FIELDS}, "series_ids": series.get(r["study_uid"], [])}
            for r in rows]


def _int(text: str | None) -> int | None:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None

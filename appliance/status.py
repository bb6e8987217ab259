"""What is stored, queued and failed: one read-only snapshot for the CLI and the web page."""

from __future__ import annotations

import json
from typing import Any

from appliance.config import AppConfig
from appliance.jobs import JobQueue
from appliance.node import RUNTIME_FILE, make_outbox
from dicom_node.database import Database
from dicom_node.index import InstanceIndex
from dicom_node.spool import free_bytes


def collect_status(config: AppConfig) -> dict[str, Any]:
    db = Database(config.database_path)
    try:
        index = InstanceIndex(db)
        jobs = JobQueue(db)
        outbox = make_outbox(db, config)
        counts = index.counts()
        return {
            "data_dir": str(config.data_dir),
            "instances": counts["instances"],
            "series": counts["series"],
            "studies": counts["studies"],
            "series_receiving": counts["series_receiving"],
            "stored_bytes": counts["bytes"],
            "free_bytes": free_bytes(config.data_dir),
            "jobs": jobs.counts(),
            "failed_jobs": [
                {"id": j.id, "series": j.series_uid, "version": j.series_version, "mode": j.mode,
                 "attempts": j.attempts, "error": j.last_error}
                for j in jobs.list(state="failed", limit=20)
            ],
            "outbox": {"states": outbox.counts(), "destinations": outbox.counts_by_destination()},
            "runtime": runtime_record(config),
        }
    finally:
        db.close()


def runtime_record(config: AppConfig) -> dict[str, Any] | None:
    """What the node chose at its last start (written by `isonode serve`); None before the first start."""
    try:
        return json.loads((config.data_dir / RUNTIME_FILE).read_text())
    except (OSError, ValueError):
        return None

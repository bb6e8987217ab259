"""What is stored, queued and failed: one read-only snapshot for the CLI and the web page."""

from __future__ import annotations

from typing import Any

from appliance.config import AppConfig
from appliance.jobs import JobQueue
from dicom_node.database import Database
from dicom_node.index import InstanceIndex
from dicom_node.spool import free_bytes


def collect_status(config: AppConfig) -> dict[str, Any]:
    db = Database(config.database_path)
    try:
        index = InstanceIndex(db)
        jobs = JobQueue(db)
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
        }
    finally:
        db.close()

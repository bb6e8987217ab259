"""Shared parts of the hardening campaigns (tests/test_campaign_*.py): a recording destination, synthetic
series, storescu in the background, and read-only looks at the node's SQLite database."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from conftest import NODE_AE, require_tool, store_responses, wait_until  # noqa: F401 - re-exported to the campaigns

from compiler.phantom import make_phantom, write_ct_series

SURFACE_SEG = "1.2.840.10008.5.1.4.1.1.66.5"


class RecordingScp:
    """A destination (pynetdicom SCP) that counts every SOP Instance UID it is sent; `delay_s` per C-STORE
    keeps deliveries in flight long enough for a kill to land on one."""

    def __init__(self, ae_title: str = "RECORDER", delay_s: float = 0.0) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.delay_s = delay_s
        self.ae_title = ae_title
        self.received: dict[str, int] = {}
        self.in_flight = 0
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(SURFACE_SEG)
        ae.maximum_associations = 32
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self.server.server_address[1]

    def _on_store(self, event) -> int:  # noqa: ANN001
        with self._lock:
            self.in_flight += 1
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            uid = str(event.request.AffectedSOPInstanceUID)
            with self._lock:
                self.received[uid] = self.received.get(uid, 0) + 1
            return 0x0000
        finally:
            with self._lock:
                self.in_flight -= 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.received)

    def destination_config(self, name: str = "RECORDER") -> str:
        return f"""
destinations:
  - {{name: {name}, ae_title: {self.ae_title}, host: 127.0.0.1, port: {self.port}}}
outbox:
  retry_base_s: 0.2
  retry_max_s: 1
"""

    def stop(self) -> None:
        self.server.shutdown()


def synthetic_series(out_dir: Path, *, slices: int, size: int, seed: int, series_number: int = 1) -> list[Path]:
    """A small phantom CT series (its own study and series UIDs), one file per slice."""
    ph = make_phantom((slices, size, size), (2.0, 256.0 / size * 1.5, 256.0 / size * 1.5), seed=seed)
    return write_ct_series(ph.hu, out_dir, spacing=(2.0, 256.0 / size * 1.5, 256.0 / size * 1.5),
                           series_number=series_number)


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@dataclass
class Sender:
    """storescu -v in the background on one association; its acknowledged files once it has ended."""

    port: int
    files: list[Path]
    log: Path
    aet: str = "SCANNER"
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen | None = None
    started: float = field(default_factory=time.monotonic)

    def start(self) -> Sender:
        self.started = time.monotonic()
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [require_tool("storescu"), "-v", "-R", "-xe", "-aec", NODE_AE, "-aet", self.aet, *self.extra, "127.0.0.1",
                 str(self.port), *map(str, self.files)], stdout=out, stderr=subprocess.STDOUT)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float = 120) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def responses(self) -> list[tuple[str, str]]:
        return store_responses(self.log.read_text(errors="replace")) if self.log.exists() else []

    def acked(self) -> list[Path]:
        return [Path(f) for f, r in self.responses() if r == "(Success)"]


class NodeDb:
    """Read-only looks at the node's database (a fresh connection each time: the node may be killed)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "isonode.db"

    def query(self, sql: str, *args) -> list[sqlite3.Row]:  # noqa: ANN002
        if not self.path.exists():
            return []
        conn = sqlite3.connect(self.path, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []
            raise
        finally:
            conn.close()

    def instance_uids(self) -> set[str]:
        return {r["sop_instance_uid"] for r in self.query("SELECT sop_instance_uid FROM instances")}

    def jobs(self, state: str | None = None) -> list[sqlite3.Row]:
        if state is None:
            return self.query("SELECT * FROM jobs")
        return self.query("SELECT * FROM jobs WHERE state = ?", state)

    def outbox(self, state: str | None = None) -> list[sqlite3.Row]:
        if state is None:
            return self.query("SELECT * FROM outbox")
        return self.query("SELECT * FROM outbox WHERE state = ?", state)

    def count(self, sql: str, *args) -> int:  # noqa: ANN002
        rows = self.query(sql, *args)
        return int(rows[0][0]) if rows else 0

    def quiet(self) -> bool:
        """Nothing receiving, queued, running or pending."""
        return (self.count("SELECT COUNT(*) FROM series WHERE state = 'receiving'") == 0
                and self.count("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')") == 0
                and self.count("SELECT COUNT(*) FROM outbox WHERE state = 'pending'") == 0)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)

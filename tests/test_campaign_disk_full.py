"""Hardening campaign: disk full for real.

The node's data directory is a small tmpfs mounted by the test (we run as root; skipped where mounting is
not permitted). A filler file takes the space away while a series is being sent (the node refuses with
0xA700, Refused: Out of Resources; nothing stored is corrupt; the node stays up), and again while a job runs
(its results cannot be written: it fails retryably, or waits, and completes once space returns). Deleting
the filler gives the space back: a re-send is accepted and processed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from campaign_helpers import NodeDb, RecordingScp, Sender, sop_uid, synthetic_series, wait_until
from conftest import echoscu

MB = 1024 * 1024
NO_HALT = ("-nh",)  # storescu goes on after a refusal (by default it stops at the first)


@contextlib.contextmanager
def small_tmpfs(where: Path, size_mb: int):
    where.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs for the disk-full campaign: {exc}")
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full campaign (needs root / CAP_SYS_ADMIN): "
                    f"{out.stderr.strip()}")
    try:
        yield where
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(filler: Path, *, leave_bytes: int = 0) -> None:
    """Grow `filler` until only `leave_bytes` are free (0: until the filesystem says ENOSPC)."""
    chunk = b"\0" * MB
    with filler.open("ab") as f:
        while True:
            room = free_bytes(filler.parent) - leave_bytes
            if leave_bytes and room <= 0:
                break
            try:
                f.write(chunk[: max(4096, min(len(chunk), room))] if leave_bytes else chunk)
                f.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if leave_bytes == 0:
                    break
            if leave_bytes == 0 and free_bytes(filler.parent) == 0:
                # tmpfs may take a smaller tail: write the last pages one by one
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * 4096)
                        f.flush()
                break


def classify(responses: list[tuple[str, str]]) -> Counter:
    out: Counter = Counter()
    for _, r in responses:
        if r == "(Success)":
            out["accepted"] += 1
        elif r.startswith("(Refused: OutOfResources"):
            out["refused_A700"] += 1
        elif r == "":
            out["no_response"] += 1
        else:
            out[f"other {r}"] += 1
    return out


def check_stored_instances(node, db: NodeDb, sent: dict[str, Path]) -> int:  # noqa: ANN001
    """Every indexed instance reads back and carries exactly what was sent; the number checked."""
    checked = 0
    for row in db.query("SELECT sop_instance_uid, relpath FROM instances"):
        stored = pydicom.dcmread(node.data_dir / "spool" / row["relpath"])
        original = pydicom.dcmread(sent[row["sop_instance_uid"]])
        assert stored.SOPInstanceUID == original.SOPInstanceUID
        assert stored.PixelData == original.PixelData, row["relpath"]
        checked += 1
    leftovers = list((node.data_dir / "spool").rglob("*.tmp"))
    assert not leftovers, leftovers[:5]
    return checked


def run_disk_full_campaign(node_factory, tmp_path: Path, *, seed: int, slices: int, size: int,  # noqa: ANN001
                           tmpfs_mb: int, hold_full_s: float, extra: str = "") -> dict:
    t0 = time.monotonic()
    scp = RecordingScp()
    mnt = tmp_path / "small_disk"
    with small_tmpfs(mnt, tmpfs_mb):
        node = None
        try:
            node = node_factory(min_free_mb=8, extra=scp.destination_config()
                                + "retention: {evict_margin_mb: 0}\n" + extra)
            node.data_dir = mnt / "data"
            node.start()
            db = NodeDb(node.data_dir)
            filler = mnt / "filler.bin"
            series_a = synthetic_series(tmp_path / "a", slices=slices, size=size, seed=seed)
            series_b = synthetic_series(tmp_path / "b", slices=max(20, slices // 2), size=size, seed=seed + 1,
                                        series_number=2)
            sent = {sop_uid(f): f for f in series_a + series_b}
            figures: dict = {"seed": seed, "tmpfs_mb": tmpfs_mb, "slices": slices, "size": size}

            # 1. during ingest: the space goes below the floor (min_free_mb 8) part-way through the series
            s = Sender(node.port, series_a, tmp_path / "a1.log", extra=NO_HALT).start()
            wait_until(lambda: len(s.responses()) >= slices // 3 or not s.running(), 60, "a third sent",
                       poll=0.005)
            fill(filler, leave_bytes=4 * MB)
            s.wait()
            first = classify(s.responses())
            assert first["refused_A700"] > 0 and set(first) <= {"accepted", "refused_A700"}, first
            assert node.log_events("store.refused") and all(
                e["status"] == "0xA700" for e in node.log_events("store.refused"))
            # the disk now full to the last page (the partial series' job may be running: its results
            # cannot be written either), every re-send is refused the same way
            fill(filler)
            figures["free_when_full"] = free_bytes(mnt)
            unacked = [f for f in series_a if f not in set(s.acked())]
            s2 = Sender(node.port, unacked, tmp_path / "a2.log", extra=NO_HALT).start()
            s2.wait()
            second = classify(s2.responses())
            assert second == Counter(refused_A700=len(unacked)), second
            assert echoscu(node.port).returncode == 0 and node.proc.poll() is None
            checked = check_stored_instances(node, db, sent)

            # 2. space returns: the re-send is accepted and processed
            filler.unlink()
            s3 = Sender(node.port, unacked, tmp_path / "a3.log").start()
            s3.wait()
            third = classify(s3.responses())
            assert third == Counter(accepted=len(unacked)), third
            wait_until(db.quiet, 180, "the whole series processed and delivered", poll=0.2)
            assert {sop_uid(f) for f in series_a} <= db.instance_uids()

            # 3. during processing: the disk fills to the last page while the job runs
            jobs_before = {j["id"] for j in db.jobs()}
            s4 = Sender(node.port, series_b, tmp_path / "b.log").start()
            s4.wait()
            assert classify(s4.responses()) == Counter(accepted=len(series_b))
            wait_until(lambda: [j for j in db.jobs("running") if j["id"] not in jobs_before]
                       or [j for j in db.jobs("done") if j["id"] not in jobs_before], 60, "series b's job",
                       poll=0.005)
            fill(filler)
            full_at = time.monotonic()
            (job_b,) = [j for j in db.jobs() if j["id"] not in jobs_before]
            wait_until(lambda: any(e.get("job") == job_b["id"] for e in node.log_events("job.waiting_for_disk"))
                       or db.query("SELECT state FROM jobs WHERE id = ?", job_b["id"])[0]["state"] == "done",
                       120, "series b's job to hit the full disk", poll=0.1)
            time.sleep(hold_full_s)
            during = db.query("SELECT state, attempts, last_error FROM jobs WHERE id = ?", job_b["id"])[0]
            assert node.proc.poll() is None, f"the node died with the disk full:\n{node.log_text()[-3000:]}"
            assert echoscu(node.port).returncode == 0
            filler.unlink()
            wait_until(db.quiet, 240, "series b's job and deliveries after space returned", poll=0.2)
            after = db.query("SELECT state, attempts, last_error FROM jobs WHERE id = ?", job_b["id"])[0]
            assert node.proc.poll() is None
            checked = check_stored_instances(node, db, sent)

            failed = [(j["id"], j["attempts"], j["last_error"]) for j in db.jobs("failed")]
            received = scp.snapshot()
            undelivered = [r["sop_instance_uid"] for r in db.outbox() if r["state"] != "done"
                           or received.get(r["sop_instance_uid"], 0) < 1]
            figures.update({
                "ingest_accepted": first["accepted"], "ingest_refused_A700": first["refused_A700"],
                "resend_when_full_refused_A700": second["refused_A700"], "resumed_accepted": third["accepted"],
                "instances_indexed_and_verified": checked,
                "job_during_full": dict(during), "job_after": dict(after),
                "held_full_s": round(time.monotonic() - full_at, 1),
                "jobs_done": len(db.jobs("done")), "jobs_failed": len(failed), "results_undelivered": len(undelivered),
                "seconds": round(time.monotonic() - t0, 1),
            })
            print(f"\ndisk-full campaign: {figures}")
            assert failed == [], failed
            assert after["state"] == "done", dict(after)
            assert undelivered == []
            return figures
        finally:
            if node is not None:
                node.stop()
            scp.stop()


def test_disk_full_campaign_small(node_factory, tmp_path):
    run_disk_full_campaign(node_factory, tmp_path, seed=7, slices=60, size=256, tmpfs_mb=64, hold_full_s=2.0)


@pytest.mark.slow
@pytest.mark.campaign
def test_disk_full_campaign_long_outage(node_factory, tmp_path):
    """A bigger series, and the disk kept full for 45 s while the job wants to write (longer than the job
    retries' backoff: the product's, 10 s doubling, over its 3 attempts)."""
    run_disk_full_campaign(node_factory, tmp_path, seed=8, slices=120, size=256, tmpfs_mb=96, hold_full_s=45.0,
                           extra="processing: {retry_backoff_s: 10.0}\n")  # the product's default backoff

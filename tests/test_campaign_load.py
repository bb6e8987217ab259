"""Hardening campaign: load. Four senders push different series at once (pynetdicom requestors that time
every C-STORE round trip) while the jobs of the series already complete run and their results are
delivered to a destination; throughput and the p50/p95/max C-STORE response times are printed; nothing is
lost (every acknowledged instance indexed, every job done, every result delivered)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pydicom
import pytest
from campaign_helpers import NodeDb, RecordingScp, percentile, synthetic_series, wait_until
from conftest import NODE_AE
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage


def _send_timed(port: int, files: list[Path], aet: str, out: dict) -> None:
    """One association; every C-STORE timed from request to response."""
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=aet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE, max_pdu=131072)
    assert assoc.is_established, f"{aet}: association refused"
    latencies, acked, failed = [], [], []
    try:
        for ds in datasets:
            t = time.perf_counter()
            rsp = assoc.send_c_store(ds)
            latencies.append(time.perf_counter() - t)
            if rsp and int(getattr(rsp, "Status", -1)) == 0:
                acked.append(str(ds.SOPInstanceUID))
            else:
                failed.append((str(ds.SOPInstanceUID), rsp))
    finally:
        assoc.release()
    out.update(latencies=latencies, acked=acked, failed=failed)


def run_load_campaign(node_factory, tmp_path: Path, *, seed: int, senders: int, slices: int,  # noqa: ANN001
                      size: int) -> dict:
    scp = RecordingScp()
    try:
        node = node_factory(extra=scp.destination_config(), completion_timeout_s=2.0).start()
        db = NodeDb(node.data_dir)
        series = [synthetic_series(tmp_path / f"s{i}", slices=slices, size=size, seed=seed + i, series_number=i + 1)
                  for i in range(senders)]
        total_bytes = sum(f.stat().st_size for s in series for f in s)
        # a series sent first, so that its job runs (and its results go out) while the senders push
        first = synthetic_series(tmp_path / "first", slices=slices, size=size, seed=seed + 100, series_number=99)
        warmup: dict = {}
        _send_timed(node.port, first, "SCANNER9", warmup)
        wait_until(lambda: db.jobs("running") or db.jobs("done"), 60, "the first series' job", poll=0.01)
        busy: list[int] = []
        sending = threading.Event()
        sending.set()

        def sample() -> None:
            while sending.is_set():
                busy.append(db.count("SELECT COUNT(*) FROM jobs WHERE state = 'running'")
                            + db.count("SELECT COUNT(*) FROM outbox WHERE state = 'pending'"))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results: list[dict] = [{} for _ in range(senders)]
        threads = [threading.Thread(target=_send_timed, args=(node.port, s, f"SCANNER{i}", results[i]))
                   for i, s in enumerate(series)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=1800)
        send_s = time.perf_counter() - t0
        sending.clear()
        sampler.join()
        assert all(r for r in results), "a sender did not finish"
        jobs_done_during_send = len(db.jobs("done"))
        wait_until(db.quiet, 1800, "every job and delivery", poll=0.5)
        all_s = time.perf_counter() - t0

        latencies = [x for r in results for x in r["latencies"]]
        acked = {u for r in [*results, warmup] for u in r["acked"]}
        failed = [f for r in results for f in r["failed"]]
        lost = acked - db.instance_uids()
        versions = db.query("SELECT series_uid, version FROM series")
        done_versions = {(j["series_uid"], j["series_version"]) for j in db.jobs("done")}
        jobs_lost = [tuple(v) for v in versions if (v["series_uid"], v["version"]) not in done_versions]
        received = scp.snapshot()
        outbox = db.outbox()
        results_lost = [r["sop_instance_uid"] for r in outbox
                        if r["state"] != "done" or received.get(r["sop_instance_uid"], 0) < 1]
        figures = {
            "seed": seed, "senders": senders, "series": f"{senders} x {slices} x {size}x{size}",
            "instances": len(latencies), "acknowledged": len(acked), "refused": len(failed),
            "MB": round(total_bytes / 1e6, 1), "send_s": round(send_s, 2),
            "MB_per_s": round(total_bytes / 1e6 / send_s, 1), "instances_per_s": round(len(latencies) / send_s, 1),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
            "p95_ms": round(percentile(latencies, 0.95) * 1000, 1), "max_ms": round(max(latencies) * 1000, 1),
            "jobs_done_while_sending": jobs_done_during_send,
            "busy_while_sending": f"{sum(1 for b in busy if b)}/{len(busy)} samples with a job running or a "
                                  f"delivery pending", "jobs_done": len(db.jobs("done")),
            "jobs_failed": len(db.jobs("failed")), "lost": len(lost), "jobs_lost": len(jobs_lost),
            "results": len(outbox), "results_lost": len(results_lost),
            "duplicates_delivered": sum(n - 1 for n in received.values() if n > 1),
            "seconds_until_all_delivered": round(all_s, 1),
        }
        print(f"\nload campaign: {figures}")
        assert failed == [] and len(acked) == (senders + 1) * slices
        assert lost == set()
        assert len(versions) == senders + 1 and jobs_lost == [] and figures["jobs_failed"] == 0
        assert outbox and results_lost == []
        return figures
    finally:
        scp.stop()


def test_load_campaign_small(node_factory, tmp_path):
    run_load_campaign(node_factory, tmp_path, seed=11, senders=4, slices=60, size=256)


@pytest.mark.slow
@pytest.mark.campaign
@pytest.mark.timeout(3600)
def test_load_campaign_large_series(node_factory, tmp_path):
    slices = int(os.environ.get("ISONODE_LOAD_SLICES", "150"))
    run_load_campaign(node_factory, tmp_path, seed=12, senders=4, slices=slices, size=512)

"""Hardening campaign: kill -9 at random points during ingest, processing and delivery.

A seeded schedule picks, per kill, a phase (ingest: storescu mid-series; processing: a job running;
delivery: a result in flight to the destination) and a random offset into it; after each kill the node
restarts on the same data directory, the scanner re-sends what it saw unacknowledged, and the campaign
goes on. At the end everything is let finish and checked: every instance storescu saw acknowledged is
indexed (and its file is on disk), every complete series version has its job done, every result of every
done job reached the destination at least once (at-least-once: duplicates are counted and reported).

`ISONODE_CAMPAIGN_KILLS` / `ISONODE_CAMPAIGN_SEED` override the slow run's kill count and seed.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from campaign_helpers import NodeDb, RecordingScp, Sender, sop_uid, synthetic_series, wait_until

PHASES = ("ingest", "processing", "delivery")


def _actual_phase(senders: list[Sender], db: NodeDb, scp: RecordingScp) -> str:
    """Every phase under way at the kill, joined with '+' (a job may run while a result is delivered)."""
    phases = []
    if any(s.running() for s in senders):
        phases.append("ingest")
    if db.count("SELECT COUNT(*) FROM jobs WHERE state = 'running'"):
        phases.append("processing")
    if scp.in_flight or db.count("SELECT COUNT(*) FROM outbox WHERE state = 'pending'"):
        phases.append("delivery")
    return "+".join(phases) or "idle"


def run_kill9_campaign(node_factory, tmp_path: Path, *, kills: int, seed: int) -> dict:  # noqa: ANN001
    t0 = time.monotonic()
    rng = random.Random(seed)
    scp = RecordingScp(delay_s=0.15)
    node = node_factory(extra=scp.destination_config(), completion_timeout_s=1.0).start()
    db = NodeDb(node.data_dir)
    acked: dict[str, Path] = {}
    sent_series = 0
    intended: Counter[str] = Counter()
    actual: Counter[str] = Counter()

    def new_series() -> list[Path]:
        nonlocal sent_series
        sent_series += 1
        return synthetic_series(tmp_path / f"series{sent_series:04d}", slices=rng.randint(20, 40),
                                size=64, seed=seed * 1000 + sent_series, series_number=sent_series)

    def record(sender: Sender) -> list[Path]:
        """What the sender got acknowledged; the files it did not (to be re-sent, as a scanner would)."""
        ok = sender.acked()
        for f in ok:
            acked[sop_uid(f)] = f
        done = {str(f) for f in ok}
        return [f for f in sender.files if str(f) not in done]

    def send_now(files: list[Path]) -> None:
        s = Sender(node.port, files, tmp_path / f"send{sent_series:04d}-{time.monotonic_ns()}.log").start()
        s.wait()
        rest = record(s)
        assert not rest, f"a healthy node refused or dropped {len(rest)} instances:\n{s.log.read_text()[-2000:]}"

    def work_pending() -> bool:
        return db.count("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')") > 0

    try:
        schedule = [PHASES[i % len(PHASES)] for i in range(kills)]  # every phase, in a seeded order
        rng.shuffle(schedule)
        for k, phase in enumerate(schedule):
            intended[phase] += 1
            senders: list[Sender] = []
            if phase == "ingest":
                files = new_series()
                stop_after = rng.randint(0, len(files) - 1)  # kill once this many responses have come back
                s = Sender(node.port, files, tmp_path / f"kill{k:04d}.log").start()
                senders.append(s)
                wait_until(lambda s=s, n=stop_after: len(s.responses()) >= n or not s.running(), 60,
                           "storescu progress", poll=0.005)
                time.sleep(rng.uniform(0.0, 0.02))
            elif phase == "processing":
                if not work_pending():
                    send_now(new_series())
                wait_until(lambda: db.count("SELECT COUNT(*) FROM jobs WHERE state = 'running'")
                           or not work_pending(), 60, "a job running", poll=0.01)
                time.sleep(rng.uniform(0.0, 1.0))
            else:
                if not work_pending() and not db.count("SELECT COUNT(*) FROM outbox WHERE state = 'pending'"):
                    send_now(new_series())
                wait_until(lambda: scp.in_flight or (not work_pending() and not db.count(
                    "SELECT COUNT(*) FROM outbox WHERE state = 'pending'")), 90, "a delivery in flight", poll=0.01)
                time.sleep(rng.uniform(0.0, 0.3))
            actual[_actual_phase(senders, db, scp)] += 1
            node.kill9()
            for s in senders:
                s.wait(timeout=60)
            rest = [f for s in senders for f in record(s)]
            node.start(timeout=60)
            if rest:
                send_now(rest)

        # let everything finish
        wait_until(db.quiet, 600, "the node to finish every job and delivery", poll=0.5)
        time.sleep(1.0)
        wait_until(db.quiet, 120, "the node to stay quiet", poll=0.5)
        assert node.proc is not None and node.proc.poll() is None, "the node died on its own"

        indexed = db.instance_uids()
        lost = sorted(set(acked) - indexed)
        missing_files = []
        for row in db.query("SELECT sop_instance_uid, relpath FROM instances"):
            if row["sop_instance_uid"] in acked and not any(
                    (base / row["relpath"]).exists() for base in (node.data_dir, node.data_dir / "spool")):
                missing_files.append(row["sop_instance_uid"])

        leftovers = list((node.data_dir / "spool").rglob("*.tmp"))  # a kill mid-write; cleaned at restart

        jobs_by_version: dict[tuple[str, int], list] = {}
        for j in db.jobs():
            jobs_by_version.setdefault((j["series_uid"], j["series_version"]), []).append(j)
        versions = db.query("SELECT series_uid, version, state, image_count FROM series")
        jobs_lost = [(v["series_uid"], v["version"]) for v in versions if v["image_count"] > 0 and not any(
            j["state"] in ("done", "failed") for j in jobs_by_version.get((v["series_uid"], v["version"]), []))]
        receiving = [v for v in versions if v["state"] != "complete"]
        failed_jobs = [(j["id"], j["last_error"]) for j in db.jobs("failed")]
        per_phase = Counter(p for combo, n in actual.items() for p in combo.split("+") for _ in range(n))

        received = scp.snapshot()
        results_lost = []
        results = 0
        for j in db.jobs("done"):
            rows = db.query("SELECT sop_instance_uid, state FROM outbox WHERE job_id = ?", j["id"])
            if not rows:
                results_lost.append((j["id"], "no result in the outbox"))
            for r in rows:
                results += 1
                if r["state"] != "done" or received.get(r["sop_instance_uid"], 0) < 1:
                    results_lost.append((j["id"], r["sop_instance_uid"], r["state"]))
        duplicates = sum(n - 1 for n in received.values() if n > 1)
        figures = {
            "seed": seed, "kills": kills, "intended": dict(intended), "at_kill": dict(actual),
            "kills_per_phase": dict(per_phase),
            "series_sent": sent_series, "acknowledged": len(acked), "lost": len(lost),
            "missing_files": len(missing_files), "tmp_leftovers": len(leftovers), "series_versions": len(versions),
            "jobs_done": len(db.jobs("done")), "jobs_failed": len(failed_jobs),
            "jobs_failed_why": dict(Counter(e for _, e in failed_jobs)), "jobs_lost": len(jobs_lost),
            "results": results, "results_lost": len(results_lost), "delivered_objects": len(received),
            "duplicates_delivered": duplicates, "seconds": round(time.monotonic() - t0, 1),
        }
        print(f"\nkill9 campaign: {figures}")
        assert lost == [], f"acknowledged instances lost: {lost[:5]}"
        assert missing_files == [], missing_files[:5]
        assert leftovers == [], leftovers[:5]
        assert receiving == [], [dict(v) for v in receiving]
        assert jobs_lost == [], jobs_lost
        assert failed_jobs == [], failed_jobs
        assert results_lost == [], results_lost[:10]
        return figures
    finally:
        scp.stop()


def test_kill9_campaign_small(node_factory, tmp_path):
    figures = run_kill9_campaign(node_factory, tmp_path, kills=5, seed=1205)
    assert figures["kills"] == 5


@pytest.mark.slow
@pytest.mark.campaign
@pytest.mark.timeout(4 * 3600)
def test_kill9_campaign_200_kills(node_factory, tmp_path):
    kills = int(os.environ.get("ISONODE_CAMPAIGN_KILLS", "200"))
    seed = int(os.environ.get("ISONODE_CAMPAIGN_SEED", "20261205"))
    run_kill9_campaign(node_factory, tmp_path, kills=kills, seed=seed)


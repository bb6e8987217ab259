"""End to end on the 275-slice 1 mm chest (../shared/data/lidc_idri_0314_chest_1mm, JPEG-LS): DCMTK storescu
sends the series to `isonode serve`, whose results go to a DCMTK storescp; printed: the seconds from the last
instance acknowledged to the preview and to the full result acknowledged by the destination, each job's
stages, and in the same run the time storescu alone takes to send the series (to the node, and to
storescp as the reference receiver).

Targets (issue "End to end"): preview at the destination under 5 s after the last slice, full under 60 s,
on 2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.peers import ENV, free_port

REPO = Path(__file__).resolve().parent.parent
CASE = (REPO / ".." / "shared" / "data" / "lidc_idri_0314_chest_1mm" / "ct_dicom").resolve()
# the node runs as its systemd unit starts it: freed memory kept for the next job (firmware_config/systemd)
NODE_ENV = {**ENV, "MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}




def _storescu(port: int, aec: str, files: list[Path]) -> float:
    """Seconds storescu takes to send `files` on one association (JPEG-LS proposed as is)."""
    t = time.perf_counter()
    subprocess.run(["storescu", "-R", "-xt", "-aec", aec, "-aet", "BENCHSCU", "127.0.0.1", str(port),
                    *map(str, files)], check=True, capture_output=True, env=ENV, timeout=600)
    return time.perf_counter() - t


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        if subprocess.run(["echoscu", "-aec", "ISONODE", "127.0.0.1", str(port)], capture_output=True,
                          env=ENV).returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError("isonode did not answer C-ECHO")


def _poll(db: Path, sql: str, params: tuple = (), timeout: float = 600.0):  # noqa: ANN202 - a row
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(db, timeout=5) as conn:
                conn.row_factory = sqlite3.Row
                row = conn.execute(sql, params).fetchone()
            if row is not None and all(v is not None for v in tuple(row)):
                return row
        except sqlite3.OperationalError:
            pass  # not created yet
        time.sleep(0.05)
    raise TimeoutError(sql)


def _relabelled_copy(files: list[Path], out: Path) -> list[Path]:
    """The same series as a new study (new Study, Series and SOP Instance UIDs; pixel data bytes as they
    are), so the node processes it again as the next study of its day."""
    import pydicom
    from pydicom.uid import generate_uid

    out.mkdir()
    study, series, uid_map = generate_uid(), generate_uid(), {}
    copies = []
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = uid_map.setdefault(ds.SOPInstanceUID, generate_uid())
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        copies.append(out / f.name)
        ds.save_as(copies[-1], enforce_file_format=True)
    return copies


def _one_study(db: Path, node_port: int, files: list[Path], since_id: tuple[int, int]) -> dict:
    """Send one study, wait for its preview and full results at the destination; the figures."""
    send = _storescu(node_port, "ISONODE", files)
    t_last_ack = time.time()  # storescu exits right after the last response and the release
    jobs_after, outbox_after = since_id
    arrived = {}
    for priority, mode in ((0, "preview"), (1, "full")):
        row = _poll(db, "SELECT MAX(delivered_at) AS t FROM outbox WHERE priority = ? AND id > ?"
                        " HAVING COUNT(*) > 0 AND SUM(state != 'done') = 0", (priority, outbox_after))
        arrived[mode] = row["t"] - t_last_ack
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        completed_at = conn.execute("SELECT MAX(completed_at) FROM series").fetchone()[0]
        jobs = {r["mode"]: r for r in conn.execute(
            "SELECT mode, updated_at, result FROM jobs WHERE state = 'done' AND id > ?", (jobs_after,))}
        ids = (conn.execute("SELECT MAX(id) FROM jobs").fetchone()[0],
               conn.execute("SELECT MAX(id) FROM outbox").fetchone()[0])
    return {"send": send, "t_last_ack": t_last_ack, "arrived": arrived, "completed_at": completed_at,
            "jobs": jobs, "ids": ids}


def _print_study(title: str, r: dict) -> None:
    stages = ("read_s", "segment_s", "mesh_s", "encode_s", "write_s")
    print(f"{title}: storescu -> isonode {r['send']:.2f} s; series complete "
          f"{r['completed_at'] - r['t_last_ack']:+.2f} s after the last ack (association released)")
    print(f"  {'mode':8s} {'at PACS s':>10s} {'target':>7s} {'queued':>7s} "
          + " ".join(f"{s[:-2]:>8s}" for s in stages) + f" {'deliver':>8s}  backend")
    for mode, target in (("preview", 5.0), ("full", 60.0)):
        job = r["jobs"][mode]
        result = json.loads(job["result"])
        t = result["timings_s"]
        done_after = job["updated_at"] - r["t_last_ack"]
        queued = done_after - t["total_s"] - (r["completed_at"] - r["t_last_ack"])
        b = result["backends"]
        print(f"  {mode:8s} {r['arrived'][mode]:10.2f} {'< ' + str(int(target)):>7s} {queued:7.2f} "
              + " ".join(f"{t.get(s, 0.0):8.2f}" for s in stages)
              + f" {r['arrived'][mode] - done_after:8.2f}  {b['inference']} {b['precision']}, mc {b['marching_cubes']}")


def main() -> None:
    if not CASE.is_dir():
        print(f"bench_end_to_end: {CASE} not found, skipped")
        return
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            print(f"bench_end_to_end: {tool} (DCMTK) not installed, skipped")
            return
    files = sorted(CASE.glob("*.dcm"))
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    work = Path(tempfile.mkdtemp(prefix="isonode-bench-e2e-"))
    second = _relabelled_copy(files, work / "second_study")
    pacs_port, node_port = free_port(), free_port()
    (work / "pacs").mkdir()
    pacs = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(work / "pacs"), "+xa", str(pacs_port)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = work / "isonode.yaml"
    config.write_text("series: {completion_timeout_s: 5}\nlogging: {level: WARNING}\n")
    node_log = (work / "node.log").open("wb")
    node = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--config", str(config),
                             "--port", str(node_port), "--data-dir", str(work / "data"),
                             "--destination", f"PACS@127.0.0.1:{pacs_port}"],
                            cwd=REPO, env=NODE_ENV, stdout=node_log, stderr=subprocess.STDOUT)
    try:
        _wait_listening(node_port, node)
        reference = _storescu(pacs_port, "PACS", files)
        db = work / "data" / "isonode.db"
        first = _one_study(db, node_port, files, (0, 0))
        following = _one_study(db, node_port, second, first["ids"])
    finally:
        node.send_signal(signal.SIGTERM)
        pacs.terminate()
        for p in (node, pacs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)

    print(f"series: {CASE.parent.name}, {len(files)} slices, {size_mb:.0f} MB JPEG-LS")
    print(f"storescu -> storescp (reference receiver): {reference:.2f} s ({size_mb / reference:.0f} MB/s); "
          f"storescu -> isonode (fsync, indexed, decoded): {first['send']:.2f} s ({size_mb / first['send']:.0f} MB/s)")
    _print_study("first study after the node started", first)
    _print_study("the next study (the same series under new UIDs)", following)
    print("(seconds after the last instance was acknowledged; queued: from series completion to the job's start,"
          " the full job waits for the preview's)")


if __name__ == "__main__":
    main()

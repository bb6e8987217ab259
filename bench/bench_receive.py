"""C-STORE receive throughput of one 300-slice CT series over loopback, isonode beside DCMTK and Orthanc.

The sender is DCMTK `storescu` for every receiver (one association, files sent as they are). Each
receiver starts fresh (empty storage) for every run; we time storescu from start to exit and check that
the receiver stored all instances. isonode acknowledges an instance only after fsync + rename + index;
`storescp` does not fsync (Orthanc 1.10 does, by its default `SyncStorageArea: true`), so an
`isonode (no fsync)` row shows how much of the gap is the durability contract and how much is the
protocol stack.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.peers import ENV, free_port, wait_for_echo

REPO = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("BENCH_RECEIVE_RUNS", "3"))
SLICES = int(os.environ.get("BENCH_RECEIVE_SLICES", "300"))






def make_series(out: Path) -> tuple[list[Path], int]:
    sys.path.insert(0, str(REPO))
    from compiler.phantom import make_phantom, write_ct_series

    ph = make_phantom((SLICES, 512, 512), (1.0, 0.78, 0.78), seed=7)
    files = write_ct_series(ph.hu, out, spacing=(1.0, 0.78, 0.78))
    return files, sum(f.stat().st_size for f in files)


@dataclass
class Receiver:
    name: str
    aec: str
    start: Callable[[Path, int], subprocess.Popen]
    count_stored: Callable[[Path], int]


def _start_isonode(fsync: bool) -> Callable[[Path, int], subprocess.Popen]:
    def start(work: Path, port: int) -> subprocess.Popen:
        cfg = work / "isonode.yaml"
        cfg.write_text(f"storage: {{fsync: {str(fsync).lower()}, min_free_mb: 64}}\n"
                       "series: {completion_timeout_s: 3600}\nlogging: {level: WARNING}\n")
        return subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--config", str(cfg), "--port",
                                 str(port), "--data-dir", str(work / "data")], cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=(work / "isonode.log").open("w"))
    return start


def _start_storescp(work: Path, port: int) -> subprocess.Popen:
    (work / "out").mkdir()
    return subprocess.Popen(["storescp", "--max-pdu", "131072", "-od", str(work / "out"), str(port)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _start_orthanc(work: Path, port: int) -> subprocess.Popen:
    cfg = {
        "Name": "bench", "StorageDirectory": str(work / "storage"), "IndexDirectory": str(work / "index"),
        "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": free_port(), "HttpServerEnabled": False,
        "RemoteAccessAllowed": False, "DicomCheckCalledAet": False, "StorageCompression": False,
        "Plugins": [], "MaximumPduLength": 131072,
    }
    (work / "orthanc.json").write_text(json.dumps(cfg))
    return subprocess.Popen(["Orthanc", str(work / "orthanc.json")], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _count(pattern: str) -> Callable[[Path], int]:
    return lambda work: sum(1 for p in work.glob(pattern) if p.is_file())


RECEIVERS = [
    Receiver("isonode", "ISONODE", _start_isonode(True), _count("data/spool/*/*/*.dcm")),
    Receiver("isonode (no fsync)", "ISONODE", _start_isonode(False), _count("data/spool/*/*/*.dcm")),
    Receiver("storescp (DCMTK)", "ANY-SCP", _start_storescp, _count("out/*")),
    Receiver("Orthanc", "ORTHANC", _start_orthanc, _count("storage/*/*/*")),
]


def run_once(receiver: Receiver, series_dir: Path, n_files: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-recv-", dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        port = free_port()
        proc = receiver.start(work, port)
        try:
            wait_for_echo(port, receiver.aec, proc)
            t0 = time.perf_counter()
            r = subprocess.run(["storescu", "-R", "-xe", "+sd", "-aec", receiver.aec, "127.0.0.1", str(port),
                                str(series_dir)], capture_output=True, text=True, env=ENV)
            elapsed = time.perf_counter() - t0
            if r.returncode != 0:
                raise RuntimeError(f"storescu to {receiver.name} failed: {r.stderr[-500:]}")
            stored = receiver.count_stored(work)
            if stored != n_files:
                raise RuntimeError(f"{receiver.name} stored {stored} of {n_files} instances")
            return elapsed
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    missing = [t for t in ("storescu", "storescp", "echoscu", "Orthanc") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing tools {missing}: run `make bench` (it installs dcmtk and orthanc)")
    with tempfile.TemporaryDirectory(prefix="bench-series-") as tmp:
        files, total = make_series(Path(tmp))
        mb = total / 1e6
        print(f"series: {len(files)} CT instances, 512x512, {mb:.1f} MB, explicit VR LE; storescu over loopback, "
              f"{RUNS} runs per receiver, fresh storage each run")
        results: dict[str, list[float]] = {r.name: [] for r in RECEIVERS}
        for _ in range(RUNS):  # interleave receivers so drift in machine load hits all of them alike
            for receiver in RECEIVERS:
                results[receiver.name].append(run_once(receiver, Path(tmp), len(files)))
    ref = statistics.median(results["storescp (DCMTK)"])
    header = f"{'receiver':22s} {'MB/s min/median/max':>24s} {'inst/s median':>14s} {'vs storescp':>12s}"
    print(header)
    print("-" * len(header))
    for name, times in results.items():
        rates = sorted(mb / t for t in times)
        med = statistics.median(times)
        print(f"{name:22s} {rates[0]:7.1f} /{mb / med:7.1f} /{rates[-1]:7.1f} {len(files) / med:14.0f}"
              f" {ref / med:11.2f}x")


if __name__ == "__main__":
    main()

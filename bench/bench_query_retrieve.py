"""Query/Retrieve over loopback, isonode beside Orthanc: C-FIND latency with 10,000 indexed studies and C-MOVE
throughput of one 300-slice CT series, plus the time each server takes to ingest the studies.

Both servers are populated the same way: DCMTK `storescu +sd` (one association, plain uncompressed proposals)
sends BENCH_QR_STUDIES (default 10,000) tiny studies (one series of one 16x16 CT Image each, varied
PatientName/PatientID/StudyDate/AccessionNumber/StudyDescription) and then one 300-slice 512x512 CT series
(158 MB, explicit VR LE). Both servers keep their default durability: isonode fsyncs every instance,
Orthanc 1.10 has `SyncStorageArea: true` by default.

C-FIND: one pynetdicom 3.0.4 client (Study Root, one association per server, the same query sequence for
both; TCP_NODELAY on its socket, its network thread polls every 0.2 ms as the node's does) times each query
from the request to the final response, all pending responses received and decoded; median and p95 of
BENCH_QR_REPS (20) repetitions, BENCH_QR_UNIVERSAL_REPS (3) for the universal query, and the time to the
first match. Queries (a) and (d) ask for a different study each repetition; every answer count is checked
against the generated data. The pynetdicom client costs ~0.6 ms per response on this machine, so for the
large answers (b, c, e) it can be the bottleneck: DCMTK `findscu` (median of BENCH_QR_FINDSCU_RUNS (3)
runs, wall time with its process start, ~20-40 ms) shows what the server alone can do there.

C-MOVE: DCMTK `movescu` asks each server to move the 300-slice series (SERIES level) to a DCMTK `storescp +xa`
(MOVEDEST, writes to a temp dir, no fsync); seconds from movescu's start to its exit (the servers answer the
C-MOVE after the last sub-operation), checked by counting the files storescp wrote; median of 3, servers
interleaved. TCP_NODELAY=1 for every DCMTK tool and Orthanc (FACTS: Nagle on loopback).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.peers import ENV, free_port, wait_for_echo

REPO = Path(__file__).resolve().parent.parent
STUDIES = int(os.environ.get("BENCH_QR_STUDIES", "10000"))
REPS = int(os.environ.get("BENCH_QR_REPS", "20"))
UNIVERSAL_REPS = int(os.environ.get("BENCH_QR_UNIVERSAL_REPS", "3"))
FINDSCU_RUNS = int(os.environ.get("BENCH_QR_FINDSCU_RUNS", "3"))
MOVE_RUNS = int(os.environ.get("BENCH_QR_MOVE_RUNS", "3"))
SLICES = 300
CLIENT_AE, DEST_AE = "BENCHSCU", "MOVEDEST"
DATE_RANGE = ("20190101", "20191231")  # studies are dated 2015-2024: about 10% fall in 2019

_SMITHS = ["SMITH", "SMITH", "SMITH", "SMITHSON", "SMITHERS"]  # ~3% of the patients: a few hundred of 10,000
_SURNAMES = ["JONES", "BROWN", "TAYLOR", "WILLIAMS", "WILSON", "JOHNSON", "DAVIES", "ROBINSON", "WRIGHT",
             "THOMPSON", "EVANS", "WALKER", "WHITE", "ROBERTS", "GREEN", "HALL", "WOOD", "JACKSON", "CLARKE",
             "MUELLER", "SCHMIDT", "SCHNEIDER", "FISCHER", "WEBER", "MARTIN", "BERNARD", "DUBOIS", "ROSSI",
             "RUSSO", "GARCIA", "MARTINEZ", "LOPEZ", "NOWAK", "KOWALSKI", "JANSEN", "DE JONG", "SMYTHE",
             "SCHMITT", "NGUYEN", "TANAKA"]
_GIVEN = ["JOHN", "MARY", "ANNA", "PETER", "LUCAS", "EMMA", "NOAH", "SOPHIE", "DAVID", "LAURA", "PAUL",
          "JULIA", "MARC", "ELENA", "TOM", "SARA", "LEO", "MIA", "IVAN", "NORA"]
_DESCRIPTIONS = ["CT CHEST", "CT CHEST W CONTRAST", "CT ABDOMEN PELVIS", "CT HEAD", "CT THORAX LOW DOSE",
                 "CT ANGIO PULMONARY", "CT SPINE LUMBAR", "CT NECK", "CT CHEST ABDOMEN PELVIS", "CT SINUS"]

_STUDY_KEYS = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
               "StudyTime", "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName",
               "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]
_SERIES_KEYS = ["StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
                "NumberOfSeriesRelatedInstances"]






# ---------------------------------------------------------------------------------------------- data


@dataclass
class Study:
    patient_name: str
    patient_id: str
    date: str
    study_uid: str
    series_uid: str


def make_studies(out: Path, n: int) -> list[Study]:
    """`n` tiny studies (one series, one 16x16 CT Image Storage instance each) under `out`, one file each."""
    import numpy as np
    from pydicom.uid import generate_uid

    sys.path.insert(0, str(REPO))
    from compiler.phantom import write_ct_series

    template = write_ct_series(np.full((1, 16, 16), 40, np.int16), out / "template", spacing=(1.0, 1.0, 1.0))[0]
    import pydicom

    ds = pydicom.dcmread(template)
    shutil.rmtree(out / "template")
    rng = random.Random(20261205)
    first_day, days = dt.date(2015, 1, 1), (dt.date(2024, 12, 31) - dt.date(2015, 1, 1)).days
    studies = []
    for i in range(n):
        surname = rng.choice(_SMITHS) if rng.random() < 0.03 else rng.choice(_SURNAMES)
        s = Study(f"{surname}^{rng.choice(_GIVEN)}^{chr(65 + rng.randrange(26))}", f"PID{i:06d}",
                  (first_day + dt.timedelta(days=rng.randrange(days + 1))).strftime("%Y%m%d"),
                  generate_uid(), generate_uid())
        ds.PatientName, ds.PatientID = s.patient_name, s.patient_id
        ds.PatientSex = rng.choice("MF")
        ds.StudyDate = ds.SeriesDate = s.date
        ds.StudyTime = f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
        ds.AccessionNumber = f"ACC{rng.randrange(10**8):08d}"
        ds.StudyDescription = rng.choice(_DESCRIPTIONS)
        ds.StudyID = str(i + 1)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = s.study_uid, s.series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.FrameOfReferenceUID = generate_uid()
        ds.save_as(out / f"st{i:06d}.dcm", enforce_file_format=True)
        studies.append(s)
    return studies


def make_big_series(out: Path) -> tuple[str, str, int]:
    """The 300 x 512x512 uint16 CT series, written by the same writer bench_receive's make_series uses (a cheap
    synthetic volume instead of its phantom, which takes ~20 s to build here); (study UID, series UID, bytes)."""
    import numpy as np
    from pydicom.uid import generate_uid

    sys.path.insert(0, str(REPO))
    from compiler.phantom import write_ct_series

    z, y, x = np.ogrid[:SLICES, :512, :512]
    hu = np.where((x - 256) ** 2 + (y - 256) ** 2 < 200**2, 40, -1000).astype(np.int16) + (z % 7).astype(np.int16)
    study_uid, series_uid = generate_uid(), generate_uid()
    files = write_ct_series(hu, out, spacing=(1.0, 0.78, 0.78), study_uid=study_uid, series_uid=series_uid,
                            patient_id="QRBIG", patient_name="PHANTOM^BIGSERIES")
    return study_uid, series_uid, sum(f.stat().st_size for f in files)


# ---------------------------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    aec: str
    port: int
    proc: subprocess.Popen
    populate_s: float = math.nan
    big_s: float = math.nan
    error: str = ""
    find: dict[str, list[float]] = field(default_factory=dict)
    first: dict[str, list[float]] = field(default_factory=dict)  # seconds to the first pending response
    matches: dict[str, set[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    findscu_s: dict[str, list[float]] = field(default_factory=dict)
    move_s: list[float] = field(default_factory=list)


def _start_isonode(work: Path, port: int, dest_port: int) -> subprocess.Popen:
    cfg = work / "isonode.yaml"
    cfg.write_text("storage: {min_free_mb: 64}\n"
                   "series: {completion_timeout_s: 5}\n"
                   "routing: {default_modalities: []}\n"  # store only: no segmentation of the bench's series
                   "query_retrieve: {enabled: true}\n"    # allowed_peers: loopback by default
                   "logging: {level: WARNING}\n")
    return subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--config", str(cfg), "--port",
                             str(port), "--data-dir", str(work / "data"),
                             "--destination", f"{DEST_AE}@127.0.0.1:{dest_port}"],
                            cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=(work / "isonode.log").open("w"))


def _start_orthanc(work: Path, port: int, dest_port: int) -> subprocess.Popen:
    cfg = {
        "Name": "bench", "StorageDirectory": str(work / "storage"), "IndexDirectory": str(work / "index"),
        "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": free_port(), "HttpServerEnabled": False,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
        "StorageCompression": False, "DicomAlwaysAllowStore": True, "Plugins": [], "MaximumPduLength": 131072,
        # the move destination, and the client so that it may C-FIND / C-MOVE (port unused)
        "DicomModalities": {"movedest": [DEST_AE, "127.0.0.1", dest_port],
                            "benchscu": [CLIENT_AE, "127.0.0.1", 104]},
    }
    (work / "orthanc.json").write_text(json.dumps(cfg))
    return subprocess.Popen(["Orthanc", str(work / "orthanc.json")], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=(work / "orthanc.log").open("w"))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0.0 where /proc is absent."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _settle(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until the server is idle (under 5% of a core for 0.5 s), so its work after a population (series
    completion, indexing) does not run into the next measurement."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = _cpu_s(proc.pid)
        time.sleep(0.5)
        if _cpu_s(proc.pid) - before < 0.025:
            return


def _storescu(server: Server, path: Path) -> float:
    """Seconds `storescu +sd` takes to send every file under `path` on one association."""
    t = time.perf_counter()
    r = subprocess.run(["storescu", "+sd", "-aet", CLIENT_AE, "-aec", server.aec, "127.0.0.1", str(server.port),
                        str(path)], capture_output=True, text=True, env=ENV, timeout=1800)
    elapsed = time.perf_counter() - t
    errors = [line for line in r.stderr.splitlines() if line.startswith(("E:", "F:"))]
    if r.returncode != 0 or errors:
        raise RuntimeError(f"storescu -> {server.name}: rc {r.returncode}: {' | '.join(errors[:3])}")
    return elapsed


# ---------------------------------------------------------------------------------------------- C-FIND


@dataclass
class Query:
    key: str
    label: str
    level: str
    expected: int
    reps: int
    keys: list[str]
    values: list[dict[str, str]]  # one dict of matching keys per repetition
    # StudyInstanceUID -> the NumberOfStudyRelatedInstances its answer must carry
    instances: dict[str, int] = field(default_factory=dict)


def make_queries(studies: list[Study], big_study_uid: str) -> list[Query]:
    rng = random.Random(7)
    picks = [rng.randrange(len(studies)) for _ in range(max(REPS, 1))]
    n_smith = sum(s.patient_name.startswith("SMITH") for s in studies)
    n_range = sum(DATE_RANGE[0] <= s.date <= DATE_RANGE[1] for s in studies)
    return [
        Query("a", "STUDY  PatientID=<one>", "STUDY", 1, REPS, _STUDY_KEYS,
              [{"PatientID": studies[i].patient_id} for i in picks]),
        Query("b", "STUDY  PatientName=SMITH*", "STUDY", n_smith, REPS, _STUDY_KEYS,
              [{"PatientName": "SMITH*"}] * REPS),
        Query("c", f"STUDY  StudyDate={DATE_RANGE[0]}-{DATE_RANGE[1]}", "STUDY", n_range, REPS, _STUDY_KEYS,
              [{"StudyDate": "-".join(DATE_RANGE)}] * REPS),
        Query("d", "SERIES StudyInstanceUID=<one>", "SERIES", 1, REPS, _SERIES_KEYS,
              [{"StudyInstanceUID": studies[i].study_uid} for i in picks]),
        Query("e", "STUDY  universal (all studies)", "STUDY", len(studies) + 1, UNIVERSAL_REPS, _STUDY_KEYS,
              [{}] * UNIVERSAL_REPS, {big_study_uid: SLICES, studies[-1].study_uid: 1}),
    ]


def _identifier(level: str, keys: list[str], values: dict[str, str]):  # noqa: ANN202 - a pydicom Dataset
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k in keys:
        setattr(ds, k, "")
    for k, v in values.items():
        setattr(ds, k, v)
    return ds


def run_finds(server: Server, queries: list[Query]) -> None:
    """Every query's repetitions on one pynetdicom association; times, match counts and notes into `server`."""
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as StudyRootFind

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    ae = AE(ae_title=CLIENT_AE)
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 30, 600, 600
    ae.add_requested_context(StudyRootFind)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.aec)
    if not assoc.is_established:
        raise RuntimeError("association for C-FIND rejected or aborted")
    assoc.dul._run_loop_delay = 0.0002  # the client polls like the node does (pynetdicom's default is 1 ms)
    # without it each request (command and identifier go out as two PDUs) waits ~40 ms for a delayed ACK
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # pynetdicom 3.0.4's association reactor may wake from its pause just after a query ends, miss the
    # next request going out, and take one of its responses off the queue (~1 in 100 queries to Orthanc lost
    # one match here; findscu never did). It only ever polls without blocking, send_c_find blocks: let the
    # reactor see no DIMSE messages at all on this client-only association.
    get_msg = assoc.dimse.get_msg
    assoc.dimse.get_msg = lambda block=False: get_msg(block) if block else (None, None)
    try:
        if not any(cx.abstract_syntax == StudyRootFind for cx in assoc.accepted_contexts):
            raise RuntimeError("Study Root C-FIND presentation context not accepted")
        for q in queries:
            times, firsts, counts = [], [], set()
            for values in q.values[: q.reps]:
                ds = _identifier(q.level, q.keys, values)
                n, final, first_ok = 0, None, None
                t0 = time.perf_counter()
                for status, identifier in assoc.send_c_find(ds, StudyRootFind):
                    code = getattr(status, "Status", None)
                    if code in (0xFF00, 0xFF01):
                        n += 1
                        if first_ok is None:
                            firsts.append(time.perf_counter() - t0)
                            first_ok = identifier
                        if q.instances and identifier is not None:
                            _check_instances(server, q, identifier)
                    else:
                        final = code
                elapsed = time.perf_counter() - t0
                if final != 0x0000:
                    raise RuntimeError(f"query ({q.key}) ended with status "
                                       f"{'none (association lost)' if final is None else f'0x{final:04X}'}")
                times.append(elapsed)
                counts.add(n)
                if first_ok is not None and q.level == "STUDY" and q.key == "a":
                    _check_study_answer(server, first_ok)
            server.find[q.key], server.first[q.key], server.matches[q.key] = times, firsts, counts
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _check_instances(server: Server, q: Query, ds) -> None:  # noqa: ANN001 - a pydicom Dataset
    want = q.instances.get(str(ds.get("StudyInstanceUID", "")))
    got = ds.get("NumberOfStudyRelatedInstances")
    if want is not None and str(got) != str(want):
        note = f"query ({q.key}): a study of {want} instances answered NumberOfStudyRelatedInstances {got!r}"
        if note not in server.notes:
            server.notes.append(note)


def _check_study_answer(server: Server, ds) -> None:  # noqa: ANN001 - a pydicom Dataset
    """Note once if a tiny study's answer lacks the computed keys we asked for."""
    got = {k: str(ds.get(k, "<absent>")) for k in ("ModalitiesInStudy", "NumberOfStudyRelatedInstances",
                                                       "NumberOfStudyRelatedSeries")}
    if got != {"ModalitiesInStudy": "CT", "NumberOfStudyRelatedInstances": "1", "NumberOfStudyRelatedSeries": "1"}:
        note = f"query (a) answer: {got}"
        if note not in server.notes:
            server.notes.append(note)


def run_findscu(server: Server, q: Query, run: int) -> float:
    """Wall time of one DCMTK findscu run (process start, association, query, release)."""
    args = ["findscu", "-S", "-aet", CLIENT_AE, "-aec", server.aec, "-k", f"QueryRetrieveLevel={q.level}"]
    values = q.values[run % len(q.values)]
    for k in q.keys:
        args += ["-k", f"{k}={values.get(k, '')}" if k in values else k]
    t = time.perf_counter()
    r = subprocess.run([*args, "127.0.0.1", str(server.port)], capture_output=True, text=True, env=ENV,
                       timeout=600)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"findscu ({q.key}) -> {server.name}: rc {r.returncode}: {r.stderr[-300:]}")
    return elapsed


# ---------------------------------------------------------------------------------------------- C-MOVE


def run_move(server: Server, study_uid: str, series_uid: str, dest: subprocess.Popen, dest_dir: Path) -> float:
    if dest.poll() is not None:
        log = (dest_dir.parent / "storescp.log").read_text(errors="replace").strip().splitlines()[-2:]
        raise RuntimeError(f"the move destination storescp exited with {dest.returncode}: {log}")
    for f in dest_dir.iterdir():
        f.unlink()
    t = time.perf_counter()
    r = subprocess.run(["movescu", "-v", "-S", "-aet", CLIENT_AE, "-aec", server.aec, "-aem", DEST_AE,
                        "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}",
                        "-k", f"SeriesInstanceUID={series_uid}", "127.0.0.1", str(server.port)],
                       capture_output=True, text=True, env=ENV, timeout=600)
    elapsed = time.perf_counter() - t
    out = r.stdout + r.stderr
    final = re.findall(r"Move Response \d+ \((\w+)\)|Final Move Response \((\w+)\)", out)
    received = sum(1 for _ in dest_dir.iterdir())
    if r.returncode != 0 or received != SLICES:
        raise RuntimeError(f"movescu -> {server.name}: rc {r.returncode}, {received}/{SLICES} instances at "
                           f"{DEST_AE}, responses {final[-3:]}: {out[-400:]}")
    return elapsed


# ---------------------------------------------------------------------------------------------- report


def _p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def _ms(xs: list[float] | None, p95: bool = False) -> str:
    if not xs:
        return "-"
    return f"{(_p95(xs) if p95 else statistics.median(xs)) * 1e3:.1f}"


def _find_cells(server: Server, key: str) -> str:
    """pynetdicom median / p95, pynetdicom median to the first match, findscu median; ms."""
    return (f"{_ms(server.find.get(key)):>9s} /{_ms(server.find.get(key), p95=True):>9s} "
            f"{_ms(server.first.get(key)):>7s} {_ms(server.findscu_s.get(key)):>8s}")


def _matches(q: Query, servers: list[Server]) -> str:
    got = [",".join(map(str, sorted(s.matches[q.key]))) for s in servers if q.key in s.matches]
    if all(g == str(q.expected) for g in got):
        return str(q.expected)
    return f"{q.expected} (got {' / '.join(got)})"


def report(servers: list[Server], queries: list[Query], n_files: int, big_mb: float, wall: float) -> None:
    print(f"population: storescu +sd, one association, {n_files} tiny studies, then the {SLICES}-slice series "
          f"({big_mb:.0f} MB)")
    for s in servers:
        if math.isnan(s.big_s):
            print(f"  {s.name:8s} -")
            continue
        print(f"  {s.name:8s} {s.populate_s:7.1f} s ({n_files / s.populate_s:5.0f} inst/s);"
              f" {SLICES}-slice series {s.big_s:5.2f} s ({big_mb / s.big_s:4.0f} MB/s)")
    print(f"C-FIND, Study Root, ms. pynetdicom client: one association per server, request to final response, "
          f"median / p95 of {REPS} ({UNIVERSAL_REPS} for (e));\n  1st: pynetdicom median to the first match; "
          f"findscu: median wall time of {FINDSCU_RUNS} runs, its process start included")
    print(f"  {'':41s} {'':>8s} " + " ".join(f"  {s.name:-^37s}" for s in servers))
    header = (f"  {'query':41s} {'matches':>8s} "
              + " ".join(f"  {'pynetdicom med / p95':>20s} {'1st':>7s} {'findscu':>8s}" for _ in servers))
    print(header)
    for q in queries:
        print(f"  ({q.key}) {q.label:37s} {_matches(q, servers):>8s} "
              + " ".join(f"  {_find_cells(s, q.key)}" for s in servers))
    print(f"C-MOVE SERIES, {SLICES} x 512^2 ({big_mb:.0f} MB) -> storescp +xa ({DEST_AE}), movescu wall time, "
          f"median of {MOVE_RUNS}")
    for s in servers:
        if not s.move_s:
            print(f"  {s.name:8s} -")
            continue
        med = statistics.median(s.move_s)
        print(f"  {s.name:8s} {min(s.move_s):6.2f} /{med:6.2f} /{max(s.move_s):6.2f} s (min/median/max)"
              f" {big_mb / med:7.1f} MB/s {SLICES / med:7.0f} inst/s")
    for s in servers:
        for note in ([f"FAILED: {s.error}"] if s.error else []) + s.notes:
            print(f"  note, {s.name}: {note}")
    print(f"(whole run {wall:.0f} s)")


# ---------------------------------------------------------------------------------------------- main


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    tools = ("storescu", "storescp", "echoscu", "findscu", "movescu", "Orthanc")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing tools {missing}: run `make bench` (it installs dcmtk and orthanc)")
    t_start = time.perf_counter()
    previous = signal.signal(signal.SIGTERM, _terminated)  # a SIGTERM still stops the servers, removes the data
    with contextlib.ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGTERM, previous)
        tmp = tempfile.TemporaryDirectory(prefix="bench-qr-", dir=os.environ.get("BENCH_TMP"))
        work = Path(stack.enter_context(tmp))
        t = time.perf_counter()
        studies = make_studies(work / "studies", STUDIES)
        big_study, big_series, big_bytes = make_big_series(work / "big")
        big_mb = big_bytes / 1e6
        print(f"data: {STUDIES} tiny studies + one {SLICES}-slice series ({big_mb:.0f} MB) written in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        queries = make_queries(studies, big_study)

        dest_dir, dest_port = work / "movedest", free_port()
        dest_dir.mkdir()
        dest_log = work / "storescp.log"
        dest = subprocess.Popen(["storescp", "-aet", DEST_AE, "+xa", "--max-pdu", "131072", "-od", str(dest_dir),
                                 str(dest_port)], env=ENV, stdout=dest_log.open("w"), stderr=subprocess.STDOUT)
        stack.callback(_stop, dest)
        wait_for_echo(dest_port, DEST_AE, dest)

        servers: list[Server] = []
        for name, aec, start in (("isonode", "ISONODE", _start_isonode), ("Orthanc", "ORTHANC", _start_orthanc)):
            (work / name).mkdir()
            port = free_port()
            proc = start(work / name, port, dest_port)
            stack.callback(_stop, proc)
            servers.append(Server(name, aec, port, proc))

        def attempt(server: Server, what: str, fn) -> None:  # noqa: ANN001 - a callable
            """Run one phase for one server; a failure marks that server failed, the other goes on."""
            if server.error:
                return
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - reported, the other server's figures still count
                server.error = f"{what}: {exc}"
                log = work / server.name / f"{server.name.lower()}.log"
                if log.exists():
                    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                    server.error += "".join(f"\n      log: {line[:300]}" for line in tail)

        for s in servers:
            attempt(s, "start", lambda s=s: wait_for_echo(s.port, s.aec, s.proc))
        for s in servers:  # the servers one after the other: on 2 cores they would slow each other down
            def populate(s: Server = s) -> None:
                s.populate_s = _storescu(s, work / "studies")
                s.big_s = _storescu(s, work / "big")
                _settle(s.proc)
            attempt(s, "population", populate)
            print(f"  {s.name}: " + (f"populated in {s.populate_s + s.big_s:.1f} s" if not s.error else "failed"),
                  flush=True)
        for s in servers:
            attempt(s, "C-FIND", lambda s=s: run_finds(s, queries))
            for q in queries:
                def findscu(s: Server = s, q: Query = q) -> None:
                    s.findscu_s[q.key] = [run_findscu(s, q, run) for run in range(FINDSCU_RUNS)]
                attempt(s, f"findscu ({q.key})", findscu)
        for _ in range(MOVE_RUNS):  # interleaved, so that drift in machine load hits both alike
            for s in servers:
                def move(s: Server = s) -> None:
                    s.move_s.append(run_move(s, big_study, big_series, dest, dest_dir))
                attempt(s, "C-MOVE", move)
        report(servers, queries, STUDIES, big_mb, time.perf_counter() - t_start)


if __name__ == "__main__":
    main()

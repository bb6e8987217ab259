"""Shared fixtures: a real `isonode serve` subprocess on a free port, DCMTK helpers, phantom series."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
NODE_AE = "ISONODE"

# DCMTK 3.6.7 crawls on loopback without TCP_NODELAY (Nagle); the tools read it from the environment.
os.environ.setdefault("TCP_NODELAY", "1")


def shared_case(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real CT case {name} not found at {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make test` installs it (apt-get)")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy (dicom3tools) prints for a DICOM file; every object we write must have none."""
    out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


@dataclass
class NodeProcess:
    """`isonode serve` running as a subprocess, as an operator would run it."""

    data_dir: Path
    port: int
    config_path: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 30.0) -> NodeProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        started_before = self.log_text().count('"event":"scp.listening"')  # a restart appends to the log
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--config", str(self.config_path),
             "--port", str(self.port), "--data-dir", str(self.data_dir)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"isonode serve exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if self.log_text().count('"event":"scp.listening"') > started_before:
                return self
            time.sleep(0.05)
        raise TimeoutError(f"isonode serve did not start:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self, event: str) -> list[dict]:
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{") and f'"event":"{event}"' in line:
                out.append(json.loads(line))
        return out

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def status(self) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "appliance.cli", "status", "--json", "--config", str(self.config_path),
             "--data-dir", str(self.data_dir)],
            cwd=REPO, capture_output=True, text=True, check=True,
        )
        return json.loads(out.stdout)

    def run_cli(self, *args: str) -> str:
        """`isonode ARGS --config ... --data-dir ...` against this node's data; its stdout."""
        out = subprocess.run([sys.executable, "-m", "appliance.cli", *args, "--config", str(self.config_path),
                              "--data-dir", str(self.data_dir)], cwd=REPO, capture_output=True, text=True,
                             check=True)
        return out.stdout

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "condition", poll: float = 0.25) -> dict:
        deadline = time.monotonic() + timeout
        status = self.status()
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(poll)
        raise TimeoutError(f"timed out waiting for {what}; last status {status}\nlog tail:\n{self.log_text()[-3000:]}")


NODE_TEST_CONFIG = """
node:
  ae_title: ISONODE
  max_pdu_size: 131072
storage:
  min_free_mb: {min_free_mb}
series:
  completion_timeout_s: {completion_timeout_s}
  complete_on_release: {complete_on_release}
processing:
  retry_backoff_s: 0.2
logging:
  level: INFO
web:
  enabled: {web_enabled}
  port: {web_port}
"""
# Most node tests need one processing job per series version, and the fast one: the preview.
PREVIEW_ONLY_ROUTING = """
routing:
  rules:
    - {name: tests-preview-only, modes: [preview]}
"""


def write_node_config(path: Path, *, completion_timeout_s: float = 1.0, min_free_mb: int = 64, extra: str = "",
                      routing: str = PREVIEW_ONLY_ROUTING, complete_on_release: bool = True,
                      web_port: int | None = None) -> Path:
    """The test node's config; `routing=""` gives the product's default (preview then full for CT); the
    web page only where a test asks for it (`web_port`), so parallel nodes never compete for its port."""
    path.write_text(NODE_TEST_CONFIG.format(completion_timeout_s=completion_timeout_s, min_free_mb=min_free_mb,
                                            complete_on_release=str(complete_on_release).lower(),
                                            web_enabled=str(web_port is not None).lower(), web_port=web_port or 8080)
                    + routing + extra)
    return path


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator:
    nodes: list[NodeProcess] = []

    def make(**config_kwargs) -> NodeProcess:
        idx = len(nodes)
        cfg = write_node_config(tmp_path / f"node{idx}.yaml", **config_kwargs)
        node = NodeProcess(data_dir=tmp_path / "data", port=free_port(), config_path=cfg,
                           log_path=tmp_path / f"node{idx}.log")
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def node(node_factory) -> NodeProcess:
    return node_factory().start()


# storescu proposes a compressed transfer syntax only when told which one (and sends it as is with -R).
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2": "-xi", "1.2.840.10008.1.2.1": "-xe", "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd", "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr",
}


def storescu_flag_for(path: Path) -> str | None:
    import pydicom

    try:
        ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    except Exception:
        return None
    return STORESCU_PROPOSE.get(ts)


def storescu(port: int, *files: Path, extra: tuple[str, ...] = (), timeout: float = 300,
             aet: str = "TESTSCU") -> subprocess.CompletedProcess:
    """DCMTK storescu sending `files` (all in one transfer syntax) on one association, as they are (-R)."""
    flag = storescu_flag_for(files[0]) if files else None
    return subprocess.run(
        [require_tool("storescu"), "-v", "-R", *([flag] if flag else []), "-aec", NODE_AE, "-aet", aet, *extra,
         "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=timeout,
    )


def echoscu(port: int, aec: str = NODE_AE, aet: str = "TESTSCU") -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("echoscu"), "-aec", aec, "-aet", aet, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


def store_responses(storescu_output: str) -> list[tuple[str, str]]:
    """(file sent, response) pairs from `storescu -v` output, in order; response '' if none arrived."""
    pairs: list[list[str]] = []
    for line in storescu_output.splitlines():
        if line.startswith("I: Sending file: "):
            pairs.append([line.removeprefix("I: Sending file: ").strip(), ""])
        elif line.startswith("I: Received Store Response") and pairs:
            pairs[-1][1] = line.removeprefix("I: Received Store Response").strip()
    return [(f, r) for f, r in pairs]


@dataclass
class OrthancProcess:
    """Debian's Orthanc as the PACS, on free ports with a generated config; REST helpers for the tests."""

    workdir: Path
    dicom_port: int
    http_port: int
    aet: str = "ORTHANC"
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> OrthancProcess:
        import urllib.request

        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {"Name": "isonode-tests", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
                  "DicomAet": self.aet, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True,
                  "DicomModalities": {k: list(v) for k, v in self.modalities.items()}, "Plugins": [],
                  "DicomScpTimeout": 30, "StableAge": 1}
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(config))
        log = (self.workdir / "orthanc.log").open("ab")
        self.proc = subprocess.Popen([require_tool("Orthanc"), str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "TCP_NODELAY": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(f"{self.url}/system", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("Orthanc did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str):  # noqa: ANN201 - parsed JSON
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def get_bytes(self, path: str) -> bytes:
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return r.read()

    def post(self, path: str, body: bytes | dict | list):  # noqa: ANN201 - parsed JSON
        import urllib.request

        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read() or b"null")

    def instances_by_class(self) -> dict[str, list[str]]:
        """SOP class UID -> Orthanc instance ids of everything stored."""
        out: dict[str, list[str]] = {}
        for iid in self.get("/instances"):
            tags = self.get(f"/instances/{iid}/simplified-tags")
            out.setdefault(tags.get("SOPClassUID", ""), []).append(iid)
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator:
    started: list[OrthancProcess] = []

    def make(**kwargs) -> OrthancProcess:
        o = OrthancProcess(workdir=tmp_path / f"orthanc{len(started)}", dicom_port=kwargs.pop("dicom_port", None)
                           or free_port(), http_port=free_port(), **kwargs)
        started.append(o)
        return o

    yield make
    for o in started:
        o.stop()


def make_test_pki(folder: Path, signed: Sequence[str]) -> dict[str, Path]:
    """A test CA, a certificate it signed for each name in `signed` (naming 127.0.0.1 only as the DNS name
    pacs.example, as a site might get it wrong), and a stranger's self-signed one; keys `<name>_pem`,
    `<name>_key`, `ca_pem`."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=isonode test CA",
            "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.pem"))
    for name in signed:
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(folder / f"{name}.key"),
                "-out", str(folder / f"{name}.csr"))
        (folder / f"{name}.ext").write_text("subjectAltName=DNS:pacs.example\n")
        openssl("x509", "-req", "-in", str(folder / f"{name}.csr"), "-CA", str(folder / "ca.pem"), "-CAkey",
                str(folder / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(folder / f"{name}.ext"),
                "-out", str(folder / f"{name}.pem"))
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=stranger",
            "-keyout", str(folder / "stranger.key"), "-out", str(folder / "stranger.pem"))
    return {p.stem + p.suffix.replace(".", "_"): p for p in folder.iterdir()}


def wait_until(predicate, timeout: float = 10.0, what: str = "condition", poll: float = 0.1):  # noqa: ANN001, ANN201
    """Until `predicate()` is truthy, which is returned; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out waiting for {what}")


def send_raw_c_store(assoc, sop_class: str, sop_instance: str, payload: bytes,  # noqa: ANN001 - Association
                     timeout: float) -> int | None:
    """A C-STORE whose data set is exactly `payload`, sent on an established association: pynetdicom's DIMSE
    layer fragments the bytes as they are, never decoding or re-encoding them. The status, or None if the
    peer aborted; ValueError if pynetdicom will not encode such a command UID, TimeoutError without either."""
    from io import BytesIO

    from pynetdicom.dimse_primitives import C_STORE

    # pause the association's reactor so it cannot take the response off the queue before we do
    # (what pynetdicom's send_* methods do internally)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        req = C_STORE()
        req.MessageID = 1
        req.AffectedSOPClassUID = sop_class
        req.AffectedSOPInstanceUID = sop_instance
        req.Priority = 2
        req.DataSet = BytesIO(payload)
        assoc.dimse.send_msg(req, assoc.accepted_contexts[0].context_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, rsp = assoc.dimse.get_msg(block=False)
            if rsp is not None:
                return int(rsp.Status)
            if not assoc.dul.is_alive() or assoc.dul.state_machine.current_state == "Sta1":
                return None
            time.sleep(0.0005)
        raise TimeoutError(f"no C-STORE response and no abort within {timeout} s")
    finally:
        assoc._reactor_checkpoint.set()

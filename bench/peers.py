"""What every benchmark needs to run DICOM peers side by side: free loopback ports and a C-ECHO wait."""

from __future__ import annotations

import os
import socket
import subprocess
import time

ENV = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK and Orthanc crawl on loopback without it (Nagle)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_echo(port: int, aec: str, proc: subprocess.Popen, timeout: float = 120.0,
                  aet: str = "BENCHSCU") -> None:
    """Until the server started as `proc` answers C-ECHO on `port`; raises if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before answering C-ECHO")
        r = subprocess.run(["echoscu", "-aet", aet, "-aec", aec, "127.0.0.1", str(port)], capture_output=True,
                           env=ENV)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing answered C-ECHO on port {port}")

"""Durable storage of received instances as Part-10 files.

An instance is acknowledged only after `store_durably` returns: the bytes are written to a temp file in
the target directory, fsynced, renamed into place and the directory entry fsynced. A crash before the
rename leaves only a `*.tmp` file, which `recover` removes at start-up (that instance was never
acknowledged, so the sender still has it).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dicom_node.logfmt import log_event

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class InvalidUIDError(ValueError):
    """A UID that cannot be used as a file name (and is not a conformant DICOM UID)."""


def check_uid(value: str, what: str) -> str:
    """Return the UID stripped of padding, or raise naming the attribute; UIDs become path components."""
    uid = (value or "").strip().rstrip("\x00").strip()
    if not uid:
        raise InvalidUIDError(f"{what} is missing or empty")
    if len(uid) > 64 or not _UID_RE.match(uid):
        raise InvalidUIDError(f"{what} is not a valid UID (digits and dots, at most 64 characters)")
    return uid


@dataclass(frozen=True)
class SpoolLayout:
    """Where instances live: <root>/<study UID>/<series UID>/<SOP instance UID>.dcm."""

    root: Path

    def instance_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        return self.root / study_uid / series_uid / f"{sop_instance_uid}.dcm"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs_durably(path: Path) -> None:
    """mkdir -p, fsyncing each parent whose entry we created so the new directories survive a crash."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(d.parent)


def write_temp(path: Path, chunks: bytes | memoryview | list[bytes | memoryview], *, fsync: bool = True,
               ) -> tuple[Path, int]:
    """Write the chunks durably to a temp file beside `path`; (the temp file, bytes written). `place` puts
    it at `path`: the slow part (write, fsync) runs before any lock a caller takes around placing it."""
    _make_dirs_durably(path.parent)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident():x}{TMP_SUFFIX}")
    parts = chunks if isinstance(chunks, list) else [chunks]
    size = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                n = os.write(fd, view)
                size += n
                view = view[n:]
        if fsync:
            os.fdatasync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp, size


def place(tmp: Path, path: Path, *, fsync: bool = True) -> None:
    """Rename a temp file from `write_temp` into place, atomically, and make the rename durable."""
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)


def store_durably(path: Path, chunks: bytes | memoryview | list[bytes | memoryview], *, fsync: bool = True) -> int:
    """Write the chunks to `path` atomically and durably; return the number of bytes written."""
    tmp, size = write_temp(path, chunks, fsync=fsync)
    try:
        place(tmp, path, fsync=fsync)
    finally:
        tmp.unlink(missing_ok=True)
    return size


def free_bytes(path: Path) -> int:
    """Free space on the file system holding `path` (the nearest existing parent)."""
    p = Path(path)
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def iter_instance_files(root: Path) -> Iterator[Path]:
    """Every stored Part-10 file under the spool, for reconciling the index after a crash."""
    if root.exists():
        yield from root.glob("*/*/*.dcm")


def remove_temp_files(root: Path) -> int:
    """Delete half-written files left by a crash; none of them was acknowledged."""
    count = 0
    if root.exists():
        for tmp in root.glob(f"*/*/*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            count += 1
    if count:
        log_event(logger, "spool.recovered_temp_files", count=count)
    return count

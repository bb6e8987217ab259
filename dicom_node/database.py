"""One SQLite database (WAL) shared by the instance index, the job queue and later the outbox.

Every state change is one transaction, so a crash leaves either the old or the new state. WAL with
synchronous=NORMAL: a killed process loses no committed transaction (the WAL is in the OS cache); a power
cut may roll back the last commits, which start-up recovery rebuilds from the spool (the files, fsynced
before every acknowledgement, are the record of what was received; see dicom_node.recovery). Connections are
per thread: SQLite serialises writers itself, and `BEGIN IMMEDIATE` takes the write lock up front so two
writers never deadlock on a lock upgrade.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_S = 30.0


class Database:
    """A SQLite file opened in WAL mode, with a connection per thread."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous
        self._local = threading.local()
        self._schema_lock = threading.Lock()
        with self.transaction() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_parts (name TEXT PRIMARY KEY, version INTEGER)")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @property
    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the body as one write transaction; roll back on any exception."""
        conn = self.connection
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def ensure_schema(self, name: str, version: int, ddl: str) -> None:
        """Create a component's tables once; each component owns its DDL (idempotent statements) and version."""
        if not re.fullmatch(r"[a-z_]+", name):
            raise ValueError(f"schema part name {name!r} must be lower-case letters and underscores")
        with self._schema_lock:
            conn = self.connection
            row = conn.execute("SELECT version FROM schema_parts WHERE name = ?", (name,)).fetchone()
            if row is not None and row["version"] == version:
                return
            if row is not None and row["version"] > version:
                raise RuntimeError(
                    f"database {self.path} has schema {name} v{row['version']}, newer than this software (v{version})"
                )
            # executescript commits any open transaction first, so the DDL and its version row form their
            # own explicit transaction.
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{ddl};\nINSERT INTO schema_parts (name, version) VALUES ('{name}', {int(version)}) "
                "ON CONFLICT(name) DO UPDATE SET version = excluded.version;\nCOMMIT;"
            )

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

"""Durable outbox: result files delivered to PACS destinations by C-STORE, with retries.

One row per (file, destination) in the node's SQLite database. A row changes state only after the
destination answered, or by policy (expiry, a file gone from disk), so a crash at any moment leaves every
unacknowledged row pending and it is sent again after restart: delivery is at-least-once, with the same SOP
Instance UID, which a PACS treats as the same object. An abort, a timeout or a missing response is never
taken as delivery (pynetdicom 3.0.4 sometimes aborts its own sending association: see FACTS.md).

Sending runs in one thread per destination, so a destination that is down or hangs delays only its own
rows, never another destination's and never reception (the SCP has its own threads).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, evt
from pynetdicom.association import Association

from dicom_node.clock import Clock
from dicom_node.database import Database
from dicom_node.logfmt import log_event
from dicom_node.part10 import IMPLEMENTATION_CLASS_UID
from dicom_node.requestor import leave_responses_to_the_sender
from dicom_node.sockets import set_tcp_nodelay
from dicom_node.tls import ClientTls, TlsConfigError, handshake_reason, on_handshake_failure

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    ae_title TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    relpath TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    job_id INTEGER,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    status_failures INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    pending_since REAL NOT NULL,
    last_error TEXT,
    last_status INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, destination, priority, id);
CREATE INDEX IF NOT EXISTS outbox_age ON outbox (state, pending_since);
CREATE INDEX IF NOT EXISTS outbox_by_job ON outbox (job_id)
"""

OUTBOX_STATES = ("pending", "done", "failed")
PRIORITY_PREVIEW = 0
PRIORITY_FULL = 1

STATUS_SUCCESS = 0x0000
# Storage warnings (PS3.4 B.2.3): the object was stored, possibly coerced; that is a delivery.
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})
MAX_PRESENTATION_CONTEXTS = 128


@dataclass(frozen=True)
class Destination:
    """A C-STORE SCP the node delivers to; `name` is the configuration's key for it.

    Rows store the address, not the TLS settings: the sender asks `Outbox.tls_for(name)` at each
    connection, so rows pending across a restart use the destination's TLS as configured now, and rows
    of a name no longer configured go as they always did (plain TCP to the stored address).
    """

    name: str
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class OutboxFile:
    """A result file to deliver; `relpath` is relative to the Outbox's root directory."""

    relpath: str
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Delivery:
    """One row: one file to one destination (`destination` is its name; `target` the whole address)."""

    id: int
    destination: str
    ae_title: str
    host: str
    port: int
    relpath: str
    sop_class_uid: str
    sop_instance_uid: str
    job_id: int | None
    priority: int
    state: str
    attempts: int
    status_failures: int
    next_attempt_at: float
    pending_since: float
    last_error: str | None
    last_status: int | None
    created_at: float
    updated_at: float
    delivered_at: float | None

    @property
    def target(self) -> Destination:
        return Destination(self.destination, self.ae_title, self.host, self.port)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff doubles per undelivered attempt up to a cap; only Failure statuses can end a row `failed`."""

    backoff_base_s: float = 5.0
    backoff_cap_s: float = 600.0
    max_status_failures: int = 5

    def delay(self, attempts: int) -> float:
        return min(self.backoff_cap_s, self.backoff_base_s * 2 ** max(attempts - 1, 0))


@dataclass(frozen=True)
class RetryOutcome:
    id: int
    state: str
    attempts: int
    delay_s: float


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=row["id"],
        destination=row["destination"],
        ae_title=row["ae_title"],
        host=row["host"],
        port=row["port"],
        relpath=row["relpath"],
        sop_class_uid=row["sop_class_uid"],
        sop_instance_uid=row["sop_instance_uid"],
        job_id=row["job_id"],
        priority=row["priority"],
        state=row["state"],
        attempts=row["attempts"],
        status_failures=row["status_failures"],
        next_attempt_at=row["next_attempt_at"],
        pending_since=row["pending_since"],
        last_error=row["last_error"],
        last_status=row["last_status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        delivered_at=row["delivered_at"],
    )


def _check_relpath(relpath: str) -> str:
    p = PurePosixPath(relpath)
    if not relpath or p.is_absolute() or ".." in p.parts or "\\" in relpath:
        raise ValueError(f"outbox file path {relpath!r} must be relative to the results root, without '..'")
    return str(p)


_DEST_WHERE = "destination = ? AND ae_title = ? AND host = ? AND port = ?"


def _dest_params(d: Destination) -> tuple[str, str, str, int]:
    return (d.name, d.ae_title, d.host, d.port)


class Outbox:
    """The durable rows and their state transitions; `OutboxSender` does the network part. `clock` stamps
    the rows its own methods change (the node's steady clock, the one backoff and expiry measure with)."""

    def __init__(self, db: Database, root: Path, *, clock: Clock = time.time,
                 tls_for: Callable[[str], ClientTls | None] = lambda name: None) -> None:
        self.db = db
        self.clock = clock
        self.root = Path(root)
        self.tls_for = tls_for  # destination name -> its TLS settings now (None: plain TCP)
        self._listeners: list[Callable[[], None]] = []
        db.ensure_schema("outbox", SCHEMA_VERSION, SCHEMA)

    # --- enqueue -------------------------------------------------------------------------------------------

    @staticmethod
    def enqueue_in(conn: sqlite3.Connection, *, destination: Destination, files: Iterable[OutboxFile],
                   job_id: int | None, priority: int, now: float) -> list[int]:
        """Add rows inside the caller's transaction, so e.g. a job's completion and its deliveries commit
        together. Call `notify()` after the commit so the sender looks at once."""
        ids = []
        for f in files:
            cur = conn.execute(
                "INSERT INTO outbox (destination, ae_title, host, port, relpath, sop_class_uid, sop_instance_uid,"
                " job_id, priority, state, next_attempt_at, pending_since, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                (*_dest_params(destination), _check_relpath(f.relpath), str(f.sop_class_uid),
                 str(f.sop_instance_uid), job_id, int(priority), now, now, now, now),
            )
            ids.append(int(cur.lastrowid))
        return ids

    def enqueue(self, *, destination: Destination, files: Iterable[OutboxFile], job_id: int | None = None,
                priority: int = PRIORITY_FULL) -> list[int]:
        """Add rows in their own transaction and wake the sender."""
        with self.db.transaction() as conn:
            ids = self.enqueue_in(conn, destination=destination, files=files, job_id=job_id,
                                  priority=priority, now=self.clock())
        self.notify()
        return ids

    def add_listener(self, callback: Callable[[], None]) -> None:
        """`callback` runs on `notify()` (the sender registers its wake-up here)."""
        self._listeners.append(callback)

    def notify(self) -> None:
        """New rows were committed: wake the sender so a preview leaves within milliseconds."""
        for callback in list(self._listeners):
            callback()

    # --- what to send --------------------------------------------------------------------------------------

    def pending_destinations(self) -> list[Destination]:
        rows = self.db.connection.execute(
            "SELECT DISTINCT destination, ae_title, host, port FROM outbox WHERE state = 'pending'"
        ).fetchall()
        return [Destination(r["destination"], r["ae_title"], r["host"], r["port"]) for r in rows]

    def due(self, destination: Destination, *, now: float, limit: int,
            max_age_s: float | None = None) -> list[Delivery]:
        """Pending rows of one destination whose backoff has elapsed, preview first, then oldest first."""
        min_since = -1.0 if max_age_s is None else now - max_age_s
        rows = self.db.connection.execute(
            f"SELECT * FROM outbox WHERE state = 'pending' AND {_DEST_WHERE} AND next_attempt_at <= ?"
            " AND pending_since >= ? ORDER BY priority, id LIMIT ?",
            (*_dest_params(destination), now, min_since, limit),
        ).fetchall()
        return [_delivery(r) for r in rows]

    def has_due_before(self, destination: Destination, *, priority: int, now: float) -> bool:
        """Whether a more urgent row is waiting (a preview queued while a batch of full results is going)."""
        row = self.db.connection.execute(
            f"SELECT 1 FROM outbox WHERE state = 'pending' AND {_DEST_WHERE} AND next_attempt_at <= ?"
            " AND priority < ? LIMIT 1",
            (*_dest_params(destination), now, priority),
        ).fetchone()
        return row is not None

    def path_of(self, delivery: Delivery) -> Path:
        return self.root / delivery.relpath

    # --- transitions (each one transaction, made only after the destination answered or by policy) -------

    def record_delivered(self, delivery_id: int, status: int, *, now: float) -> None:
        """The destination acknowledged (Success or Warning): done, whatever happened to the row meanwhile."""
        note = None if status == STATUS_SUCCESS else f"stored with warning status 0x{status:04X}"
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'done', last_status = ?, last_error = ?, delivered_at = ?,"
                " updated_at = ? WHERE id = ?",
                (status, note, now, now, delivery_id),
            )

    def record_retry(self, ids: Iterable[int], *, reason: str, policy: RetryPolicy, now: float,
                     status: int | None = None, status_failure: bool = False) -> list[RetryOutcome]:
        """Count an undelivered attempt and back off; a row ends `failed` only after enough Failure statuses
        (a destination that is down is retried until the row expires)."""
        out = []
        with self.db.transaction() as conn:
            for delivery_id in ids:
                row = conn.execute("SELECT attempts, status_failures FROM outbox WHERE id = ? AND state = 'pending'",
                                   (delivery_id,)).fetchone()
                if row is None:
                    continue
                attempts = row["attempts"] + 1
                failures = row["status_failures"] + (1 if status_failure else 0)
                give_up = status_failure and failures >= policy.max_status_failures
                state = "failed" if give_up else "pending"
                delay = 0.0 if give_up else policy.delay(attempts)
                error = f"{reason} (gave up after {failures} failure statuses)" if give_up else reason
                conn.execute(
                    "UPDATE outbox SET state = ?, attempts = ?, status_failures = ?, next_attempt_at = ?,"
                    " last_error = ?, last_status = COALESCE(?, last_status), updated_at = ? WHERE id = ?",
                    (state, attempts, failures, now + delay, error[:2000], status, now, delivery_id),
                )
                out.append(RetryOutcome(delivery_id, state, attempts, delay))
        return out

    def record_failed(self, delivery_id: int, reason: str, *, now: float) -> bool:
        """Fail a pending row at once (its file is gone or unreadable: sending again cannot help)."""
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE outbox SET state = 'failed', last_error = ?, updated_at = ? WHERE id = ? AND state = 'pending'",
                (reason[:2000], now, delivery_id),
            )
            return cur.rowcount == 1

    def expire(self, max_age_s: float, *, now: float) -> dict[str, list[int]]:
        """Fail rows pending longer than `max_age_s` (policy: a result nobody received for days is stale and
        an operator should see it). Returns the expired ids by destination name."""
        cutoff = now - max_age_s
        conn = self.db.connection
        if conn.execute("SELECT 1 FROM outbox WHERE state = 'pending' AND pending_since < ? LIMIT 1",
                        (cutoff,)).fetchone() is None:
            return {}  # the common case costs a read, not a write lock
        expired: dict[str, list[int]] = {}
        with self.db.transaction() as conn:
            rows = conn.execute("SELECT id, destination, pending_since, last_error FROM outbox"
                                " WHERE state = 'pending' AND pending_since < ?", (cutoff,)).fetchall()
            for r in rows:
                reason = f"expired: pending {now - r['pending_since']:.0f} s, longer than max_age_s={max_age_s:g}"
                if r["last_error"]:
                    reason += f"; last error: {r['last_error']}"
                conn.execute("UPDATE outbox SET state = 'failed', last_error = ?, updated_at = ? WHERE id = ?",
                             (reason[:2000], now, r["id"]))
                expired.setdefault(r["destination"], []).append(r["id"])
        return expired

    # --- operator API --------------------------------------------------------------------------------------

    def retry(self, delivery_id: int) -> bool:
        """Operator action: a failed row goes back to pending with fresh attempts and a fresh age, due at
        once (0, not 'now': the CLI's clock may be ahead of the running node's after a wall-clock step)."""
        now = self.clock()
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, status_failures = 0, next_attempt_at = 0,"
                " pending_since = ?, updated_at = ? WHERE id = ? AND state = 'failed'",
                (now, now, delivery_id),
            )
        if cur.rowcount == 1:
            self.notify()
        return cur.rowcount == 1

    def get(self, delivery_id: int) -> Delivery | None:
        row = self.db.connection.execute("SELECT * FROM outbox WHERE id = ?", (delivery_id,)).fetchone()
        return None if row is None else _delivery(row)

    def counts(self) -> dict[str, int]:
        """Rows per state, over all destinations."""
        counts = dict.fromkeys(OUTBOX_STATES, 0)
        for row in self.db.connection.execute("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state"):
            counts[row["state"]] = row["n"]
        return counts

    def counts_by_destination(self) -> dict[str, dict[str, int]]:
        """Rows per state for each destination name."""
        out: dict[str, dict[str, int]] = {}
        for row in self.db.connection.execute(
            "SELECT destination, state, COUNT(*) AS n FROM outbox GROUP BY destination, state"
        ):
            out.setdefault(row["destination"], dict.fromkeys(OUTBOX_STATES, 0))[row["state"]] = row["n"]
        return out

    def list(self, state: str | None = None, limit: int = 100, *,
             destination: str | None = None) -> list[Delivery]:
        """Newest rows first, optionally of one state and/or one destination name."""
        where, params = [], []
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if destination is not None:
            where.append("destination = ?")
            params.append(destination)
        sql = "SELECT * FROM outbox" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self.db.connection.execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [_delivery(r) for r in rows]


@dataclass(frozen=True)
class SenderSettings:
    calling_ae_title: str = "ISONODE"
    batch_size: int = 100
    poll_interval_s: float = 0.25
    max_age_s: float | None = 7 * 86400.0
    connect_timeout_s: float = 10.0
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    max_pdu_size: int = 131072


@dataclass
class _Item:
    delivery: Delivery
    path: Path
    context: tuple[str, str]


class OutboxSender:
    """Delivers pending rows: a supervisor thread (expiry, finds destinations) and one worker per destination.

    Only one sender should run on a database (rows are not leased; a second sender would send duplicates,
    which at-least-once delivery tolerates but nobody wants). `clock` times backoff and expiry, and its
    destination workers use it too: a wall-clock step must neither expire every row nor stall retries.
    """

    def __init__(self, outbox: Outbox, *, calling_ae_title: str = "ISONODE", batch_size: int = 100,
                 poll_interval_s: float = 0.25, backoff_base_s: float = 5.0, backoff_cap_s: float = 600.0,
                 max_status_failures: int = 5, max_age_s: float | None = 7 * 86400.0,
                 connect_timeout_s: float = 10.0, acse_timeout_s: float = 30.0, dimse_timeout_s: float = 60.0,
                 network_timeout_s: float = 60.0, max_pdu_size: int = 131072,
                 clock: Clock = time.time,
                 on_sent: Callable[[Destination, list[str]], None] | None = None) -> None:
        if batch_size < 1 or max_status_failures < 1:
            raise ValueError("batch_size and max_status_failures must be at least 1")
        self.outbox = outbox
        self.clock = clock
        self.on_sent = on_sent  # (destination, SOP Instance UIDs acknowledged on one association): the audit
        self.policy = RetryPolicy(backoff_base_s, backoff_cap_s, max_status_failures)
        self.settings = SenderSettings(
            calling_ae_title=calling_ae_title, batch_size=batch_size, poll_interval_s=poll_interval_s,
            max_age_s=max_age_s, connect_timeout_s=connect_timeout_s, acse_timeout_s=acse_timeout_s,
            dimse_timeout_s=dimse_timeout_s, network_timeout_s=network_timeout_s, max_pdu_size=max_pdu_size,
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._workers: dict[Destination, _DestinationWorker] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        outbox.add_listener(self.notify)

    def start(self) -> OutboxSender:
        self._thread = threading.Thread(target=self._supervise, name="outbox", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop all threads; an association in flight is aborted and its row left pending (sent again later)."""
        self._stop.set()
        self.notify()
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            w.abort_current()
        deadline = time.monotonic() + timeout
        for t in [self._thread, *workers]:
            if t is not None:
                t.join(max(deadline - time.monotonic(), 0.0))

    def notify(self) -> None:
        """Look for due rows now instead of at the next poll."""
        self._wake.set()
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            w.wake.set()

    @property
    def destinations(self) -> list[Destination]:
        """Destinations that have a worker thread."""
        with self._lock:
            return list(self._workers)

    def __enter__(self) -> OutboxSender:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _supervise(self) -> None:
        s = self.settings
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    if s.max_age_s is not None:
                        for name, ids in self.outbox.expire(s.max_age_s, now=self.clock()).items():
                            log_event(logger, "outbox.expired", level=logging.WARNING, destination=name,
                                      count=len(ids), ids=ids[:20], max_age_s=s.max_age_s)
                    for dest in self.outbox.pending_destinations():
                        self._ensure_worker(dest)
                except Exception:
                    logger.exception("outbox.supervisor_error")
                self._wake.wait(s.poll_interval_s)
        finally:
            self.outbox.db.close()

    def _ensure_worker(self, dest: Destination) -> None:
        with self._lock:
            if dest in self._workers or self._stop.is_set():
                return
            worker = _DestinationWorker(self, dest)
            self._workers[dest] = worker
        worker.start()


class _DestinationWorker(threading.Thread):
    """Sends one destination's rows, a batch per association, preview rows first."""

    def __init__(self, sender: OutboxSender, dest: Destination) -> None:
        super().__init__(name=f"outbox-{dest.name}", daemon=True)
        self.sender = sender
        self.outbox = sender.outbox
        self.clock = sender.clock
        self.dest = dest
        self.wake = threading.Event()
        self._assoc: Association | None = None
        self._last_check = 0.0
        self._acknowledged: set[int] = set()  # delivery ids acknowledged on the current association

    def abort_current(self) -> None:
        assoc = self._assoc
        if assoc is not None and assoc.is_established:
            assoc.abort()

    def run(self) -> None:
        stop, poll = self.sender._stop, self.sender.settings.poll_interval_s
        try:
            while not stop.is_set():
                self.wake.clear()
                try:
                    worked = self._send_batch()
                except Exception:
                    logger.exception("outbox.worker_error")
                    worked = False
                if not worked:
                    self.wake.wait(poll)
        finally:
            self.outbox.db.close()

    def _log_failed(self, d: Delivery, reason: str, status: int | None = None) -> None:
        log_event(logger, "outbox.failed", level=logging.ERROR, id=d.id, destination=self.dest.name,
                  ae_title=self.dest.ae_title, sop_instance_uid=d.sop_instance_uid, job=d.job_id,
                  status=None if status is None else f"0x{status:04X}", reason=reason)

    def _fail(self, d: Delivery, reason: str) -> None:
        if self.outbox.record_failed(d.id, reason, now=self.clock()):
            self._log_failed(d, reason)

    def _prepare(self, rows: list[Delivery]) -> list[_Item]:
        """Read each file's meta (cheap); files that cannot be sent fail now, with the reason."""
        items: list[_Item] = []
        contexts: set[tuple[str, str]] = set()
        for d in rows:
            path = self.outbox.path_of(d)
            try:
                meta = read_file_meta_info(path)
                ts = str(meta.TransferSyntaxUID)
                sop_class = str(meta.get("MediaStorageSOPClassUID", d.sop_class_uid))
            except FileNotFoundError:
                self._fail(d, f"file missing: {d.relpath}")
                continue
            except (OSError, InvalidDicomError, AttributeError, ValueError) as exc:
                self._fail(d, f"file unreadable: {d.relpath}: {type(exc).__name__}: {exc}")
                continue
            context = (sop_class, ts)
            if context not in contexts and len(contexts) >= MAX_PRESENTATION_CONTEXTS:
                break  # the rest goes in the next association
            contexts.add(context)
            items.append(_Item(d, path, context))
        return items

    def _associate(self, items: list[_Item]) -> tuple[Association, str]:
        """Open a fresh association proposing each file's own SOP class and transfer syntax, over TLS when
        the destination is configured with it; on failure the second value says why. TlsConfigError when
        the destination's TLS files cannot be used (nothing was sent)."""
        s = self.sender.settings
        tls = self.outbox.tls_for(self.dest.name)
        handshake: list[OSError] = []
        tls_args = None
        if tls is not None:
            tls_args = (on_handshake_failure(tls.context(), handshake.append), self.dest.host)
        ae = AE(ae_title=s.calling_ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.connection_timeout = s.connect_timeout_s
        ae.acse_timeout = s.acse_timeout_s
        ae.dimse_timeout = s.dimse_timeout_s
        ae.network_timeout = s.network_timeout_s
        ae.maximum_pdu_size = s.max_pdu_size
        for sop_class, ts in dict.fromkeys(it.context for it in items):
            ae.add_requested_context(sop_class, ts)
        seen: dict[str, str] = {}

        def on_open(event: evt.Event) -> None:
            seen["connected"] = "yes"
            set_tcp_nodelay(event)

        def on_acse(event: evt.Event) -> None:
            rsp = event.primitive
            if getattr(rsp, "result", None) in (0x01, 0x02):
                seen["rejected"] = f"{rsp.result_str}, {rsp.source_str}: {rsp.reason_str}"

        assoc = ae.associate(self.dest.host, self.dest.port, ae_title=self.dest.ae_title, max_pdu=s.max_pdu_size,
                             evt_handlers=[(evt.EVT_CONN_OPEN, on_open), (evt.EVT_ACSE_RECV, on_acse)],
                             tls_args=tls_args)
        if assoc.is_established:
            leave_responses_to_the_sender(assoc)
            return assoc, ""
        if handshake:
            return assoc, handshake_reason(handshake[0])
        if "connected" not in seen:
            return assoc, "could not connect (connection refused or timed out)"
        if assoc.is_rejected:
            return assoc, f"association rejected ({seen.get('rejected', 'no reason given')})"
        return assoc, "association aborted or timed out during negotiation"

    def _fail_unusable_tls(self, rows: list[Delivery], problem: str) -> None:
        """The destination's TLS files cannot be used: its due rows fail at once (retryable once the files
        are fixed: they are read again at each connection), with one log line for them all."""
        reason = f"TLS settings of destination {self.dest.name!r} cannot be used: {problem}"
        failed = [d.id for d in rows if self.outbox.record_failed(d.id, reason, now=self.clock())]
        if failed:
            log_event(logger, "outbox.tls_unusable", level=logging.ERROR, destination=self.dest.name,
                      ae_title=self.dest.ae_title, count=len(failed), ids=failed[:20], reason=reason)

    def _retry(self, ids: list[int], reason: str, *, status: int | None = None, status_failure: bool = False,
               detail: str | None = None) -> None:
        """Record and log an undelivered attempt; the peer's free-text `detail` goes to the row, not the log."""
        stored = f"{reason}: {detail}" if detail else reason
        outcomes = self.outbox.record_retry(ids, reason=stored, policy=self.sender.policy, now=self.clock(),
                                            status=status, status_failure=status_failure)
        pending = [o for o in outcomes if o.state == "pending"]
        if pending:
            log_event(logger, "outbox.retry", level=logging.WARNING, destination=self.dest.name,
                      ae_title=self.dest.ae_title, count=len(pending), ids=[o.id for o in pending][:20],
                      reason=reason, status=None if status is None else f"0x{status:04X}",
                      attempts=max(o.attempts for o in pending), next_attempt_in_s=min(o.delay_s for o in pending))
        for o in outcomes:
            if o.state == "failed":
                d = self.outbox.get(o.id)
                if d is not None:
                    self._log_failed(d, f"{reason} (gave up after {d.status_failures} failure statuses)", status)

    def _preempted(self, next_priority: int) -> bool:
        """End the batch early when a more urgent row became due, so a preview never waits behind a batch."""
        now = time.monotonic()
        if not self.wake.is_set() and now - self._last_check < self.sender.settings.poll_interval_s:
            return False
        self.wake.clear()
        self._last_check = now
        return self.outbox.has_due_before(self.dest, priority=next_priority, now=self.clock())

    def _send_batch(self) -> bool:
        """One association for up to batch_size due rows; returns False when nothing was due."""
        s = self.sender.settings
        rows = self.outbox.due(self.dest, now=self.clock(), limit=s.batch_size, max_age_s=s.max_age_s)
        if not rows:
            return False
        items = self._prepare(rows)
        if not items:
            return True
        started = time.monotonic()
        try:
            assoc, reason = self._associate(items)
        except TlsConfigError as exc:
            self._fail_unusable_tls([it.delivery for it in items], str(exc))
            return True
        if not assoc.is_established:
            if not self.sender._stop.is_set():
                self._retry([it.delivery.id for it in items], reason)
            return True
        self._assoc = assoc
        self._last_check = time.monotonic()
        tally = {"done": 0, "warning": 0, "failure": 0, "not_delivered": 0, "bytes": 0}
        try:
            for n, it in enumerate(items):
                if self.sender._stop.is_set() or (n and self._preempted(it.delivery.priority)):
                    break
                if not self._send_one(assoc, it, n + 1, tally):
                    break
        finally:
            self._assoc = None
            if assoc.is_established and tally["not_delivered"]:
                assoc.abort()  # after a lost response the peer's state is unknown: do not wait on a release
            elif assoc.is_established:
                assoc.release()
        sent = [it.delivery.sop_instance_uid for it in items if it.delivery.id in self._acknowledged]
        self._acknowledged.clear()
        if sent and self.sender.on_sent is not None:
            try:
                self.sender.on_sent(self.dest, sent)
            except Exception:  # the audit must not stop deliveries
                logger.exception("outbox.on_sent_failed")
        log_event(logger, "outbox.delivered", destination=self.dest.name, ae_title=self.dest.ae_title,
                  done=tally["done"] + tally["warning"], warnings=tally["warning"], failures=tally["failure"],
                  not_delivered=tally["not_delivered"], bytes=tally["bytes"],
                  seconds=round(time.monotonic() - started, 3))
        return True

    def _send_one(self, assoc: Association, it: _Item, msg_id: int, tally: dict[str, int]) -> bool:
        """Send one file and record the answer; False when the association is gone (rest left untouched)."""
        d = it.delivery
        try:
            ds = dcmread(it.path)
        except FileNotFoundError:
            self._fail(d, f"file missing: {d.relpath}")
            return True
        except (OSError, InvalidDicomError, ValueError) as exc:
            self._fail(d, f"file unreadable: {d.relpath}: {type(exc).__name__}: {exc}")
            return True
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid != d.sop_instance_uid:
            self._fail(d, f"file {d.relpath} holds SOP Instance UID {uid or '(none)'}, not {d.sop_instance_uid}")
            return True
        try:
            rsp: Any = assoc.send_c_store(ds, msg_id=msg_id % 65536)
        except Exception as exc:
            if not assoc.is_established:
                rsp = None
            else:  # no accepted context for it, or it cannot be encoded: the peer never saw it
                tally["failure"] += 1
                self._retry([d.id], f"cannot send: {type(exc).__name__}: {exc}", status_failure=True)
                return True
        status = None if rsp is None else rsp.get("Status")
        if status is None:
            # Abort, DIMSE timeout or invalid response: NOT a delivery; this row backs off, the rest of the
            # batch stays due and goes on a fresh association.
            deadline = time.monotonic() + 1.0  # let pynetdicom's reactor take in an A-ABORT or a closed socket
            while assoc.is_established and time.monotonic() < deadline:
                time.sleep(0.005)
            if not self.sender._stop.is_set():
                tally["not_delivered"] += 1
                how = "association aborted or connection lost" if assoc.is_aborted else "no valid response"
                self._retry([d.id], f"C-STORE not acknowledged: {how}")
            return False
        status = int(status)
        if status == STATUS_SUCCESS or status in WARNING_STATUSES:
            self.outbox.record_delivered(d.id, status, now=self.clock())
            self._acknowledged.add(d.id)
            tally["warning" if status else "done"] += 1
            tally["bytes"] += it.path.stat().st_size if it.path.exists() else 0
        else:
            tally["failure"] += 1
            comment = rsp.get("ErrorComment")
            self._retry([d.id], f"C-STORE failure status 0x{status:04X}", status=status, status_failure=True,
                        detail=str(comment) if comment else None)
        return assoc.is_established

"""`isonode serve`: wires the database, the DICOM node, series completion and the workers together."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from appliance.completion import SeriesCompletion
from appliance.config import AppConfig, PeerConfig
from appliance.jobs import JobQueue
from appliance.outbox import Destination, Outbox, OutboxSender
from appliance.retention import SweepReport, sweep
from appliance.routing import Router
from appliance.runtime import Runtime, build_runtime
from appliance.worker import Worker, release_unfinished
from dicom_node.access import AccessPolicy, PeerRule
from dicom_node.audit import AuditTrail, Participant, ParticipantObject
from dicom_node.audit_syslog import SyslogForwarder
from dicom_node.catalog import StoredInstance
from dicom_node.clock import Clock, SteadyClock, stored_time_floor
from dicom_node.database import Database
from dicom_node.decoded_frames import DecodedFrames
from dicom_node.index import InstanceIndex
from dicom_node.logfmt import log_event
from dicom_node.qr_find import FindService
from dicom_node.qr_get import GetService
from dicom_node.qr_move import MoveService
from dicom_node.recovery import recover_catalog, recover_spool
from dicom_node.scp import DicomScp, QueryRetrieveServices, ScpSettings, spool_layout
from dicom_node.spool import store_durably
from dicom_node.tls import ClientTls, TlsSettings, client_context

if TYPE_CHECKING:
    from appliance.web.server import WebServer

logger = logging.getLogger(__name__)

COMPLETION_POLL_S = 0.5
RETENTION_INTERVAL_S = 600.0
RUNTIME_FILE = "runtime.json"  # what this node chose at start, for `isonode status` (another process)


class DataDirLockedError(RuntimeError):
    pass


def _lock_data_dir(data_dir: Path) -> int:
    """One server per data directory: two would both think they own every running job."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "isonode.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirLockedError(f"another isonode server is using {data_dir}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def scp_settings(config: AppConfig) -> ScpSettings:
    n = config.node
    return ScpSettings(
        ae_title=n.ae_title,
        bind_address=n.bind_address,
        port=n.port,
        max_pdu_size=n.max_pdu_size,
        access=access_policy(config),
        min_free_bytes=config.storage.min_free_mb * 1024 * 1024,
        max_dataset_bytes=config.storage.max_dataset_mb * 1024 * 1024,
        fsync=config.storage.fsync,
        maximum_associations=n.maximum_associations,
        max_associations_per_peer=n.max_associations_per_peer,
        dimse_timeout_s=n.dimse_timeout_s,
        network_timeout_s=n.network_timeout_s,
        poll_interval_s=n.poll_interval_ms / 1000.0,
        tls=None if n.tls is None else TlsSettings(n.tls.certificate, n.tls.private_key, n.tls.ca_certificates,
                                                   n.tls.require_peer_certificate),
        tls_port=None if n.tls is None else n.tls.port,
    )


def access_policy(config: AppConfig) -> AccessPolicy:
    def rules(peers: list[PeerConfig]) -> tuple[PeerRule, ...]:
        return tuple(PeerRule(p.ae_title, p.address) for p in peers)

    qr = config.query_retrieve
    return AccessPolicy(store=rules(config.node.allowed_peers),
                        query_retrieve=rules(qr.allowed_peers) if qr.enabled else ())


def query_retrieve_services(config: AppConfig, index: InstanceIndex) -> QueryRetrieveServices:
    """Q/R over the catalog; files resolve against the spool or the results folder, destinations come
    from the config (the same list the results go to), with their TLS settings."""
    roots = {"spool": config.spool_dir, "results": config.results_dir}

    def resolve_path(instance: StoredInstance) -> Path:
        return roots[instance.store] / instance.relpath

    def destination(ae_title: str) -> tuple[str, int, ClientTls | None] | None:
        d = config.destination_by_ae_title(ae_title)
        return None if d is None else (d.host, d.port, d.client_tls())

    return QueryRetrieveServices(
        find=FindService(index.db, config.node.ae_title),
        move=MoveService(index.catalog, resolve_path, destination),
        get=GetService(index.catalog, resolve_path),
    )


def audit_forwarder(config: AppConfig) -> SyslogForwarder | None:
    """The configured syslog copy of the audit trail (started here; the node stops it last)."""
    syslog = config.audit.syslog
    if syslog is None:
        return None
    tls = client_context(syslog.ca_certificates) if syslog.transport == "tls" else None
    return SyslogForwarder(syslog.host, syslog.port, config.node.ae_title, tls_context=tls).start()


def make_outbox(db: Database, config: AppConfig, clock: Clock = time.time) -> Outbox:
    """The outbox; a row finds its destination's TLS settings by name in the config at each connection."""

    def tls_for(name: str) -> ClientTls | None:
        d = config.destination(name)
        return None if d is None else d.client_tls()

    return Outbox(db, config.results_dir, clock=clock, tls_for=tls_for)


def anchored_clock(db: Database) -> SteadyClock:
    """The node's one clock, read before anything writes: never behind the newest stored time (a Jetson
    may boot in 1970 until NTP steps it), then monotonic, so a step while the node runs changes nothing."""
    clock = SteadyClock(stored_time_floor(db))
    if clock.anchor > clock.wall_at_anchor:
        log_event(logger, "clock.anchored", level=logging.WARNING, wall=clock.wall_at_anchor,
                  anchor=clock.anchor, behind_s=round(clock.anchor - clock.wall_at_anchor, 3),
                  note="the wall clock is behind the newest stored time: NTP not synced yet? "
                       "using the stored time")
    else:
        log_event(logger, "clock.anchored", wall=clock.wall_at_anchor, anchor=clock.anchor)
    return clock


class Node:
    """One appliance: the SCP receives, completion queues jobs by route, workers run the pipeline with the
    runtime chosen at start, the outbox sender delivers; all state in one SQLite database."""

    def __init__(self, config: AppConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self._lock_fd = _lock_data_dir(config.data_dir)
        self.db = Database(config.database_path)
        # every stored time, lease and deadline of this node; a test passes a clock it can step
        self.clock = anchored_clock(self.db) if clock is None else clock
        self.index = InstanceIndex(self.db, clock=self.clock)
        self.jobs = JobQueue(self.db, max_attempts=config.processing.max_attempts,
                             retry_backoff_s=config.processing.retry_backoff_s, clock=self.clock)
        self.outbox = make_outbox(self.db, config, self.clock)
        self.spool = spool_layout(config.spool_dir)
        self.router = Router(config, self.index, self.spool.root)
        self.work_ready = threading.Event()
        self.completion = SeriesCompletion(self.index, self.jobs, config.series, self.router.modes,
                                           on_queued=self.work_ready.set, clock=self.clock)
        self.decoded = DecodedFrames(config.processing.decoded_cache_mb * 1024 * 1024)
        self.syslog = audit_forwarder(config)
        self.audit = AuditTrail(self.db, clock=self.clock, forward=self.syslog)
        self.scp = DicomScp(scp_settings(config), self.spool, self.index, on_released=self._on_released,
                            decoded=self.decoded, query_retrieve=query_retrieve_services(config, self.index),
                            audit=self.audit)
        ob = config.outbox
        self.sender = OutboxSender(self.outbox, calling_ae_title=config.node.ae_title,
                                   backoff_base_s=ob.retry_base_s, backoff_cap_s=ob.retry_max_s,
                                   max_status_failures=ob.max_failure_statuses, max_age_s=ob.max_age_h * 3600.0,
                                   max_pdu_size=config.node.max_pdu_size, clock=self.clock,
                                   on_sent=self._audit_sent)
        self.runtime: Runtime | None = None
        self.workers: list[Worker] = []
        self.web: WebServer | None = None
        self._stop = threading.Event()

    def _audit_sent(self, destination: Destination, sop_instance_uids: list[str]) -> None:
        """Results acknowledged by a destination, per association, for the audit trail."""
        objects = []
        series = {r["series_uid"] for r in self.db.connection.execute(
            f"SELECT DISTINCT series_uid FROM catalog_instances WHERE sop_instance_uid IN"
            f" ({','.join('?' * len(sop_instance_uids))})", sop_instance_uids)}
        for series_uid in sorted(series):
            objects += [ParticipantObject("series", series_uid)]
        self.audit.record("results_sent", participants=[
            Participant(self.config.node.ae_title, "", True, "Source"),
            Participant(destination.ae_title, f"{destination.host}:{destination.port}", False, "Destination")],
            objects=objects, instances=len(sop_instance_uids), destination=destination.name)

    def _on_released(self, series_uids: set[str], calling_ae: str, called_ae: str) -> None:
        self.completion.complete_released(series_uids, calling_ae, called_ae)

    def recover(self) -> None:
        report = recover_spool(self.spool, self.index)
        catalogued = recover_catalog(self.index, self.spool.root, self.config.results_dir,
                                     self.jobs.done_result_dirs())
        requeued = self.jobs.requeue_running()
        log_event(logger, "node.recovered", temp_files_removed=report.temp_files_removed,
                  reindexed=report.reindexed, unreadable=report.unreadable, catalogued=catalogued,
                  jobs_requeued=requeued)

    def build_runtime(self) -> Runtime:
        """Choose the compute back ends once, at start, and say which and why (a forced one must work)."""
        p = self.config.processing
        runtime = build_runtime(p.bundle, inference=p.inference, precision=p.precision, mc_backend=p.backend,
                                threads=p.threads)
        info = runtime.describe() | {"pid": os.getpid(), "started_at": time.time(),
                                     "destinations": [d.model_dump() for d in self.config.destinations]}
        store_durably(self.config.data_dir / RUNTIME_FILE, json.dumps(info, indent=1).encode())
        return runtime

    def start(self) -> tuple[str, int]:
        """Recover (before anything writes), listen, then choose the backends: a first start that has to
        time the CPU precisions (seconds) already accepts studies, which queue until the workers run."""
        self.recover()
        self.audit.record("configuration_loaded", participants=[Participant(self.config.node.ae_title, "", True,
                                                                            "Application")],
                          sha256=hashlib.sha256(self.config.model_dump_json().encode()).hexdigest())
        address = self.scp.start()
        self.start_web()
        self.runtime = self.build_runtime()
        self.workers = [
            self._make_worker(f"worker-{i}") for i in range(self.config.processing.workers)
        ]
        for w in self.workers:
            w.start()
        self.sender.start()
        self.audit.record("application_start", participants=[Participant(self.config.node.ae_title, "", True,
                                                                         "Application")],
                          inference=self.runtime.describe_mode("full").get("inference"))
        if not self.config.destinations:
            log_event(logger, "node.no_destinations", level=logging.WARNING,
                      hint="results are kept under the data dir; add destinations (or --destination AE@HOST:PORT)")
        return address

    def start_web(self) -> None:
        """The bedside page, when configured. A port already in use leaves the node serving DICOM without
        the page (logged as an error); a bad token or certificate stops the start, naming the file."""
        if not self.config.web.enabled:
            return
        from appliance.web.server import WebServer  # web -> status -> node: imported when used

        self.web = WebServer(self.config, workers_alive=self._workers_alive, clock=self.clock, audit=self.audit)
        try:
            self.web.start()
        except OSError as exc:
            self.web = None
            log_event(logger, "web.not_started", level=logging.ERROR, port=self.config.web.port,
                      reason=exc.strerror or type(exc).__name__)

    def _evict_below_bytes(self) -> int:
        """Free space below which retention evicts delivered series: a margin above the refusal floor."""
        margin = self.config.retention.evict_margin_mb
        return (self.config.storage.min_free_mb + margin) * 1024 * 1024 if margin else 0

    def _workers_alive(self) -> tuple[int, int]:
        return sum(w.is_alive() for w in self.workers), self.config.processing.workers

    def _make_worker(self, name: str) -> Worker:
        return Worker(name, self.jobs, self.index, self.spool.root, self.config, self.runtime, self.router,
                      self.outbox, wake=self.work_ready, on_delivery_queued=self.sender.notify,
                      decoded=self.decoded.get, clock=self.clock)

    def _replace_dead_workers(self) -> None:
        """A worker thread that ended anyway (a bug) is replaced, so queued studies never wait forever."""
        for i, w in enumerate(self.workers):
            if not w.is_alive() and not self._stop.is_set():
                log_event(logger, "worker.restarted", level=logging.ERROR, worker=w.name)
                fresh = self._make_worker(w.name)
                self.workers[i] = fresh
                fresh.start()

    def sweep_retention(self) -> SweepReport:
        """Age is measured on the node's clock, the one that stamped the series: a wall-clock step must not
        make a series received a minute ago look a year old."""
        return sweep(self.db, self.spool.root, self.config.results_dir, self.config.retention, now=self.clock(),
                     guard=self.scp.spool_guard, evict_below_bytes=self._evict_below_bytes())

    def run_until_stopped(self) -> None:
        next_sweep = time.monotonic()
        while not self._stop.is_set():
            self._replace_dead_workers()
            try:
                self.completion.complete_idle()
            except Exception:
                logger.exception("completion.error")
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + RETENTION_INTERVAL_S
                try:
                    self.sweep_retention()
                except Exception:
                    logger.exception("retention.error")
            self._stop.wait(COMPLETION_POLL_S)

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        if not self._stop.is_set():
            log_event(logger, "node.stopping", signal=signum)
        self._stop.set()

    def shutdown(self) -> None:
        if self.web is not None:
            self.web.stop()
        self.scp.stop()
        self.sender.stop()
        for w in self.workers:
            w.stop()
        for w in self.workers:
            w.join(timeout=30)
        release_unfinished(self.jobs, self.workers)
        self.audit.record("application_stop", participants=[Participant(self.config.node.ae_title, "", True,
                                                                        "Application")])
        if self.syslog is not None:
            self.syslog.stop()
        self.db.close()
        os.close(self._lock_fd)
        log_event(logger, "node.stopped")


def serve(config: AppConfig) -> int:
    node = Node(config)
    signal.signal(signal.SIGTERM, node.request_stop)
    signal.signal(signal.SIGINT, node.request_stop)
    try:
        node.start()
        node.run_until_stopped()
    finally:
        node.shutdown()  # also after a failed start: the SCP may already listen
    return 0

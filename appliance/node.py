"""`isonode serve`: wires the database, the DICOM node, series completion and the workers together."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from appliance.completion import SeriesCompletion
from appliance.config import AppConfig
from appliance.jobs import JobQueue
from appliance.retention import sweep
from appliance.worker import Worker
from dicom_node.database import Database
from dicom_node.index import InstanceIndex
from dicom_node.logfmt import log_event
from dicom_node.recovery import recover_spool
from dicom_node.scp import PeerRule, ScpSettings, StorageScp, spool_layout
from kernels import backend_status, select_backend

logger = logging.getLogger(__name__)

COMPLETION_POLL_S = 0.5
RETENTION_INTERVAL_S = 600.0


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
        allowed_peers=tuple(PeerRule(p.ae_title, p.address) for p in n.allowed_peers),
        min_free_bytes=config.storage.min_free_mb * 1024 * 1024,
        fsync=config.storage.fsync,
        maximum_associations=n.maximum_associations,
        dimse_timeout_s=n.dimse_timeout_s,
        network_timeout_s=n.network_timeout_s,
        poll_interval_s=n.poll_interval_ms / 1000.0,
    )


class Node:
    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self._lock_fd = _lock_data_dir(config.data_dir)
        self.db = Database(config.database_path)
        self.index = InstanceIndex(self.db)
        self.jobs = JobQueue(self.db, max_attempts=config.processing.max_attempts,
                             retry_backoff_s=config.processing.retry_backoff_s)
        self.spool = spool_layout(config.spool_dir)
        self.completion = SeriesCompletion(self.index, self.jobs, config.series)
        self.scp = StorageScp(scp_settings(config), self.spool, self.index)
        self.workers = [
            Worker(f"worker-{i}", self.jobs, self.index, self.spool.root, config.results_dir,
                   lease_s=config.processing.lease_s)
            for i in range(config.processing.workers)
        ]
        self._stop = threading.Event()

    def recover(self) -> None:
        report = recover_spool(self.spool, self.index)
        requeued = self.jobs.requeue_running()
        log_event(logger, "node.recovered", temp_files_removed=report.temp_files_removed,
                  reindexed=report.reindexed, unreadable=report.unreadable, jobs_requeued=requeued)

    def probe_backends(self) -> None:
        """Choose the compute back ends once, at start, and say which and why (a forced one must work)."""
        mc = select_backend(self.config.processing.backend)
        status = backend_status()
        log_event(logger, "node.backends", marching_cubes=mc, requested=self.config.processing.backend,
                  cuda_available=status.cuda_available, device=status.device, reason=status.reason,
                  cpu_threads=status.cpu_threads)

    def start(self) -> tuple[str, int]:
        self.probe_backends()
        self.recover()
        address = self.scp.start()
        for w in self.workers:
            w.start()
        return address

    def run_until_stopped(self) -> None:
        next_sweep = time.monotonic()
        while not self._stop.is_set():
            try:
                self.completion.complete_idle()
            except Exception:
                logger.exception("completion.error")
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + RETENTION_INTERVAL_S
                try:
                    sweep(self.db, self.spool.root, self.config.results_dir, self.config.retention)
                except Exception:
                    logger.exception("retention.error")
            self._stop.wait(COMPLETION_POLL_S)

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        if not self._stop.is_set():
            log_event(logger, "node.stopping", signal=signum)
        self._stop.set()

    def shutdown(self) -> None:
        self.scp.stop()
        for w in self.workers:
            w.stop()
        for w in self.workers:
            w.join(timeout=30)
        self.db.close()
        os.close(self._lock_fd)
        log_event(logger, "node.stopped")


def serve(config: AppConfig) -> int:
    node = Node(config)
    signal.signal(signal.SIGTERM, node.request_stop)
    signal.signal(signal.SIGINT, node.request_stop)
    node.start()
    try:
        node.run_until_stopped()
    finally:
        node.shutdown()
    return 0

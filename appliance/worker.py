"""Job workers: claim a job, renew its lease while the pipeline runs, record the outcome."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path

from appliance.jobs import Job, JobQueue, LeaseLostError
from appliance.pipeline import process_series, write_result
from dicom_node.index import InstanceIndex
from dicom_node.logfmt import log_event
from dicom_node.pixels import PixelDecodeError
from dicom_node.volume import VolumeError

logger = logging.getLogger(__name__)

# Input problems: retrying cannot help, the job fails at once with the reason.
PERMANENT_ERRORS = (VolumeError, PixelDecodeError)


class Worker(threading.Thread):
    def __init__(self, name: str, jobs: JobQueue, index: InstanceIndex, spool_root: Path, results_dir: Path,
                 *, lease_s: float, poll_s: float = 0.5) -> None:
        super().__init__(name=name, daemon=True)
        self.jobs = jobs
        self.index = index
        self.spool_root = spool_root
        self.results_dir = results_dir
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{name}"
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                job = self.jobs.claim(self.owner, self.lease_s)
            except Exception:
                logger.exception("worker.claim_failed")
                job = None
            if job is None:
                self._stop_event.wait(self.poll_s)
                continue
            self._run_job(job)

    def _renew_until(self, job: Job, done: threading.Event) -> None:
        while not done.wait(self.lease_s / 3):
            try:
                self.jobs.renew(job.id, self.owner, self.lease_s)
            except LeaseLostError:
                log_event(logger, "job.lease_lost", level=logging.ERROR, job=job.id)
                return

    def _run_job(self, job: Job) -> None:
        log_event(logger, "job.started", job=job.id, series=job.series_uid, version=job.series_version,
                  mode=job.mode, attempt=job.attempts)
        done = threading.Event()
        renewer = threading.Thread(target=self._renew_until, args=(job, done), daemon=True)
        renewer.start()
        t0 = time.perf_counter()
        try:
            files = [self.spool_root / rel for rel in self.index.series_files(job.series_uid)]
            summary = process_series(files)
            result_path = write_result(self.results_dir, job.series_uid, job.series_version, job.mode, summary)
            result = {"volume": asdict(summary), "result_path": str(result_path),
                      "seconds": round(time.perf_counter() - t0, 3)}
        except PERMANENT_ERRORS as exc:
            done.set()
            self._record_failure(job, f"{type(exc).__name__}: {exc}", retryable=False)
            return
        except Exception as exc:
            done.set()
            logger.exception("job.error", extra={"fields": {"job": job.id}})
            self._record_failure(job, f"{type(exc).__name__}: {exc}", retryable=True)
            return
        done.set()
        try:
            self.jobs.complete(job.id, self.owner, result)
        except LeaseLostError:
            log_event(logger, "job.lease_lost", level=logging.ERROR, job=job.id)
            return
        log_event(logger, "job.done", job=job.id, series=job.series_uid, version=job.series_version,
                  seconds=result["seconds"], shape=summary.shape_zyx)

    def _record_failure(self, job: Job, error: str, *, retryable: bool) -> None:
        try:
            state = self.jobs.fail(job.id, self.owner, error, retryable=retryable)
        except LeaseLostError:
            return
        log_event(logger, "job.failed", level=logging.WARNING, job=job.id, series=job.series_uid,
                  next_state=state, error=error[:300])

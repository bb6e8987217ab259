"""Job workers: claim a job, renew its lease while the pipeline runs, write the results, and complete the
job and queue its deliveries in one transaction."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from appliance.config import AppConfig, Route
from appliance.jobs import Job, JobQueue, LeaseLostError
from appliance.meshing import MeshSettings
from appliance.outbox import Destination, Outbox, OutboxFile
from appliance.pipeline import OutputPlan, PipelineOutput, run_pipeline, write_results
from appliance.routing import Router
from appliance.runtime import Runtime
from dicom_node.catalog import Catalog, CatalogEntry
from dicom_node.clock import Clock
from dicom_node.index import InstanceIndex
from dicom_node.logfmt import log_event
from dicom_node.pixels import PixelDecodeError
from dicom_node.secondary_capture import SecondaryCaptureError
from dicom_node.seg import SegError
from dicom_node.surface_seg import SurfaceSegmentationError
from dicom_node.volume import DecodedLookup, VolumeError

logger = logging.getLogger(__name__)

# Input problems: retrying cannot help, the job fails at once with the reason (a writer refusing what the
# pipeline made from this series would refuse it again).
PERMANENT_ERRORS = (VolumeError, PixelDecodeError, SegError, SurfaceSegmentationError, SecondaryCaptureError)
DISK_FULL_RETRY_S = 15.0  # a job stopped by a full disk tries again this often, without using up attempts
PRIORITY = {"preview": 0, "full": 1}  # outbox order: a preview never waits behind a full result


class StageClock:
    """Times the pipeline's stages as they start and records them with the job, so the bedside page shows
    per-stage progress. Progress is a display: a failed report is logged and the job goes on. `started_at`
    comes from the node's clock, the one the web API reports as its time, against which the page counts."""

    def __init__(self, report: Callable[[list[dict]], None], clock: Clock = time.time) -> None:
        self._report = report
        self._clock = clock
        self.stages: list[dict] = []
        self._t0 = 0.0

    def _close_last(self) -> None:
        if self.stages and self.stages[-1]["seconds"] is None:
            self.stages[-1]["seconds"] = round(time.perf_counter() - self._t0, 3)

    def _send(self) -> None:
        try:
            self._report(self.stages)
        except LeaseLostError:
            raise
        except Exception:
            logger.exception("job.progress_not_recorded")

    def start(self, name: str) -> None:
        self._close_last()
        self._t0 = time.perf_counter()
        self.stages.append({"name": name, "started_at": self._clock(), "seconds": None})
        self._send()

    def finish(self) -> None:
        self._close_last()
        self._send()


def output_plan(config: AppConfig, mode: str, route: Route | None) -> OutputPlan:
    mesh = getattr(config.meshing, mode)
    return OutputPlan(
        mode=mode,
        mesh=MeshSettings(mesh.max_triangles, mesh.smoothing_iterations, mesh.min_component_ml * 1000.0),
        experimental_segments=bool(route and route.experimental_segments),
        seg=config.output.seg,
        mesh_files=tuple(config.output.mesh_files),
        rendered_view=mode in (config.output.rendered_view if route is None or route.rendered_view is None
                               else route.rendered_view),
    )


class Worker(threading.Thread):
    """`clock` stamps the deliveries a finished job queues (the clock the sender's backoff and expiry use)."""

    def __init__(self, name: str, jobs: JobQueue, index: InstanceIndex, spool_root: Path, config: AppConfig,
                 runtime: Runtime, router: Router, outbox: Outbox, *, wake: threading.Event | None = None,
                 on_delivery_queued: Callable[[], None] | None = None, decoded: DecodedLookup | None = None,
                 poll_s: float = 0.5, clock: Clock = time.time) -> None:
        super().__init__(name=name, daemon=True)
        self.clock = clock
        self.jobs = jobs
        self.index = index
        self.spool_root = spool_root
        self.config = config
        self.results_dir = config.results_dir
        self.runtime = runtime
        self.router = router
        self.outbox = outbox
        self.lease_s = config.processing.lease_s
        self.poll_s = poll_s
        self.wake = wake or threading.Event()
        self.on_delivery_queued = on_delivery_queued
        self.decoded = decoded
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{name}"
        self.current: Job | None = None  # the job this worker holds, for a clean shutdown to give back
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.wake.set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                job = self.jobs.claim(self.owner, self.lease_s)
            except Exception:
                logger.exception("worker.claim_failed")
                job = None
            if job is None:
                self.wake.wait(self.poll_s)
                self.wake.clear()
                continue
            self.current = job
            try:
                self._run_job(job)
            except Exception:  # SQLite busy, an I/O error, disk full: this job fails, the worker goes on
                logger.exception("worker.job_crashed", extra={"fields": {"job": job.id}})
                try:
                    self._record_failure(job, "worker error (see the log)", retryable=True)
                except Exception:  # the database itself is failing: the lease expires and the job comes back
                    logger.exception("worker.failure_not_recorded", extra={"fields": {"job": job.id}})
                self._stop_event.wait(self.poll_s)
            finally:
                self.current = None

    def _renew_until(self, job: Job, done: threading.Event) -> None:
        while not done.wait(self.lease_s / 3):
            try:
                self.jobs.renew(job.id, self.owner, self.lease_s)
            except LeaseLostError:
                log_event(logger, "job.lease_lost", level=logging.ERROR, job=job.id)
                return
            except Exception:  # a busy or failing database: try again at the next interval, the lease has slack
                logger.exception("job.lease_renewal_failed", extra={"fields": {"job": job.id}})

    def _run_job(self, job: Job) -> None:
        log_event(logger, "job.started", job=job.id, series=job.series_uid, version=job.series_version,
                  mode=job.mode, attempt=job.attempts)
        done = threading.Event()
        renewer = threading.Thread(target=self._renew_until, args=(job, done), daemon=True)
        renewer.start()
        t0 = time.perf_counter()
        stage_clock = StageClock(lambda stages: self.jobs.report_stages(job.id, self.owner, stages), self.clock)
        try:
            files = [self.spool_root / rel
                     for rel in self.index.series_files(job.series_uid, up_to_version=job.series_version)]
            sv = self.index.version(job.series_uid, job.series_version)
            route = self.router.route(sv) if sv is not None else None
            output = run_pipeline(files, self.runtime, output_plan(self.config, job.mode, route), self.decoded,
                                  max_voxels=self.config.processing.max_volume_voxels,
                                  on_stage=stage_clock.start)
            stage_clock.start("write")
            t = time.perf_counter()
            out_dir = self.results_dir / job.series_uid / f"v{job.series_version}-{job.mode}"
            write_results(out_dir, output.objects, fsync=self.config.storage.fsync, replace=True)
            output.timings["write_s"] = time.perf_counter() - t
            output.timings["total_s"] = time.perf_counter() - t0
            stage_clock.finish()
        except LeaseLostError:
            done.set()
            log_event(logger, "job.lease_lost", level=logging.ERROR, job=job.id)
            return
        except PERMANENT_ERRORS as exc:
            done.set()
            self._record_failure(job, f"{type(exc).__name__}: {exc}", retryable=False)
            return
        except OSError as exc:
            done.set()
            if exc.errno != errno.ENOSPC:
                logger.exception("job.error", extra={"fields": {"job": job.id}})
                self._record_failure(job, f"{type(exc).__name__}: {exc}", retryable=True)
                return
            # a full disk is the node's state, not the series': wait for space without using up attempts
            log_event(logger, "job.waiting_for_disk", level=logging.WARNING, job=job.id, retry_s=DISK_FULL_RETRY_S)
            with contextlib.suppress(LeaseLostError):  # the lease was lost: the job is someone else's
                self.jobs.postpone(job.id, self.owner, DISK_FULL_RETRY_S, "disk full: waiting for free space")
            return
        except Exception as exc:
            done.set()
            logger.exception("job.error", extra={"fields": {"job": job.id}})
            self._record_failure(job, f"{type(exc).__name__}: {exc}", retryable=True)
            return
        done.set()
        destinations = self._destinations(route)
        deliveries = [OutboxFile((out_dir / o.filename).relative_to(self.results_dir).as_posix(),
                                 o.sop_class_uid, o.sop_instance_uid)
                      for o in output.objects if o.is_dicom]
        result = output.record() | {"result_dir": str(out_dir.relative_to(self.results_dir)),
                                    "route": route.rule if route else None,
                                    "destinations": [d.name for d in destinations]}

        catalogued = [CatalogEntry.from_part10(o.data, store="results", relpath=f.relpath)
                      for o, f in zip([o for o in output.objects if o.is_dicom], deliveries, strict=True)]

        def queue_deliveries(conn) -> None:  # noqa: ANN001 - sqlite3.Connection, same transaction as complete
            for entry in catalogued:  # a result is retrievable (Q/R) from the moment its job is done
                Catalog.record_in(conn, entry)
            now = self.clock()
            for dest in destinations:
                if deliveries:
                    self.outbox.enqueue_in(conn, destination=dest, files=deliveries, job_id=job.id,
                                           priority=PRIORITY.get(job.mode, 1), now=now)

        try:
            self.jobs.complete(job.id, self.owner, result, also=queue_deliveries)
        except LeaseLostError:
            log_event(logger, "job.lease_lost", level=logging.ERROR, job=job.id)
            return
        if deliveries and destinations and self.on_delivery_queued is not None:
            self.on_delivery_queued()
        self._log_done(job, output, destinations)

    def _destinations(self, route: Route | None) -> list[Destination]:
        """Where the job's results go; a result that goes nowhere says why in the log (it stays on disk)."""
        if route is None:
            log_event(logger, "job.no_route", level=logging.WARNING,
                      reason="no routing rule matches the series any more: results kept, not sent")
            return []
        # the config validated every rule's destination names at start
        return [Destination(d.name, d.ae_title, d.host, d.port)
                for d in map(self.config.destination, route.destinations) if d is not None]

    def _log_done(self, job: Job, output: PipelineOutput, destinations: list[Destination]) -> None:
        main = ("read_s", "segment_s", "mesh_s", "encode_s", "write_s", "total_s")
        log_event(logger, "job.done", job=job.id, series=job.series_uid, version=job.series_version,
                  mode=job.mode, shape=output.volume.shape_zyx, result_series=output.series_instance_uid,
                  objects=len(output.objects), destinations=[d.name for d in destinations],
                  seconds=round(output.timings.get("total_s", 0.0), 3),
                  stages={k: round(output.timings[k], 3) for k in main if k in output.timings},
                  backends=output.backends, segments=output.segments)

    def _record_failure(self, job: Job, error: str, *, retryable: bool) -> None:
        try:
            state = self.jobs.fail(job.id, self.owner, error, retryable=retryable)
        except LeaseLostError:
            return
        log_event(logger, "job.failed", level=logging.WARNING, job=job.id, series=job.series_uid,
                  next_state=state, error=error[:300])


def release_unfinished(jobs: JobQueue, workers: list[Worker]) -> int:
    """At a clean shutdown, give back the jobs workers still hold without counting the attempt (a restart
    must not use one up); a worker that finishes later finds its lease gone and leaves the job alone."""
    released = 0
    for worker in workers:
        job = worker.current
        if job is None:
            continue
        try:
            jobs.release(job.id, worker.owner)
            released += 1
            log_event(logger, "job.released", job=job.id, series=job.series_uid, mode=job.mode)
        except LeaseLostError:
            pass
    return released

"""Series completion: turning a series that stopped receiving into a processing job.

DICOM has no "end of series" message, so a series is complete after an idle time (per route), when the
association that sent it is released (`series.complete_on_release`: scanners and PACS send a series on
one association, and waiting the idle time would delay the preview), or when an operator says so.
Completion and enqueue happen in one transaction: a crash cannot complete a series without its job, or
queue a job twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from appliance.config import SeriesConfig
from appliance.jobs import PROCESS_SERIES, JobQueue
from dicom_node.clock import Clock
from dicom_node.index import InstanceIndex, SeriesVersion
from dicom_node.logfmt import log_event

logger = logging.getLogger(__name__)


ModesFor = Callable[[SeriesVersion], tuple[str, ...]]


class SeriesCompletion:
    """`modes_for` says which processing modes a completed version gets (routing), in the order they run;
    `clock` measures idle time on the clock that stamped the receive times (the node's steady clock)."""

    def __init__(self, index: InstanceIndex, jobs: JobQueue, config: SeriesConfig, modes_for: ModesFor,
                 on_queued: Callable[[], None] | None = None, *, clock: Clock = time.time) -> None:
        self.index = index
        self.clock = clock
        self.jobs = jobs
        self.config = config
        self.modes_for = modes_for
        self.on_queued = on_queued

    def _complete(self, sv: SeriesVersion, reason: str, now: float) -> bool:
        modes = self.modes_for(sv) if sv.image_count > 0 else ()
        with self.index.db.transaction() as conn:
            if not InstanceIndex.mark_complete(conn, sv.series_uid, sv.version, reason, now):
                return False
            job_ids = []
            if sv.image_count > 0:
                for mode in modes:
                    job_ids.append(JobQueue.enqueue_in(
                        conn, kind=PROCESS_SERIES, series_uid=sv.series_uid, series_version=sv.version, mode=mode,
                        max_attempts=self.jobs.max_attempts, now=now))
        note = None
        if not sv.image_count:
            note = "no processable CT images: stored only"
        elif not modes:
            note = "no routing rule asks for processing: stored only"
        log_event(logger, "series.complete", series=sv.series_uid, version=sv.version, reason=reason,
                  instances=sv.instance_count, images=sv.image_count, modes=list(modes), jobs=job_ids, note=note)
        if job_ids and self.on_queued is not None:
            self.on_queued()
        return True

    def complete_released(self, series_uids: Iterable[str], calling_ae: str, called_ae: str,
                          now: float | None = None) -> list[tuple[str, int]]:
        """The association that sent these series was released: complete their receiving versions where
        the route says so (a version another association is still adding to completes when that one ends,
        or by idle time)."""
        if not self.config.complete_on_release_for(calling_ae, called_ae):
            return []
        now = self.clock() if now is None else now
        done = []
        for uid in series_uids:
            sv = self.index.latest_version(uid)
            if sv is not None and sv.state == "receiving" and self._complete(sv, "association released", now):
                done.append((sv.series_uid, sv.version))
        return done

    def complete_idle(self, now: float | None = None) -> list[tuple[str, int]]:
        """Complete every receiving series whose idle time has passed; the (series, version) completed."""
        now = self.clock() if now is None else now
        done = []
        for sv in self.index.receiving_series():
            timeout = self.config.timeout_for(sv.calling_ae, sv.called_ae)
            if now - sv.last_received_at >= timeout and self._complete(sv, f"idle {timeout:g} s", now):
                done.append((sv.series_uid, sv.version))
        return done

    def complete_now(self, series_uid: str) -> int | None:
        """Operator action: complete the series' receiving version at once; its version, or None."""
        sv = self.index.latest_version(series_uid)
        if sv is None or sv.state != "receiving":
            return None
        return sv.version if self._complete(sv, "operator", self.clock()) else None

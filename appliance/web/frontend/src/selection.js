// Pure logic: which jobs a series has and which result to show.

/** The newest job of each mode for a series: {preview: Job|null, full: Job|null}. */
export function latestJobs(series) {
  const out = { preview: null, full: null };
  for (const job of series?.jobs || []) {
    if (!(job.mode in out)) continue;
    const cur = out[job.mode];
    if (!cur || job.id > cur.id) out[job.mode] = job;
  }
  return out;
}

/** The newest *done* job with a result of each mode. */
export function resultJobs(series) {
  const out = { preview: null, full: null };
  for (const job of series?.jobs || []) {
    if (!(job.mode in out) || job.state !== "done" || !job.result) continue;
    const cur = out[job.mode];
    if (!cur || job.id > cur.id) out[job.mode] = job;
  }
  return out;
}

/**
 * The job whose result should be on screen: the user's pick when that mode has a result, else the
 * full result when it is done, else the preview.
 * @param {object} series
 * @param {"preview"|"full"|null} pinnedMode
 */
export function jobToShow(series, pinnedMode = null) {
  const r = resultJobs(series);
  if (pinnedMode && r[pinnedMode]) return r[pinnedMode];
  return r.full || r.preview || null;
}

/** Series sorted newest first (by first_received_at, then id). */
export function newestFirst(list) {
  return [...(list || [])].sort(
    (a, b) => (b.first_received_at ?? 0) - (a.first_received_at ?? 0) || (b.id ?? 0) - (a.id ?? 0),
  );
}

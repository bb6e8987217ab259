// isonode bedside page: wires the modules together and holds the page state.

import { $ } from "./dom.js";
import { api } from "./api.js";
import { LiveEvents } from "./events.js";
import { SeriesList } from "./seriesList.js";
import { JobProgress } from "./jobProgress.js";
import { Viewer, WINDOWS, LAYOUTS, SLICE_MODES, CT3D_MODES } from "./viewer.js";
import { Legend } from "./legend.js";
import { Feedback } from "./feedback.js";
import { SystemBar } from "./systemBar.js";
import { ResultBanner } from "./resultBanner.js";
import { ConnectionBanner } from "./connectionBanner.js";
import { jobToShow, latestJobs, newestFirst, resultJobs } from "./selection.js";
import { dicomDate, orDash, personName } from "./format.js";

const state = {
  series: [],
  selectedId: null,
  userSelected: false, // until the user picks a series, the newest one is followed
  pinned: new Map(), // series id -> "preview" | "full" picked with the switch
  loadingJobId: null,
  loadFailed: new Map(), // job id -> time of a failed load (retried after a while)
};

let resolveReady;
const isonode = {
  ready: new Promise((r) => (resolveReady = r)), // resolves with the job id of the first drawn result
  shownJobId: null,
  shownMode: null,
  shownSeriesId: null,
  meshesLoaded: 0,
  selectedSeriesId: null,
  viewer: null,
};
window.isonode = isonode;

const viewerEl = $("#viewer");
const statusEl = $("#viewer-status");
const systemBar = new SystemBar($("#system-bar"));
const connection = new ConnectionBanner($("#connection-banner"));
const seriesList = new SeriesList($("#series-list"), $("#series-empty"), (id) => select(id, true));
const progress = new JobProgress($("#job-progress"));
const viewer = new Viewer($("#gl"), {
  onStatus: setViewerStatus,
  onOutlines: (job) => {
    if (job.id === isonode.shownJobId) viewerEl.dataset.outlinesJob = String(job.id);
  },
});
isonode.viewer = viewer;
const legend = new Legend($("#legend"), {
  onVisible: (name, v) => viewer.setSegmentVisible(name, v),
  onOpacity: (name, v) => viewer.setSegmentOpacity(name, v),
});
const feedback = new Feedback($("#feedback"));
const banner = new ResultBanner($("#result-banner"), $("#result-switch"), (mode) => {
  if (state.selectedId == null) return;
  state.pinned.set(state.selectedId, mode);
  updateDetail();
});

function setViewerStatus(text, kind = "") {
  statusEl.textContent = text;
  statusEl.hidden = !text;
  statusEl.dataset.kind = kind;
}

function currentSeries() {
  return state.series.find((s) => s.id === state.selectedId) || null;
}

// --- selection ------------------------------------------------------------------------------------

function select(id, byUser) {
  if (byUser) state.userSelected = true;
  if (id !== state.selectedId) {
    state.selectedId = id;
    isonode.selectedSeriesId = id;
    seriesList.select(id);
    if (viewer.seriesId !== id) {
      // never leave (or finish loading) another patient's result under this series' heading
      viewer.clear();
      viewer.resetSegmentProps();
      state.loadingJobId = null;
      shown(null);
    }
    if (byUser) history.replaceState(null, "", id == null ? location.pathname : `#series=${id}`);
  }
  updateDetail();
}

let gotEvent = false;

function applySeries(data, fromEvent = true) {
  if (fromEvent) gotEvent = true;
  else if (gotEvent) return; // the first GET answered after a newer event
  state.series = newestFirst(data?.series || []);
  seriesList.update(state.series);
  const ids = new Set(state.series.map((s) => s.id));
  if (state.selectedId != null && !ids.has(state.selectedId)) {
    state.userSelected = false; // it fell out of the list
    select(null, false);
  }
  if (!state.userSelected && state.series.length && state.selectedId !== state.series[0].id) {
    select(state.series[0].id, false);
  } else {
    updateDetail();
  }
  systemBar.refresh();
}

// --- detail (progress, banner, viewer) ------------------------------------------------------------

function detailTitle(s) {
  const el = $("#detail-title");
  if (!s) {
    el.textContent = "";
    return;
  }
  const st = s.study || {};
  el.replaceChildren();
  const name = document.createElement("strong");
  name.textContent = personName(st.patient_name);
  el.append(name, ` \u00b7 ID ${orDash(st.patient_id)} \u00b7 ${dicomDate(st.study_date)} \u00b7 ${orDash(s.series_description)}`);
}

function waitingNote(s) {
  if (!s) return "";
  const jobs = latestJobs(s);
  if (s.state === "receiving") return `Receiving images (${s.instances ?? 0} so far)\u2026`;
  if (jobs.preview?.state === "failed" && (!jobs.full || jobs.full.state === "failed")) return "No result: the jobs failed.";
  if (jobs.preview && jobs.preview.state !== "done") return "Preview is being computed\u2026";
  if (jobs.full && jobs.full.state !== "done") return "Full result is being computed\u2026";
  if (!jobs.preview && !jobs.full) return "No jobs for this series yet.";
  return "";
}

function updateDetail() {
  const s = currentSeries();
  $("#detail").dataset.empty = String(!s);
  detailTitle(s);
  progress.update(s);
  const available = s ? resultJobs(s) : { preview: null, full: null };
  const want = s ? jobToShow(s, state.pinned.get(s.id)) : null;
  const onScreen = viewer.job && viewer.seriesId === s?.id ? viewer.job : null;

  if (want && want.id !== onScreen?.id && want.id !== state.loadingJobId) {
    const failedAt = state.loadFailed.get(want.id);
    if (!failedAt || Date.now() - failedAt > 10000) load(want, s.id);
  }
  if (!want && onScreen) {
    viewer.clear();
    shown(null);
  }

  let note = "";
  if (state.loadingJobId != null && want?.id === state.loadingJobId) {
    note = want.mode === "full" ? "Loading the full result\u2026" : "Loading the preview\u2026";
  } else if (onScreen?.mode === "preview") {
    const full = latestJobs(s).full;
    if (full && (full.state === "queued" || full.state === "running")) note = "Full result in progress\u2026";
    else if (full?.state === "failed") note = "Full result failed.";
  }
  banner.show(viewer.job && viewer.seriesId === s?.id ? viewer.job : null, available, note);
  if (!want && state.loadingJobId == null) {
    const idle = state.series.length ? "Select a series." : "Waiting for the first series\u2026";
    setViewerStatus(s ? waitingNote(s) || "No result yet." : idle, "waiting");
  }
}

function shown(job) {
  isonode.shownJobId = job?.id ?? null;
  isonode.shownMode = job?.mode ?? null;
  isonode.shownSeriesId = job ? viewer.seriesId : null;
  isonode.meshesLoaded = job ? viewer.meshes.size : 0;
  delete viewerEl.dataset.outlinesJob; // set again once this result's slice outlines are drawn
  if (job) {
    viewerEl.dataset.loadedJob = String(job.id);
    viewerEl.dataset.loadedMode = job.mode;
  } else {
    delete viewerEl.dataset.loadedJob;
    delete viewerEl.dataset.loadedMode;
  }
  legend.show(job, (name) => viewer.segmentProp(name));
  feedback.setJob(job);
}

async function load(job, seriesId) {
  state.loadingJobId = job.id;
  try {
    const ok = await viewer.show(job, seriesId);
    if (!ok) return;
    state.loadFailed.delete(job.id);
    shown(job);
    viewerEl.dispatchEvent(new CustomEvent("isonode:loaded", { detail: { jobId: job.id, mode: job.mode } }));
    resolveReady(job.id);
  } catch (e) {
    if (e?.status === 401) return;
    console.error("isonode: could not load result", e);
    state.loadFailed.set(job.id, Date.now());
    setViewerStatus(`Could not load the ${job.mode} result: ${e?.message || e}`, "error");
    viewerEl.dataset.error = String(e?.message || e);
  } finally {
    if (state.loadingJobId === job.id) state.loadingJobId = null;
    updateDetail();
  }
}

// --- controls -------------------------------------------------------------------------------------

function fillSelect(sel, choices, current, onChange) {
  for (const [key, c] of Object.entries(choices)) sel.append(new Option(c.label, key, key === current, key === current));
  sel.addEventListener("change", () => onChange(sel.value));
}

function setupControls() {
  fillSelect($("#window-preset"), WINDOWS, viewer.windowKey, (k) => viewer.setWindow(k));
  fillSelect($("#layout-select"), LAYOUTS, viewer.layout, (k) => viewer.setLayout(k));
  fillSelect($("#slice-mode"), SLICE_MODES, viewer.sliceMode, (k) => viewer.setSliceMode(k));
  fillSelect($("#ct3d-mode"), CT3D_MODES, viewer.ct3d, (k) => viewer.setCt3d(k));
  $("#reset-view").addEventListener("click", () => viewer.resetView());
  const toggle = $("#toggle-list");
  toggle.addEventListener("click", () => {
    const collapsed = document.body.classList.toggle("list-collapsed");
    toggle.setAttribute("aria-expanded", String(!collapsed));
    toggle.textContent = collapsed ? "Series \u25B8" : "Hide";
  });
}

// --- start ----------------------------------------------------------------------------------------

async function start() {
  setupControls();
  legend.show(null, () => ({}));
  const m = /series=(\d+)/.exec(location.hash);
  if (m) {
    state.selectedId = Number(m[1]);
    state.userSelected = true;
    isonode.selectedSeriesId = state.selectedId;
    seriesList.select(state.selectedId);
  }
  setViewerStatus("Starting the 3D view\u2026", "loading");
  try {
    await viewer.init();
    setViewerStatus("", "");
  } catch (e) {
    console.error(e);
    setViewerStatus(`3D view unavailable (WebGL2 needed): ${e?.message || e}`, "error");
  }
  const events = new LiveEvents("/api/events", {
    onSeries: (d) => applySeries(d, true),
    onStatus: (st) => {
      connection.update(st);
      if (st.connected) systemBar.refresh();
    },
  });
  api.series(50).then((d) => applySeries(d, false), (e) => console.warn("isonode: series", e));
  events.start();
  systemBar.refresh();
}

start();

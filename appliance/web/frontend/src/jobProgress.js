// Per-job progress of the selected series: one bar per stage with the seconds it took, and the
// error text of a failed job.

import { esc, seconds, modelText } from "./format.js";
import { latestJobs } from "./selection.js";
import { serverNow } from "./api.js";

const STAGE_NAMES = ["read", "segment", "mesh", "encode", "write"];
const MODE_LABEL = { preview: "Preview", full: "Full result" };

function stageHtml(name, st, now) {
  const state = st?.state || "pending";
  let secs = "";
  if (state === "done") secs = seconds(st.seconds);
  else if (state === "running" && st.started_at != null) secs = seconds(Math.max(0, now - st.started_at));
  return `<div class="stage" data-stage="${name}" data-state="${esc(state)}">
    <div class="stage-bar"><div class="stage-fill"></div></div>
    <div class="stage-text"><span class="stage-name">${name}</span>
      <span class="stage-secs"${state === "running" ? ` data-started="${esc(st?.started_at ?? "")}"` : ""}>${esc(secs)}</span></div>
  </div>`;
}

function jobHtml(job, now) {
  const stages = STAGE_NAMES.map((n) => stageHtml(n, (job.stages || []).find((s) => s.name === n), now)).join("");
  const total = job.result?.seconds ?? (job.stages || []).reduce((a, s) => a + (s.seconds || 0), 0);
  const deliveries = (job.deliveries || [])
    .map((d) => `<span class="delivery" data-state="${esc(d.state)}">${esc(d.destination)}: ${esc(d.state)}</span>`)
    .join(" ");
  const facts = [
    `<span class="job-state-text">${esc(job.state)}</span>`,
    job.state === "done" && total ? `<span>${esc(seconds(total))}</span>` : "",
    job.attempts > 1 ? `<span>attempt ${esc(job.attempts)}</span>` : "",
    deliveries,
  ].filter(Boolean).join(" \u00b7 ");
  const title = job.result?.model ? ` title="${esc(modelText(job.result.model))}"` : "";
  return `<div class="job-head"${title}><span class="job-title">${esc(MODE_LABEL[job.mode] || job.mode)}</span> ${facts}</div>
    <div class="stages">${stages}</div>
    ${job.state === "failed" ? `<div class="job-error" role="alert">${esc(job.error || "failed (no error text)")}</div>` : ""}`;
}

export class JobProgress {
  constructor(root) {
    this.root = root;
    this.keys = new Map();
    setInterval(() => this.tick(), 500);
  }

  /** Show the progress of the series' newest preview and full jobs (or nothing). */
  update(series) {
    const jobs = series ? latestJobs(series) : { preview: null, full: null };
    const list = [jobs.preview, jobs.full].filter(Boolean);
    const now = serverNow();
    const ids = new Set(list.map((j) => String(j.id)));
    for (const el of [...this.root.children]) if (!ids.has(el.dataset.progressJob)) el.remove();
    list.forEach((job, i) => {
      let el = this.root.querySelector(`[data-progress-job="${job.id}"]`);
      if (!el) {
        el = document.createElement("section");
        el.className = "job-progress";
        el.dataset.progressJob = job.id;
      }
      const key = JSON.stringify(job);
      if (this.keys.get(job.id) !== key) {
        el.innerHTML = jobHtml(job, now);
        el.dataset.mode = job.mode;
        el.dataset.state = job.state;
        this.keys.set(job.id, key);
      }
      if (this.root.children[i] !== el) this.root.insertBefore(el, this.root.children[i] || null);
    });
    this.root.hidden = list.length === 0;
    if (series && list.length === 0) {
      this.root.hidden = false;
      this.root.innerHTML = `<p class="muted">${series.state === "receiving" ? "Receiving images\u2026 jobs start when the series is complete." : "No jobs for this series."}</p>`;
      this.keys.clear();
    }
  }

  /** Live elapsed time of running stages. */
  tick() {
    const now = serverNow();
    for (const el of this.root.querySelectorAll(".stage-secs[data-started]")) {
      const t = Number(el.dataset.started);
      if (el.dataset.started !== "" && Number.isFinite(t)) el.textContent = seconds(Math.max(0, now - t));
    }
  }
}

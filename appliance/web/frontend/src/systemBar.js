// The system bar: AE title, backends, model, free disk, queue (from /api/system).

import { api } from "./api.js";
import { bytes, esc, orDash, modelText } from "./format.js";

export class SystemBar {
  constructor(root) {
    this.root = root;
    this.timer = null;
    this.last = 0;
    this.pending = null;
    this.render(null);
  }

  /** Refresh now, at most every 2 s (trailing call when asked more often). */
  refresh() {
    const wait = this.last + 2000 - Date.now();
    if (wait > 0) {
      if (!this.timer) this.timer = setTimeout(() => {
        this.timer = null;
        this.refresh();
      }, wait);
      return;
    }
    this.last = Date.now();
    api.system().then(
      (sys) => this.render(sys),
      (e) => {
        this.root.dataset.error = e.message;
      },
    );
  }

  render(sys) {
    const s = sys || {};
    const jobs = s.jobs || {};
    const disk = s.disk || {};
    const lowDisk = Number.isFinite(disk.free_bytes) && Number.isFinite(disk.min_free_bytes) &&
      disk.free_bytes < 2 * disk.min_free_bytes;
    const queue = Number.isFinite(jobs.queued)
      ? `${jobs.queued} queued${Number.isFinite(jobs.running) ? ` \u00b7 ${jobs.running} running` : ""}`
      : null;
    const item = (key, label, value, extra = "") =>
      `<span class="sys-item" data-key="${key}"${extra}><span class="sys-label">${label}</span> <span class="sys-value">${esc(orDash(value))}</span></span>`;
    this.root.innerHTML = [
      `<span class="brand">isonode</span>`,
      item("ae", "AE", s.node?.ae_title),
      item("inference", "Inference", s.backends?.inference),
      item("mc", "Meshing", s.backends?.marching_cubes),
      item("model", "Model", s.model?.name ? modelText(s.model) : null),
      item("disk", "Free disk", Number.isFinite(disk.free_bytes) ? bytes(disk.free_bytes) : null, lowDisk ? ' data-low="true"' : ""),
      item("queue", "Queue", queue),
    ].join("");
    delete this.root.dataset.error;
  }
}

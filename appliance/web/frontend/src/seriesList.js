// The list of recent series (newest first), updated in place from live events.

import { h } from "./dom.js";
import { ago, clock, esc, orDash, personName, dicomDate } from "./format.js";
import { latestJobs, newestFirst } from "./selection.js";
import { serverNow } from "./api.js";

const STAGE_NAMES = ["read", "segment", "mesh", "encode", "write"];
const MODE_LABEL = { preview: "Preview", full: "Full" };

function jobChip(job) {
  const stages = STAGE_NAMES.map((name) => {
    const st = (job.stages || []).find((s) => s.name === name);
    return `<i data-stage="${name}" data-state="${esc(st?.state || "pending")}"></i>`;
  }).join("");
  const title = job.error ? ` title="${esc(job.error)}"` : "";
  return `<div class="job-chip" data-job-id="${esc(job.id)}" data-mode="${esc(job.mode)}" data-state="${esc(job.state)}"${title}>
    <span class="job-mode">${esc(MODE_LABEL[job.mode] || job.mode)}</span>
    <span class="job-state">${esc(job.state)}</span>
    <span class="mini-stages" aria-hidden="true">${stages}</span>
  </div>`;
}

function seriesHtml(s) {
  const st = s.study || {};
  const jobs = latestJobs(s);
  const other = (s.jobs || []).filter((j) => j !== jobs.preview && j !== jobs.full);
  const chips = [jobs.preview, jobs.full, ...other].filter(Boolean).map(jobChip).join("");
  const ident = [st.patient_id, st.patient_sex, st.patient_birth_date ? dicomDate(st.patient_birth_date) : null]
    .filter(Boolean).map(esc).join(" \u00b7 ");
  return `
    <div class="series-head">
      <span class="patient">${esc(personName(st.patient_name))}</span>
      <span class="series-state" data-state="${esc(s.state)}">${esc(s.state)}</span>
    </div>
    <div class="patient-ident">${ident || "&nbsp;"}</div>
    <div class="descs"><span class="study-desc">${esc(orDash(st.study_description))}</span>
      <span class="series-desc"><span class="modality">${esc(orDash(s.modality))}</span>
      ${s.series_number != null ? `#${esc(s.series_number)} ` : ""}${esc(orDash(s.series_description))}</span></div>
    <div class="series-meta"><span class="instances">${esc(s.instances ?? 0)} images</span>
      <span class="received" data-t="${esc(s.first_received_at ?? "")}">${esc(clock(s.first_received_at, serverNow()))}
      <span class="ago">${esc(ago(s.first_received_at, serverNow()))}</span></span></div>
    <div class="jobs">${chips || '<span class="no-jobs">no jobs yet</span>'}</div>`;
}

export class SeriesList {
  /** @param {HTMLElement} root  the #series-list element; @param {(id:number)=>void} onSelect */
  constructor(root, emptyEl, onSelect) {
    this.root = root;
    this.emptyEl = emptyEl;
    this.onSelect = onSelect;
    this.items = new Map(); // id -> {el, key}
    this.selectedId = null;
    root.setAttribute("role", "listbox");
    root.setAttribute("aria-label", "Recent series");
    root.addEventListener("click", (ev) => this.pick(ev));
    root.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") this.pick(ev);
    });
    setInterval(() => this.refreshTimes(), 15000);
  }

  pick(ev) {
    const li = ev.target.closest("[data-series-id]");
    if (!li || !this.root.contains(li)) return;
    ev.preventDefault();
    this.onSelect(Number(li.dataset.seriesId));
  }

  /** Render the list; only changed items are rebuilt. */
  update(seriesList) {
    const list = newestFirst(seriesList);
    const seen = new Set();
    list.forEach((s, index) => {
      seen.add(s.id);
      const key = JSON.stringify(s);
      let item = this.items.get(s.id);
      if (!item) {
        const el = h("li", { class: "series", dataset: { seriesId: s.id }, role: "option", tabindex: "0" });
        item = { el, key: null };
        this.items.set(s.id, item);
      }
      if (item.key !== key) {
        item.el.innerHTML = seriesHtml(s);
        item.el.dataset.state = s.state;
        item.key = key;
      }
      const sel = s.id === this.selectedId;
      item.el.classList.toggle("selected", sel);
      item.el.setAttribute("aria-selected", String(sel));
      if (this.root.children[index] !== item.el) this.root.insertBefore(item.el, this.root.children[index] || null);
    });
    for (const [id, item] of this.items) {
      if (!seen.has(id)) {
        item.el.remove();
        this.items.delete(id);
      }
    }
    this.emptyEl.hidden = list.length > 0;
    this.root.hidden = list.length === 0;
  }

  select(id) {
    this.selectedId = id;
    for (const [sid, item] of this.items) {
      const sel = sid === id;
      item.el.classList.toggle("selected", sel);
      item.el.setAttribute("aria-selected", String(sel));
    }
  }

  refreshTimes() {
    const now = serverNow();
    for (const el of this.root.querySelectorAll(".received .ago")) {
      const raw = el.parentElement.dataset.t;
      if (raw) el.textContent = ago(Number(raw), now);
    }
  }
}

// Feedback on the shown result: Accept, Flag a segment (segment + reason), and the stored feedback.

import { h, $ } from "./dom.js";
import { api, ApiError, serverNow } from "./api.js";
import { clock, modelText } from "./format.js";

export class Feedback {
  constructor(root) {
    this.root = root;
    this.job = null;
    this.items = [];
    this.acceptBtn = $("#feedback-accept", root);
    this.form = $("#feedback-flag", root);
    this.select = $("select[name=segment]", this.form);
    this.reason = $("input[name=reason]", this.form);
    this.list = $("#feedback-list", root);
    this.errorEl = $("#feedback-error", root);
    this.acceptBtn.addEventListener("click", () => this.submit({ verdict: "accept", segment: null, reason: "" }));
    this.form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.submit({ verdict: "flag", segment: this.select.value || null, reason: this.reason.value.trim() });
    });
    this.setJob(null);
  }

  setJob(job) {
    const changed = job?.id !== this.job?.id;
    this.job = job;
    const enabled = Boolean(job);
    this.root.dataset.jobId = job ? String(job.id) : "";
    this.acceptBtn.disabled = !enabled;
    for (const el of this.form.elements) el.disabled = !enabled;
    if (changed) {
      this.select.replaceChildren(h("option", { value: "" }, "Choose segment\u2026"));
      for (const seg of job?.result?.segments || []) {
        this.select.append(h("option", { value: seg.name }, seg.label || seg.name));
      }
      this.showError("");
      this.items = [];
      this.render();
      if (job) this.load();
    }
  }

  async load() {
    const jobId = this.job?.id;
    try {
      const data = await api.feedback(jobId);
      if (this.job?.id !== jobId) return;
      this.items = data.feedback || [];
      this.render();
    } catch (e) {
      if (this.job?.id === jobId) this.showError(`Could not load feedback: ${e.message}`);
    }
  }

  async submit(body) {
    if (!this.job) return;
    const jobId = this.job.id;
    this.showError("");
    this.setBusy(true);
    try {
      const item = await api.postFeedback(jobId, body);
      if (this.job?.id !== jobId) return;
      if (item && !this.items.some((i) => i.id === item.id)) this.items.push(item);
      if (body.verdict === "flag") {
        this.reason.value = "";
        this.select.value = "";
      }
      this.render();
    } catch (e) {
      const msg = e instanceof ApiError ? e.detail || e.message : `Could not send: ${e.message}`;
      this.showError(msg);
    } finally {
      this.setBusy(false);
    }
  }

  setBusy(busy) {
    this.root.classList.toggle("busy", busy);
    this.acceptBtn.disabled = busy || !this.job;
    for (const el of this.form.elements) el.disabled = busy || !this.job;
  }

  showError(text) {
    this.errorEl.textContent = text;
    this.errorEl.hidden = !text;
  }

  render() {
    const segLabel = new Map((this.job?.result?.segments || []).map((s) => [s.name, s.label || s.name]));
    this.list.replaceChildren(
      ...[...this.items]
        .sort((a, b) => (a.created_at ?? 0) - (b.created_at ?? 0))
        .map((f) =>
          h("li", { class: "feedback-item", dataset: { feedbackId: f.id, verdict: f.verdict } },
            h("span", { class: "verdict" }, f.verdict === "accept" ? "\u2714 Accepted" : "\u2691 Flagged"),
            f.segment ? h("span", { class: "fb-segment" }, segLabel.get(f.segment) || f.segment) : null,
            f.reason ? h("span", { class: "fb-reason" }, `\u201c${f.reason}\u201d`) : null,
            h("span", { class: "fb-meta" }, `${clock(f.created_at, serverNow())} \u00b7 ${modelText(f.model)}`)),
        ),
    );
    this.list.hidden = this.items.length === 0;
  }
}

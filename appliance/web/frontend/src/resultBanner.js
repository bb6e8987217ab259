// Says which result is on screen (preview or full) and, when both exist, lets the user pick.

import { modelText } from "./format.js";

export class ResultBanner {
  constructor(banner, switchEl, onPick) {
    this.banner = banner;
    this.switchEl = switchEl;
    this.onPick = onPick;
    switchEl.addEventListener("click", (ev) => {
      const b = ev.target.closest("button[data-pick]");
      if (b && !b.disabled) this.onPick(b.dataset.pick);
    });
    this.show(null, { preview: null, full: null }, "");
  }

  /**
   * @param {object|null} job the job on screen
   * @param {{preview: object|null, full: object|null}} available done jobs of the series
   * @param {string} note extra status (e.g. "full result loading")
   */
  show(job, available, note) {
    const b = this.banner;
    const mode = job?.mode === "full" ? "full" : job?.mode === "preview" ? "preview" : "none";
    b.dataset.mode = mode;
    b.dataset.jobId = job ? String(job.id) : "";
    const title = b.querySelector(".banner-title");
    const model = b.querySelector(".banner-model");
    const noteEl = b.querySelector(".banner-note");
    if (mode === "preview") title.textContent = "PREVIEW - coarse result, not for diagnosis alone";
    else if (mode === "full") title.textContent = "FULL RESULT";
    else title.textContent = "No result shown";
    model.textContent = job?.result?.model ? `Model ${modelText(job.result.model)}` : "";
    noteEl.textContent = note || "";
    noteEl.hidden = !note;
    const both = Boolean(available.preview && available.full);
    this.switchEl.hidden = !both;
    for (const btn of this.switchEl.querySelectorAll("button[data-pick]")) {
      const on = btn.dataset.pick === mode;
      btn.setAttribute("aria-pressed", String(on));
      btn.disabled = !available[btn.dataset.pick];
    }
  }
}

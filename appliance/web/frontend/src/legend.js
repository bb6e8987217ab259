// Legend of the shown result: colour swatch, name, volume, visibility checkbox, opacity slider.

import { h } from "./dom.js";
import { ml, rgbCss } from "./format.js";

export class Legend {
  /**
   * @param {HTMLElement} root
   * @param {{onVisible: (name: string, v: boolean) => void, onOpacity: (name: string, v: number) => void}} handlers
   */
  constructor(root, { onVisible, onOpacity }) {
    this.root = root;
    this.onVisible = onVisible;
    this.onOpacity = onOpacity;
    this.jobId = null;
  }

  /** @param {object|null} job the shown job; @param {(name:string)=>{visible:boolean, opacity:number}} propsOf */
  show(job, propsOf) {
    this.jobId = job?.id ?? null;
    this.root.replaceChildren();
    const segments = job?.result?.segments || [];
    if (!segments.length) {
      this.root.append(h("p", { class: "muted" }, job ? "This result has no segments." : "No result shown."));
      return;
    }
    const list = h("ul", { class: "legend-list" });
    for (const seg of segments) {
      const props = propsOf(seg.name);
      const label = seg.label || seg.name;
      const visible = h("input", {
        type: "checkbox",
        class: "segment-visible",
        "aria-label": `Show ${label}`,
        title: `Show ${label}`,
      });
      visible.checked = props.visible;
      const opacity = h("input", {
        type: "range",
        class: "segment-opacity",
        min: "0",
        max: "1",
        step: "0.05",
        "aria-label": `Opacity of ${label}`,
        title: `Opacity of ${label}`,
      });
      opacity.value = String(props.opacity);
      const row = h(
        "li",
        { class: "legend-row", dataset: { segment: seg.name, visible: String(props.visible) } },
        h("label", { class: "legend-main" },
          visible,
          h("span", { class: "swatch", style: { background: rgbCss(seg.color) }, "aria-hidden": "true" }),
          h("span", { class: "segment-label", title: seg.name }, label),
          seg.experimental ? h("span", { class: "tag experimental", title: "experimental class" }, "exp.") : null,
          h("span", { class: "segment-volume" }, ml(seg.volume_ml))),
        opacity,
      );
      visible.addEventListener("change", () => {
        row.dataset.visible = String(visible.checked);
        this.onVisible(seg.name, visible.checked);
      });
      opacity.addEventListener("input", () => this.onOpacity(seg.name, Number(opacity.value)));
      list.append(row);
    }
    this.root.append(list);
    const files = job.result.files || [];
    if (files.length) {
      this.root.append(
        h("div", { class: "result-files" }, "Files: ",
          ...files.map((f, i) => [i ? ", " : "", h("a", { href: f.url, download: f.name }, f.name)])),
      );
    }
  }
}

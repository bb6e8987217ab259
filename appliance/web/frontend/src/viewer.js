// The 3D view: NiiVue with the CT volume and one mesh per segment, multiplanar slices + 3D render.

import { Niivue, NVImage, NVMesh, SLICE_TYPE, MULTIPLANAR_TYPE, SHOW_RENDER, DRAG_MODE } from "@niivue/niivue";
import { api } from "./api.js";
import { voxelize, labelNifti, labelColormap } from "./sliceOutlines.js";

/** CT window presets (HU). */
export const WINDOWS = {
  soft: { label: "Soft tissue (W400 / L40)", width: 400, level: 40 },
  lung: { label: "Lung (W1500 / L\u2212600)", width: 1500, level: -600 },
  bone: { label: "Bone (W1800 / L400)", width: 1800, level: 400 },
};

/** How the segments appear on the 2D slices. */
export const SLICE_MODES = {
  outline: { label: "Outlines" },
  filled: { label: "Filled (translucent)" },
  band: { label: "Mesh band (NiiVue)" },
  off: { label: "Off" },
};

/** How the CT appears in the 3D view. */
export const CT3D_MODES = {
  cut: { label: "Cut away in front" },
  full: { label: "Whole volume" },
  off: { label: "Hidden (meshes only)" },
};

/** Layouts offered to the user. */
export const LAYOUTS = {
  mpr: { label: "Slices + 3D" },
  render: { label: "3D only" },
  axial: { label: "Axial only" },
};

const DEFAULT_AZIMUTH = 180; // looking at the patient's front
const DEFAULT_ELEVATION = 10;
const BUFFER_CACHE_MAX = 24;
const FILL_OPACITY = 0.45; // "filled": translucent label colours over the CT
const BAND_MM = 2;

function meshFileName(segment) {
  let base = "";
  try {
    base = new URL(segment.mesh_url, window.location.href).pathname.split("/").pop() || "";
  } catch {
    base = String(segment.mesh_url).split("/").pop() || "";
  }
  base = base.replace(/\.gz$/i, "");
  const dot = base.lastIndexOf(".");
  const ext = dot > 0 ? base.slice(dot + 1) : "mz3";
  return `${segment.name}.${ext}`;
}

export class Viewer {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{onStatus?: (text: string, kind?: string) => void}} opts
   */
  constructor(canvas, { onStatus = () => {} } = {}) {
    this.canvas = canvas;
    this.onStatus = onStatus;
    this.nv = null;
    this.job = null; // the job whose result is on screen
    this.seriesId = null;
    this.meshes = new Map(); // segment name -> NVMesh
    this.segmentProps = new Map(); // segment name -> {visible, opacity}: kept across preview -> full
    this.windowKey = "soft";
    this.layout = "mpr";
    this.sliceMode = "outline";
    this.ct3d = "cut";
    this.outlines = null; // {image: NVImage, labels: Uint8Array, entries: [{name, color, visible}]}
    this.loadToken = 0;
    this.cache = new Map(); // url -> ArrayBuffer
    this.inflight = new Map(); // url -> Promise<ArrayBuffer>
  }

  async init() {
    const nv = new Niivue({
      backColor: [0.06, 0.07, 0.09, 1],
      crosshairColor: [0.2, 0.85, 1.0, 0.7],
      crosshairWidth: 1,
      show3Dcrosshair: false,
      isRadiologicalConvention: true, // patient's left on the screen's right, as radiologists read CT
      isSliceMM: true, // world space: meshes are cut by the 2D slices
      meshThicknessOn2D: 0, // the slices show the segments as label outlines (see sliceOutlines.js)
      atlasOutline: 1,
      multiplanarLayout: MULTIPLANAR_TYPE.GRID,
      multiplanarShowRender: SHOW_RENDER.ALWAYS,
      multiplanarPadPixels: 4,
      sliceType: SLICE_TYPE.MULTIPLANAR,
      dragMode: DRAG_MODE.pan,
      dragAndDropEnabled: false,
      isOrientCube: true,
      isColorbar: false,
      loadingText: "",
      logLevel: "warn",
      fontMinPx: 15,
      clipPlaneColor: [0, 0, 0, 0],
    });
    this.nv = nv;
    this.exp = globalThis.__exp || {};
    nv.__skipGradient = !this.exp.gradient;
    await nv.attachToCanvas(this.canvas);
    nv.setRenderAzimuthElevation(DEFAULT_AZIMUTH, DEFAULT_ELEVATION);
    return this;
  }

  // --- loading --------------------------------------------------------------------------------

  async fetchBuffer(url, signal) {
    if (this.cache.has(url)) return this.cache.get(url);
    if (!this.inflight.has(url)) {
      const p = api.buffer(url, signal).then(
        (buf) => {
          this.inflight.delete(url);
          this.cache.set(url, buf);
          while (this.cache.size > BUFFER_CACHE_MAX) this.cache.delete(this.cache.keys().next().value);
          return buf;
        },
        (e) => {
          this.inflight.delete(url);
          throw e;
        },
      );
      this.inflight.set(url, p);
    }
    return this.inflight.get(url);
  }

  /**
   * Show the result of `job` (a done Job with `result`). Resolves true once its volume and meshes
   * are drawn, false when a later call superseded it. Keeps the camera when the series is the same.
   */
  async show(job, seriesId) {
    const token = ++this.loadToken;
    const nv = this.nv;
    const t = [performance.now()];
    const result = job.result;
    const segments = (result.segments || []).filter((s) => s.mesh_url);
    this.onStatus(`Loading ${job.mode === "full" ? "full result" : "preview"}\u2026`, "loading");
    const [ctBuf, ...meshBufs] = await Promise.all([
      this.fetchBuffer(result.ct_url),
      ...segments.map((s) => this.fetchBuffer(s.mesh_url)),
    ]);
    if (token !== this.loadToken) return false;
    t.push(performance.now());

    const volume = await NVImage.loadFromUrl({
      url: result.ct_url,
      name: "ct.nii.gz",
      buffer: ctBuf.slice(0),
      colormap: "gray",
      trustCalMinMax: false,
    });
    const meshes = [];
    for (let i = 0; i < segments.length; i++) {
      const seg = segments[i];
      const props = this.segmentProps.get(seg.name) || { visible: true, opacity: 1 };
      const color = Array.isArray(seg.color) ? seg.color : [200, 200, 200];
      const mesh = await NVMesh.loadFromUrl({
        url: seg.mesh_url,
        name: meshFileName(seg),
        buffer: meshBufs[i].slice(0),
        gl: nv.gl,
        rgba255: [color[0], color[1], color[2], 255],
        opacity: props.opacity,
        visible: props.visible,
      });
      meshes.push([seg.name, mesh]);
    }
    t.push(performance.now());
    let outlines = null;
    if (!this.exp.lateOutlines) {
      try {
        outlines = await this.buildOutlines(volume, segments, meshes);
      } catch (e) {
        console.warn("isonode: no slice outlines", e);
      }
    }
    if (token !== this.loadToken) {
      for (const [, m] of meshes) m.unloadMesh?.(nv.gl);
      return false;
    }

    t.push(performance.now());
    // swap in one task: no frame shows a half-replaced scene, and only one frame is drawn
    const sameSeries = this.seriesId === seriesId && nv.volumes.length > 0;
    const camera = sameSeries ? this.saveCamera() : null;
    this.batch(() => {
      for (const m of [...nv.meshes]) nv.removeMesh(m);
      for (const v of [...nv.volumes]) nv.removeVolume(v);
      nv.addVolume(volume);
      this.outlines = outlines;
      if (outlines) nv.addVolume(outlines.image);
      this.meshes.clear();
      for (const [name, mesh] of meshes) {
        nv.addMesh(mesh);
        this.meshes.set(name, mesh);
      }
      this.job = job;
      this.seriesId = seriesId;
      this.applyWindow();
      this.applySliceMode();
      this.applyCt3d();
      if (camera) this.restoreCamera(camera);
      else this.resetView();
    });
    t.push(performance.now());
    // let the browser present the frame before saying "drawn"
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    if (token !== this.loadToken) return false;
    t.push(performance.now());
    this.timings = { fetch: t[1] - t[0], parse: t[2] - t[1], outlines: t[3] - t[2], swap: t[4] - t[3], present: t[5] - t[4] };
    this.onStatus("", "");
    if (this.exp.lateOutlines) setTimeout(() => this.addOutlines(token, volume, segments, meshes), 0);
    return true;
  }

  async addOutlines(token, volume, segments, meshes) {
    const t0 = performance.now();
    let outlines;
    try {
      outlines = await this.buildOutlines(volume, segments, meshes);
    } catch (e) {
      console.warn("isonode: no slice outlines", e);
      return;
    }
    if (token !== this.loadToken) return;
    const t1 = performance.now();
    this.batch(() => {
      this.nv.addVolume(outlines.image);
      this.outlines = outlines;
      this.applySliceMode();
    }, [1]);
    const t2 = performance.now();
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    if (token !== this.loadToken) return;
    Object.assign(this.timings, { lateOutlines: t1 - t0, lateSwap: t2 - t1, latePresent: performance.now() - t2 });
  }

  /**
   * Run `fn` (several NiiVue calls, each of which re-uploads every volume to the GPU and redraws)
   * and do that work once at the end. Adding 2 volumes and 8 meshes otherwise queues a dozen
   * texture rebuilds: seconds on a tablet GPU or in software rendering.
   */
  batch(fn, layers = null) {
    const nv = this.nv;
    if (this.batching) return fn();
    if (!this.exp.layers) layers = null;
    this.batching = true;
    let update = false;
    nv.updateGLVolume = () => {
      update = true;
    }; // own property shadows the prototype method until deleted below
    const wasBusy = nv.isBusy;
    nv.isBusy = true; // NiiVue's drawScene only notes a refresh while busy
    try {
      return fn();
    } finally {
      delete nv.updateGLVolume;
      nv.isBusy = wasBusy;
      this.batching = false;
      if (update && layers && nv.back) {
        for (const i of layers) if (nv.volumes[i]) nv.refreshLayers(nv.volumes[i], i);
        nv.drawScene();
      } else if (update) nv.updateGLVolume();
      else nv.drawScene();
    }
  }

  clear() {
    ++this.loadToken;
    const nv = this.nv;
    if (!nv) return;
    this.batch(() => {
      for (const m of [...nv.meshes]) nv.removeMesh(m);
      for (const v of [...nv.volumes]) nv.removeVolume(v);
    });
    this.meshes.clear();
    this.outlines = null;
    this.job = null;
    this.seriesId = null;
    nv.drawScene();
  }

  /** The segments as a label volume on the CT grid, for their cross-sections on the slices. */
  async buildOutlines(volume, segments, meshes) {
    const hdr = volume.hdr;
    const dims = [hdr.dims[1], hdr.dims[2], hdr.dims[3]];
    const affine = hdr.affine.flat();
    const t0 = performance.now();
    const labels = voxelize(
      { dims, affine },
      meshes.map(([, mesh], i) => ({ pts: mesh.pts, tris: mesh.tris, label: i + 1 })),
    );
    const entries = segments.map((seg) => ({
      name: seg.name,
      color: Array.isArray(seg.color) ? seg.color : [200, 200, 200],
      visible: this.segmentProp(seg.name).visible,
    }));
    const image = await NVImage.loadFromUrl({
      url: "outlines.nii",
      name: "outlines.nii",
      buffer: labelNifti(dims, [hdr.pixDims[1], hdr.pixDims[2], hdr.pixDims[3]], affine, labels),
    });
    image.setColormapLabel(labelColormap(entries, 0));
    this.outlineMs = Math.round(performance.now() - t0);
    return { image, labels, entries };
  }

  // --- camera -----------------------------------------------------------------------------------

  saveCamera() {
    const s = this.nv.scene;
    return {
      azimuth: s.renderAzimuth,
      elevation: s.renderElevation,
      scale: s.volScaleMultiplier,
      pan: Array.from(s.pan2Dxyzmm),
      crosshairMM: this.nv.back ? Array.from(this.nv.frac2mm(s.crosshairPos)).slice(0, 3) : null,
    };
  }

  restoreCamera(c) {
    const nv = this.nv;
    nv.scene.renderAzimuth = c.azimuth;
    nv.scene.renderElevation = c.elevation;
    nv.scene.volScaleMultiplier = c.scale;
    nv.scene.pan2Dxyzmm = c.pan;
    if (c.crosshairMM && nv.back) {
      const f = nv.mm2frac(c.crosshairMM);
      if (f.every((x) => Number.isFinite(x) && x >= 0 && x <= 1)) nv.scene.crosshairPos = f;
    }
    nv.drawScene();
  }

  resetView() {
    const nv = this.nv;
    nv.scene.volScaleMultiplier = 1;
    nv.scene.pan2Dxyzmm = [0, 0, 0, 1];
    nv.scene.crosshairPos = [0.5, 0.5, 0.5];
    nv.setRenderAzimuthElevation(DEFAULT_AZIMUTH, DEFAULT_ELEVATION);
  }

  // --- display settings -------------------------------------------------------------------------

  setWindow(key) {
    if (!WINDOWS[key]) return;
    this.windowKey = key;
    this.batch(() => this.applyWindow(), [0]);
  }

  applyWindow() {
    const v = this.nv?.volumes?.[0];
    if (!v) return;
    const w = WINDOWS[this.windowKey];
    v.cal_min = w.level - w.width / 2;
    v.cal_max = w.level + w.width / 2;
    this.nv.updateGLVolume();
  }

  setSliceMode(key) {
    if (!SLICE_MODES[key]) return;
    this.sliceMode = key;
    this.batch(() => this.applySliceMode(), [1]);
  }

  applySliceMode() {
    const nv = this.nv;
    const mode = this.sliceMode;
    nv.opts.meshThicknessOn2D = mode === "band" ? BAND_MM : 0;
    const o = this.outlines;
    if (o) {
      o.image.opacity = mode === "outline" ? 1 : mode === "filled" ? FILL_OPACITY : 0;
      this.refreshOutlineLabels();
    }
    nv.updateGLVolume();
  }

  /** Hidden segments leave the label volume (NiiVue draws label borders whatever their alpha). */
  refreshOutlineLabels() {
    const o = this.outlines;
    if (!o) return;
    const hidden = new Set();
    o.entries.forEach((e, i) => {
      e.visible = this.segmentProp(e.name).visible && this.segmentProp(e.name).opacity > 0;
      if (!e.visible) hidden.add(i + 1);
    });
    let img = o.labels;
    if (hidden.size) {
      img = o.labels.slice();
      for (let i = 0; i < img.length; i++) if (hidden.has(img[i])) img[i] = 0;
    }
    o.image.img = img;
    o.image.setColormapLabel(labelColormap(o.entries, this.sliceMode === "filled" ? 1 : 0));
  }

  setCt3d(key) {
    if (!CT3D_MODES[key]) return;
    this.ct3d = key;
    this.applyCt3d();
  }

  applyCt3d() {
    const nv = this.nv;
    // clip plane [depth, azimuth, elevation]: the half of the CT facing the default camera is cut
    // away; depth 2 lies outside the volume (nothing cut), depth -2 cuts all of it
    if (this.ct3d === "cut") nv.setClipPlane([0, 180, 0]);
    else if (this.ct3d === "full") nv.setClipPlane([2, 0, 0]);
    else nv.setClipPlane([-2, 0, 0]);
    nv.drawScene();
  }

  setLayout(key) {
    const nv = this.nv;
    this.layout = key;
    if (key === "render") nv.setSliceType(SLICE_TYPE.RENDER);
    else if (key === "axial") nv.setSliceType(SLICE_TYPE.AXIAL);
    else nv.setSliceType(SLICE_TYPE.MULTIPLANAR);
  }

  segmentProp(name) {
    if (!this.segmentProps.has(name)) this.segmentProps.set(name, { visible: true, opacity: 1 });
    return this.segmentProps.get(name);
  }

  setSegmentVisible(name, visible) {
    this.segmentProp(name).visible = visible;
    const m = this.meshes.get(name);
    this.batch(() => {
      if (m) this.nv.setMeshProperty(m.id, "visible", visible);
      this.refreshOutlineLabels();
      this.nv.updateGLVolume();
    }, [1]);
  }

  setSegmentOpacity(name, opacity) {
    const before = this.segmentProp(name).opacity;
    this.segmentProp(name).opacity = opacity;
    const m = this.meshes.get(name);
    this.batch(() => {
      if (m) this.nv.setMeshProperty(m.id, "opacity", opacity);
      if ((before > 0) !== (opacity > 0)) {
        this.refreshOutlineLabels();
        this.nv.updateGLVolume();
      }
    }, (before > 0) !== (opacity > 0) ? [1] : []);
  }

  /** Forget per-segment settings (a different series was selected). */
  resetSegmentProps() {
    this.segmentProps.clear();
  }
}

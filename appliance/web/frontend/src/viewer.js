// The 3D view: NiiVue with the CT volume and one mesh per segment, multiplanar slices + 3D render.

import { Niivue, NVImage, NVMesh, SLICE_TYPE, MULTIPLANAR_TYPE, SHOW_RENDER, DRAG_MODE } from "@niivue/niivue";
import { api } from "./api.js";
import { voxelize, labelNifti, labelColormap, niftiBytes } from "./sliceOutlines.js";

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
   * @param {{onStatus?: (text: string, kind?: string) => void, onOutlines?: (job: object) => void}} opts
   */
  constructor(canvas, { onStatus = () => {}, onOutlines = () => {} } = {}) {
    this.canvas = canvas;
    this.onStatus = onStatus;
    this.onOutlines = onOutlines; // (job): its slice outlines are drawn
    this.nv = null;
    this.job = null; // the job whose result is on screen
    this.seriesId = null;
    this.meshes = new Map(); // segment name -> NVMesh
    this.segmentProps = new Map(); // segment name -> {visible, opacity}: kept across preview -> full
    this.windowKey = "soft";
    this.layout = "mpr";
    this.sliceMode = "outline";
    this.ct3d = "cut";
    this.outlines = null; // {image: NVImage, labels: Uint8Array, entries: [{name, color, visible}], jobId}
    this.loadToken = 0;
    this.shows = 0; // show() calls so far (the warm-up stands back once a result is coming)
    this.warm = null; // Promise: the warm-up draw, done before the first real one
    this.worker = undefined; // the outline worker (null: unavailable, voxelize here)
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
    // The slice outlines are a label overlay for the 2D slices only: in the 3D view NiiVue would ray
    // cast it too, a second march per pixel (about half of every 3D frame in software WebGL) that
    // only speckles the meshes' surfaces with the label borders and ignores the segment opacity.
    // Every refresh of a layer sets the overlay count for the 3D shader; it is set back to none.
    nv.refreshLayers = (item, layer) => {
      Niivue.prototype.refreshLayers.call(nv, item, layer);
      const sh = nv.renderShader;
      if (sh?.uniforms?.overlays) {
        sh.use(nv.gl);
        nv.gl.uniform1f(sh.uniforms.overlays, 0);
      }
    };
    await nv.attachToCanvas(this.canvas);
    nv.setRenderAzimuthElevation(DEFAULT_AZIMUTH, DEFAULT_ELEVATION);
    this.warm = this.warmUp().catch((e) => console.warn("isonode: warm-up", e));
    return this;
  }

  /**
   * Draw a tiny stand-in of the real scene once (an int16 CT, a label overlay, a mesh, the same
   * layout and clip plane) and remove it in the same task, so it is never presented: the shaders and
   * the GPU pipelines of the first result are then compiled while the page waits for it, not in its
   * first frame (software WebGL compiles a pipeline at its first draw).
   */
  async warmUp() {
    const t0 = performance.now();
    const nv = this.nv;
    const n = 8;
    const affine = [4, 0, 0, -16, 0, 4, 0, -16, 0, 0, 4, -16, 0, 0, 0, 1];
    const ct = new Int16Array(n * n * n).map((_, i) => (i % 7) * 200 - 600);
    const labels = new Uint8Array(n * n * n);
    for (let k = 2; k < 6; k++) for (let j = 2; j < 6; j++) labels.fill(1, 2 + n * (j + n * k), 6 + n * (j + n * k));
    const volume = await NVImage.loadFromUrl({ url: "warm.nii", name: "warm.nii", buffer: niftiBytes([n, n, n], [4, 4, 4], affine, ct), colormap: "gray" });
    const image = await NVImage.loadFromUrl({ url: "warm-labels.nii", name: "warm-labels.nii", buffer: labelNifti([n, n, n], [4, 4, 4], affine, labels) });
    image.setColormapLabel(labelColormap([{ name: "warm", color: [200, 100, 50], visible: true }], 0));
    const pts = new Float32Array([8, 0, 0, -8, 0, 0, 0, 8, 0, 0, -8, 0, 0, 0, 8, 0, 0, -8]);
    const tris = new Uint32Array([0, 2, 4, 2, 1, 4, 1, 3, 4, 3, 0, 4, 2, 0, 5, 1, 2, 5, 3, 1, 5, 0, 3, 5]);
    const mesh = new NVMesh(pts, tris, "warm.mz3", new Uint8Array([200, 100, 50, 255]), 1, true, nv.gl);
    if (this.shows > 0 || nv.volumes.length || nv.meshes.length) return; // a result came first
    this.batch(() => {
      nv.addVolume(volume);
      nv.addVolume(image);
      nv.addMesh(mesh);
      this.applyCt3d();
    });
    this.batch(() => {
      nv.removeMesh(mesh);
      for (const v of [...nv.volumes]) nv.removeVolume(v);
    });
    // the GPU works through it while the page waits; a result arriving now waits for this
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    this.warmMs = Math.round(performance.now() - t0);
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
    this.shows++;
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
    if (this.warm) await this.warm;
    if (token !== this.loadToken) {
      for (const [, m] of meshes) m.unloadMesh?.(nv.gl);
      return false;
    }

    t.push(performance.now());
    // swap in one task: no frame shows a half-replaced scene, and only one frame is drawn. The
    // slice outlines follow once this frame is on screen (addOutlines): the meshes come first.
    const sameSeries = this.seriesId === seriesId && nv.volumes.length > 0;
    const camera = sameSeries ? this.saveCamera() : null;
    this.batch(() => {
      for (const m of [...nv.meshes]) nv.removeMesh(m);
      for (const v of [...nv.volumes]) nv.removeVolume(v);
      nv.addVolume(volume);
      this.outlines = null;
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
    this.timings = {
      startedAt: performance.timeOrigin + t[0], // epoch ms, to line up with the server's clock
      fetch: t[1] - t[0],
      parse: t[2] - t[1],
      warmWait: t[3] - t[2],
      swap: t[4] - t[3],
      present: t[5] - t[4],
    };
    this.onStatus("", "");
    setTimeout(() => this.addOutlines(token, job, volume, segments, meshes), 0);
    return true;
  }

  /** The slice outlines of the result just shown (`token`), added as label overlay (layer 1). */
  async addOutlines(token, job, volume, segments, meshes) {
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
    outlines.jobId = job.id;
    this.batch(() => {
      this.nv.addVolume(outlines.image);
      this.outlines = outlines;
      this.applySliceMode();
    }, [1]);
    const t2 = performance.now();
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    if (token !== this.loadToken) return;
    Object.assign(this.timings, { outlines: t1 - t0, outlinesSwap: t2 - t1, outlinesPresent: performance.now() - t2 });
    this.onOutlines(job);
  }

  /**
   * Run `fn` (several NiiVue calls, each of which re-uploads every volume to the GPU and redraws)
   * and do that work once at the end. Adding 2 volumes and 8 meshes otherwise queues a dozen
   * texture rebuilds: seconds on a tablet GPU or in software rendering. With `layers` (indices),
   * only those volumes are rebuilt, when `fn` changed nothing else: the CT (0) and the outline
   * overlay (1) are independent textures, and a legend toggle need not re-upload the CT.
   */
  batch(fn, layers = null) {
    const nv = this.nv;
    if (this.batching) return fn();
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
    const labels = await this.voxelizeOff(
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

  /**
   * voxelize() in a worker (static/outlines.js), off the page's thread: the page stays responsive
   * while the meshes are filled (0.2-1 s in the benchmark); on the page's thread if no worker starts.
   */
  voxelizeOff(grid, meshes) {
    if (this.worker === undefined) {
      try {
        this.worker = new Worker(new URL("outlines.js", import.meta.url));
        this.worker.onerror = (e) => {
          console.warn("isonode: outline worker", e.message || e);
          e.preventDefault?.();
          const pending = this.workerJobs;
          this.worker.terminate();
          this.worker = null;
          this.workerJobs = new Map();
          for (const [, job] of pending) {
            try {
              job.resolve(voxelize(job.grid, job.meshes));
            } catch (err) {
              job.reject(err);
            }
          }
        };
        this.worker.onmessage = (e) => {
          const job = this.workerJobs.get(e.data.id);
          if (!job) return;
          this.workerJobs.delete(e.data.id);
          if (e.data.error) job.reject(new Error(e.data.error));
          else job.resolve(e.data.labels);
        };
        this.workerJobs = new Map();
        this.workerSeq = 0;
      } catch (e) {
        console.warn("isonode: no outline worker", e);
        this.worker = null;
      }
    }
    if (!this.worker) return Promise.resolve(voxelize(grid, meshes));
    return new Promise((resolve, reject) => {
      const id = ++this.workerSeq;
      // copies: the meshes keep their arrays
      const msg = { id, grid, meshes: meshes.map((m) => ({ pts: m.pts, tris: m.tris, label: m.label })) };
      this.workerJobs.set(id, { resolve, reject, grid, meshes });
      this.worker.postMessage(msg);
    });
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
    if (this.sliceMode === "off" || this.sliceMode === "band") {
      // NiiVue draws label borders whatever the layer's opacity: an empty volume shows none
      if (!o.empty) o.empty = new Uint8Array(o.labels.length);
      img = o.empty;
    } else if (hidden.size) {
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

// The slice outlines' label volume, filled off the page's thread (built as static/outlines.js).
// In: {id, grid: {dims, affine}, meshes: [{pts, tris, label}]}; out: {id, labels} (a transferred
// Uint8Array) or {id, error}. See voxelize() in sliceOutlines.js.
import { voxelize } from "./sliceOutlines.js";

self.onmessage = (e) => {
  const { id, grid, meshes } = e.data;
  try {
    const labels = voxelize(grid, meshes);
    self.postMessage({ id, labels }, [labels.buffer]);
  } catch (err) {
    self.postMessage({ id, error: String(err?.message || err) });
  }
};

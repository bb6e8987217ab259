// Cross-sections of the meshes on the 2D slices.
//
// NiiVue draws a mesh on a 2D slice as the band of triangles within a few mm of the slice; walls
// that stand perpendicular to the slice are seen edge-on and vanish, so an organ's outline breaks
// up exactly where it matters. Instead each (closed) mesh is filled into a label volume on the CT
// grid (parity fill along the slice axis) and shown as a NiiVue label overlay with outlines: the
// slices then show where every surface cuts them, whatever its tilt. The meshes stay the 3D view.

/** 4x4 row-major inverse (general). */
export function invert4(m) {
  const a = m.flat ? m.flat() : Array.from(m);
  const inv = new Array(16);
  inv[0] = a[5] * a[10] * a[15] - a[5] * a[11] * a[14] - a[9] * a[6] * a[15] + a[9] * a[7] * a[14] + a[13] * a[6] * a[11] - a[13] * a[7] * a[10];
  inv[4] = -a[4] * a[10] * a[15] + a[4] * a[11] * a[14] + a[8] * a[6] * a[15] - a[8] * a[7] * a[14] - a[12] * a[6] * a[11] + a[12] * a[7] * a[10];
  inv[8] = a[4] * a[9] * a[15] - a[4] * a[11] * a[13] - a[8] * a[5] * a[15] + a[8] * a[7] * a[13] + a[12] * a[5] * a[11] - a[12] * a[7] * a[9];
  inv[12] = -a[4] * a[9] * a[14] + a[4] * a[10] * a[13] + a[8] * a[5] * a[14] - a[8] * a[6] * a[13] - a[12] * a[5] * a[10] + a[12] * a[6] * a[9];
  inv[1] = -a[1] * a[10] * a[15] + a[1] * a[11] * a[14] + a[9] * a[2] * a[15] - a[9] * a[3] * a[14] - a[13] * a[2] * a[11] + a[13] * a[3] * a[10];
  inv[5] = a[0] * a[10] * a[15] - a[0] * a[11] * a[14] - a[8] * a[2] * a[15] + a[8] * a[3] * a[14] + a[12] * a[2] * a[11] - a[12] * a[3] * a[10];
  inv[9] = -a[0] * a[9] * a[15] + a[0] * a[11] * a[13] + a[8] * a[1] * a[15] - a[8] * a[3] * a[13] - a[12] * a[1] * a[11] + a[12] * a[3] * a[9];
  inv[13] = a[0] * a[9] * a[14] - a[0] * a[10] * a[13] - a[8] * a[1] * a[14] + a[8] * a[2] * a[13] + a[12] * a[1] * a[10] - a[12] * a[2] * a[9];
  inv[2] = a[1] * a[6] * a[15] - a[1] * a[7] * a[14] - a[5] * a[2] * a[15] + a[5] * a[3] * a[14] + a[13] * a[2] * a[7] - a[13] * a[3] * a[6];
  inv[6] = -a[0] * a[6] * a[15] + a[0] * a[7] * a[14] + a[4] * a[2] * a[15] - a[4] * a[3] * a[14] - a[12] * a[2] * a[7] + a[12] * a[3] * a[6];
  inv[10] = a[0] * a[5] * a[15] - a[0] * a[7] * a[13] - a[4] * a[1] * a[15] + a[4] * a[3] * a[13] + a[12] * a[1] * a[7] - a[12] * a[3] * a[5];
  inv[14] = -a[0] * a[5] * a[14] + a[0] * a[6] * a[13] + a[4] * a[1] * a[14] - a[4] * a[2] * a[13] - a[12] * a[1] * a[6] + a[12] * a[2] * a[5];
  inv[3] = -a[1] * a[6] * a[11] + a[1] * a[7] * a[10] + a[5] * a[2] * a[11] - a[5] * a[3] * a[10] - a[9] * a[2] * a[7] + a[9] * a[3] * a[6];
  inv[7] = a[0] * a[6] * a[11] - a[0] * a[7] * a[10] - a[4] * a[2] * a[11] + a[4] * a[3] * a[10] + a[8] * a[2] * a[7] - a[8] * a[3] * a[6];
  inv[11] = -a[0] * a[5] * a[11] + a[0] * a[7] * a[9] + a[4] * a[1] * a[11] - a[4] * a[3] * a[9] - a[8] * a[1] * a[7] + a[8] * a[3] * a[5];
  inv[15] = a[0] * a[5] * a[10] - a[0] * a[6] * a[9] - a[4] * a[1] * a[10] + a[4] * a[2] * a[9] + a[8] * a[1] * a[6] - a[8] * a[2] * a[5];
  const det = a[0] * inv[0] + a[1] * inv[4] + a[2] * inv[8] + a[3] * inv[12];
  if (!det) throw new Error("singular affine");
  return inv.map((v) => v / det);
}

/**
 * Fill closed triangle meshes into a label volume.
 * @param {{dims: number[], affine: number[]}} grid dims [nx, ny, nz]; affine: 16 numbers, row-major voxel -> mm
 * @param {{pts: Float32Array, tris: Uint32Array|Int32Array, label: number}[]} meshes vertices in mm
 * @returns {Uint8Array} labels, x fastest (NIfTI order); later meshes win where they overlap
 */
export function voxelize(grid, meshes) {
  const [nx, ny, nz] = grid.dims;
  const inv = invert4(grid.affine);
  const out = new Uint8Array(nx * ny * nz);
  const column = new Float64Array(4096);
  for (const { pts, tris, label } of meshes) {
    const nv = pts.length / 3;
    const vi = new Float64Array(nv * 3);
    for (let p = 0; p < nv; p++) {
      const x = pts[3 * p];
      const y = pts[3 * p + 1];
      const z = pts[3 * p + 2];
      vi[3 * p] = inv[0] * x + inv[1] * y + inv[2] * z + inv[3];
      vi[3 * p + 1] = inv[4] * x + inv[5] * y + inv[6] * z + inv[7];
      vi[3 * p + 2] = inv[8] * x + inv[9] * y + inv[10] * z + inv[11];
    }
    // crossings of each (i, j) column by the surface, as k positions
    const hits = new Map(); // i + j * nx -> number[]
    for (let t = 0; t < tris.length; t += 3) {
      const a = 3 * tris[t];
      const b = 3 * tris[t + 1];
      const c = 3 * tris[t + 2];
      const ax = vi[a], ay = vi[a + 1], az = vi[a + 2];
      const bx = vi[b], by = vi[b + 1], bz = vi[b + 2];
      const cx = vi[c], cy = vi[c + 1], cz = vi[c + 2];
      const det = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy);
      if (Math.abs(det) < 1e-12) continue; // edge-on to the column direction
      // loose bounds (vertices sit on columns, give or take float noise): the test below decides
      const i0 = Math.max(0, Math.floor(Math.min(ax, bx, cx)));
      const i1 = Math.min(nx - 1, Math.ceil(Math.max(ax, bx, cx)));
      const j0 = Math.max(0, Math.floor(Math.min(ay, by, cy)));
      const j1 = Math.min(ny - 1, Math.ceil(Math.max(ay, by, cy)));
      for (let j = j0; j <= j1; j++) {
        // a tiny offset keeps sample rays off vertices and edges shared by two triangles
        const py = j + 1.37e-5;
        for (let i = i0; i <= i1; i++) {
          const px = i + 2.91e-5;
          const l1 = ((by - cy) * (px - cx) + (cx - bx) * (py - cy)) / det;
          const l2 = ((cy - ay) * (px - cx) + (ax - cx) * (py - cy)) / det;
          const l3 = 1 - l1 - l2;
          if (l1 < 0 || l2 < 0 || l3 < 0) continue;
          const k = l1 * az + l2 * bz + l3 * cz;
          const key = i + j * nx;
          const list = hits.get(key);
          if (list) list.push(k);
          else hits.set(key, [k]);
        }
      }
    }
    const slab = nx * ny;
    for (const [key, list] of hits) {
      const n = list.length - (list.length % 2); // an open surface: ignore the odd crossing
      if (n < 2) continue;
      const ks = list.length > column.length ? new Float64Array(list) : column.subarray(0, list.length);
      if (ks.buffer === column.buffer) ks.set(list);
      ks.sort();
      for (let q = 0; q + 1 < n; q += 2) {
        const k0 = Math.max(0, Math.ceil(ks[q]));
        const k1 = Math.min(nz - 1, Math.floor(ks[q + 1]));
        for (let k = k0; k <= k1; k++) out[key + k * slab] = label;
      }
    }
  }
  return out;
}

/** A NIfTI-1 (uint8, NIFTI_INTENT_LABEL) file holding `labels` on the grid with `affine` as sform. */
export function labelNifti(dims, pixdim, affine, labels) {
  return niftiBytes(dims, pixdim, affine, labels, 1002);
}

const NIFTI_TYPES = new Map([
  [Uint8Array, [2, 8]],
  [Int16Array, [4, 16]],
  [Int32Array, [8, 32]],
  [Float32Array, [16, 32]],
]);

/**
 * A NIfTI-1 file holding `data` (a typed array: uint8, int16, int32 or float32; x fastest) on the
 * grid with `affine` (16 numbers, row-major voxel -> mm) as sform; `intent` e.g. 1002 for labels.
 */
export function niftiBytes(dims, pixdim, affine, data, intent = 0) {
  const type = NIFTI_TYPES.get(data.constructor);
  if (!type) throw new Error(`no NIfTI datatype for ${data.constructor.name}`);
  const buf = new ArrayBuffer(352 + data.byteLength);
  const v = new DataView(buf);
  v.setInt32(0, 348, true); // sizeof_hdr
  const dim = [3, dims[0], dims[1], dims[2], 1, 1, 1, 1];
  dim.forEach((d, i) => v.setInt16(40 + 2 * i, d, true));
  v.setInt16(68, intent, true); // intent_code (1002: NIFTI_INTENT_LABEL)
  v.setInt16(70, type[0], true); // datatype
  v.setInt16(72, type[1], true); // bitpix
  const pd = [1, pixdim[0], pixdim[1], pixdim[2], 1, 1, 1, 1];
  pd.forEach((d, i) => v.setFloat32(76 + 4 * i, d, true));
  v.setFloat32(108, 352, true); // vox_offset
  v.setFloat32(112, 1, true); // scl_slope
  v.setFloat32(116, 0, true); // scl_inter
  v.setUint8(123, 10); // xyzt_units: mm, s
  v.setInt16(252, 0, true); // qform_code
  v.setInt16(254, 2, true); // sform_code: aligned to the CT
  for (let r = 0; r < 3; r++) for (let c = 0; c < 4; c++) v.setFloat32(280 + 16 * r + 4 * c, affine[4 * r + c], true);
  [0x6e, 0x2b, 0x31, 0].forEach((b, i) => v.setUint8(344 + i, b)); // "n+1\0"
  new Uint8Array(buf, 352).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return buf;
}

/**
 * NiiVue label colour map: label n (1-based) gets colours[n - 1]; alpha 0 hides a label's fill.
 * @param {{color: number[], visible: boolean, name: string}[]} entries
 */
export function labelColormap(entries, fillAlpha) {
  const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [""] };
  entries.forEach((e, n) => {
    const [r, g, b] = e.color;
    cm.R.push(r);
    cm.G.push(g);
    cm.B.push(b);
    cm.A.push(e.visible ? Math.round(255 * fillAlpha) : 0);
    cm.I.push(n + 1);
    cm.labels.push(e.name);
  });
  return cm;
}

// Unit tests of the page's pure modules (no browser): node --test test/
import { test } from "node:test";
import assert from "node:assert/strict";
import { personName, seconds, bytes, ml, esc, dicomDate } from "../src/format.js";
import { jobToShow, latestJobs, resultJobs, newestFirst } from "../src/selection.js";
import { voxelize, labelNifti, niftiBytes, invert4 } from "../src/sliceOutlines.js";

test("DICOM person names", () => {
  assert.equal(personName("DOE^JOHN"), "DOE, JOHN");
  assert.equal(personName("ROE^JANE^M"), "ROE, JANE M");
  assert.equal(personName("SMITH^ANNA^^DR^PHD"), "SMITH, DR ANNA, PHD");
  assert.equal(personName("Yamada^Tarou=山田^太郎"), "Yamada, Tarou");
  assert.equal(personName("ANONYMOUS"), "ANONYMOUS");
  assert.equal(personName(""), "(no name)");
  assert.equal(personName(null), "(no name)");
});

test("formatting", () => {
  assert.equal(seconds(0.4231), "0.42 s");
  assert.equal(seconds(31.72), "31.7 s");
  assert.equal(seconds(null), "\u2013");
  assert.equal(bytes(412_300_000_000), "412 GB");
  assert.equal(bytes(3_400_000), "3.4 MB");
  assert.equal(ml(2100.54), "2100.5 ml");
  assert.equal(esc('<a href="x">&'), "&lt;a href=&quot;x&quot;&gt;&amp;");
  assert.equal(dicomDate("20261205"), "2026-12-05");
});

const job = (id, mode, state, result = state === "done" ? {} : null) => ({ id, mode, state, result });

test("which result is shown", () => {
  const s = { jobs: [job(5, "preview", "done"), job(6, "full", "running")] };
  assert.equal(jobToShow(s).id, 5);
  s.jobs[1] = job(6, "full", "done");
  assert.equal(jobToShow(s).id, 6, "full replaces preview when done");
  assert.equal(jobToShow(s, "preview").id, 5, "the user's pick wins");
  assert.equal(jobToShow({ jobs: [job(5, "preview", "failed")] }), null);
  const retried = { jobs: [job(5, "preview", "done"), job(9, "preview", "done"), job(6, "full", "failed")] };
  assert.equal(jobToShow(retried).id, 9, "newest done job of a mode");
  assert.equal(jobToShow(retried, "full").id, 9, "a pick without a result falls back");
  assert.equal(latestJobs(retried).full.id, 6);
  assert.equal(resultJobs(retried).full, null);
});

test("series newest first", () => {
  const l = newestFirst([{ id: 1, first_received_at: 10 }, { id: 3, first_received_at: 30 }, { id: 2, first_received_at: 30 }]);
  assert.deepEqual(l.map((s) => s.id), [3, 2, 1]);
});

function cube(lo, hi) {
  const c = [[lo, lo, lo], [hi, lo, lo], [hi, hi, lo], [lo, hi, lo], [lo, lo, hi], [hi, lo, hi], [hi, hi, hi], [lo, hi, hi]];
  const f = [[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4], [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]];
  return { pts: new Float32Array(c.flat()), tris: new Uint32Array(f.flat()) };
}

test("voxelize fills a closed mesh on an oblique-free grid", () => {
  // voxel (i,j,k) -> mm: 2 mm in x, 2 in y, 3 in z, shifted
  const affine = [2, 0, 0, -10, 0, 2, 0, -5, 0, 0, 3, 1, 0, 0, 0, 1];
  const { pts, tris } = cube(0, 1);
  // cube from voxel 2.2 to 6.8 in every axis, written in mm
  for (let p = 0; p < pts.length; p += 3) {
    const v = [2.2 + 4.6 * pts[p], 2.2 + 4.6 * pts[p + 1], 2.2 + 4.6 * pts[p + 2]];
    pts[p] = 2 * v[0] - 10;
    pts[p + 1] = 2 * v[1] - 5;
    pts[p + 2] = 3 * v[2] + 1;
  }
  const out = voxelize({ dims: [10, 10, 10], affine }, [{ pts, tris, label: 3 }]);
  assert.equal(out.filter((x) => x === 3).length, 4 * 4 * 4);
  assert.equal(out[3 + 3 * 10 + 3 * 100], 3);
  assert.equal(out[2 + 3 * 10 + 3 * 100], 0);
  const inv = invert4(affine);
  assert.ok(Math.abs(inv[0] - 0.5) < 1e-12 && Math.abs(inv[11] + 1 / 3) < 1e-12);
});

test("label NIfTI header", () => {
  const buf = labelNifti([4, 5, 6], [1, 2, 3], [1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 1], new Uint8Array(120).fill(1));
  const v = new DataView(buf);
  assert.equal(v.getInt32(0, true), 348);
  assert.equal(v.getInt16(42, true), 4);
  assert.equal(v.getInt16(70, true), 2);
  assert.equal(v.getInt16(68, true), 1002);
  assert.equal(v.getFloat32(300, true), 2); // srow_y[1]
  assert.equal(buf.byteLength, 352 + 120);
});

test("NIfTI of other data types (the warm-up's int16 stand-in CT)", () => {
  const ct = new Int16Array([-1000, 0, 40, 3000]);
  const buf = niftiBytes([2, 2, 1], [1, 1, 1], [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1], ct);
  const v = new DataView(buf);
  assert.equal(v.getInt16(68, true), 0); // no intent
  assert.equal(v.getInt16(70, true), 4); // int16
  assert.equal(v.getInt16(72, true), 16);
  assert.equal(buf.byteLength, 352 + 8);
  assert.deepEqual(Array.from(new Int16Array(buf, 352)), [-1000, 0, 40, 3000]);
  assert.throws(() => niftiBytes([1, 1, 1], [1, 1, 1], new Array(16).fill(0), new Float64Array(1)));
});

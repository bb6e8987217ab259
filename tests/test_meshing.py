"""Meshing stage: surfaces land where the patient's anatomy is, whatever orientation the scanner wrote.

An asymmetric phantom is defined in patient LPS mm (a marker on the patient's left, one toward the head,
one anterior); each series samples it on its own geometry, goes through volume assembly, the LPS model
grid the inference uses, and our marching cubes; the markers' surfaces must come out where they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.inference.grid import grid_of, lps_grid, resample
from appliance.meshing import MeshSettings, mesh_segments
from compiler.phantom import slice_geometry, write_ct_series
from dicom_node.volume import assemble_volume
from kernels.mesh_ops import filter_components, mesh_topology

SPACING = (2.5, 2.0, 2.0)  # (sz, sy, sx) of the written series
ROWS = COLS = 72
SLICES = 48
# Marker centres in LPS mm: +x is the patient's left, -y anterior, +z toward the head.
LEFT, HEAD, ANTERIOR = (45.0, 0.0, 0.0), (0.0, 0.0, 40.0), (0.0, -40.0, -15.0)
MARKER_RADIUS = 12.0
BONE_LABEL = 2
SETTINGS = MeshSettings(max_triangles=5000, smoothing_iterations=6, min_component_mm3=100.0)


def _phantom_hu(points: np.ndarray) -> np.ndarray:
    """Soft tissue everywhere inside a 70 mm radius cylinder, bone in three asymmetric spheres."""
    hu = np.full(points.shape[:-1], -1000.0)
    hu[np.hypot(points[..., 0], points[..., 1]) < 70.0] = 40.0
    for centre in (LEFT, HEAD, ANTERIOR):
        hu[np.linalg.norm(points - np.asarray(centre), axis=-1) < MARKER_RADIUS] = 700.0
    return hu


ORIENTATIONS = {
    # name: (ImageOrientationPatient, origin chosen so the slab covers the phantom)
    "axial head first": ((1, 0, 0, 0, 1, 0), (-71.0, -71.0, -60.0)),
    "rows mirrored, slices feet-ward (feet first)": ((-1, 0, 0, 0, 1, 0), (71.0, -71.0, 60.0)),
    "columns flipped (prone-like)": ((1, 0, 0, 0, -1, 0), (-71.0, 71.0, 60.0)),
    "coronal": ((1, 0, 0, 0, 0, -1), (-71.0, -60.0, 71.0)),
}


def _write_series(tmp_path: Path, iop: tuple, origin: tuple) -> list[Path]:
    geom = slice_geometry(SLICES, SPACING, origin=origin, orientation=iop)
    r, c = np.array(geom.orientation[:3]), np.array(geom.orientation[3:])
    jj, ii = np.mgrid[0:ROWS, 0:COLS]
    hu = np.empty((SLICES, ROWS, COLS), np.int16)
    for k in range(SLICES):
        pts = geom.positions[k] + ii[..., None] * SPACING[2] * r + jj[..., None] * SPACING[1] * c
        hu[k] = np.rint(_phantom_hu(pts))
    return write_ct_series(hu, tmp_path, spacing=SPACING, origin=origin, orientation=iop)


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_marker_surfaces_sit_at_their_patient_positions_in_any_scan_orientation(tmp_path, name):
    iop, origin = ORIENTATIONS[name]
    volume = assemble_volume(_write_series(tmp_path, iop, origin))
    # the path the pipeline takes: resample onto the LPS-aligned model grid, label, mesh with its affine
    grid = lps_grid(grid_of(volume.array, volume.affine), (3.0, 3.0, 3.0))
    image = resample(volume.array, volume.affine, grid, order=1)
    labels = np.where(image > 300, BONE_LABEL, np.where(image > -300, 1, 0)).astype(np.uint8)
    meshes = mesh_segments(labels, grid.affine, [1, BONE_LABEL], SETTINGS, backend="cpu").meshes
    bone = meshes[BONE_LABEL]
    assert mesh_topology(bone).watertight
    centres = []
    for marker in (LEFT, HEAD, ANTERIOR):
        one = filter_components(bone, keep_largest=3)
        v = one.vertices.astype(np.float64)
        near = v[np.linalg.norm(v - np.asarray(marker), axis=1) < 2 * MARKER_RADIUS]
        assert len(near) > 20, f"{name}: no surface near the marker at {marker}"
        centres.append(near.mean(axis=0))
    np.testing.assert_allclose(centres, [LEFT, HEAD, ANTERIOR], atol=3.0)
    assert bone.signed_volume() > 0, "normals must point out of the segment"
    # the outward normal at the left marker's outermost point points to the patient's left (+x)
    i = int(np.argmax(bone.vertices[:, 0]))
    assert bone.normals[i, 0] > 0.8


def test_specks_are_dropped_and_the_budget_is_kept():
    labels = np.zeros((40, 40, 40), np.uint8)
    z, y, x = np.ogrid[:40, :40, :40]
    labels[(z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 < 15 ** 2] = 3
    labels[2, 2, 2] = 3  # one voxel: a speck
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    out = mesh_segments(labels, affine, [3, 4], MeshSettings(800, 4, 50.0), backend="cpu")
    assert set(out.meshes) == {3}, "an absent label gets no mesh"
    mesh = out.meshes[3]
    assert len(mesh.triangles) <= 800 < out.raw_triangles[3]
    assert mesh.vertices.min(axis=0).min() > 2.0 * 1.5, "the speck in the corner is gone"
    assert mesh.normals is not None and len(mesh.normals) == len(mesh.vertices)
    expected = 4 / 3 * np.pi * (15 * 1.5) ** 3
    assert abs(mesh.signed_volume() / expected - 1) < 0.1

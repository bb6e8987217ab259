"""Correctness of the CPU marching cubes (the same passes the CUDA build runs)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes as sk_marching_cubes

from kernels import Mesh, backend_status, gen_tables, marching_cubes, marching_cubes_labels, select_backend
from kernels.mesh_ops import mesh_topology


def sphere_field(shape: tuple[int, int, int], center: tuple[float, float, float], radius: float) -> np.ndarray:
    """radius - distance, float32, axes (z, y, x); center given as (x, y, z)."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cx, cy, cz = center
    return (radius - np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)).astype(np.float32)


def torus_field(n: int, big: float, small: float) -> np.ndarray:
    z, y, x = np.ogrid[:n, :n, :n]
    c = (n - 1) / 2
    ring = np.sqrt((x - c) ** 2 + (y - c) ** 2) - big
    return (small - np.sqrt(ring**2 + (z - c) ** 2)).astype(np.float32)


def skimage_mesh(volume: np.ndarray, level: float) -> Mesh:
    verts, faces, _, _ = sk_marching_cubes(volume.astype(np.float64), level, method="lorensen")
    return Mesh(verts[:, ::-1].astype(np.float32), faces.astype(np.uint32))  # skimage is (z, y, x)


def assert_same_vertex_set(a: np.ndarray, b: np.ndarray, tol: float = 1e-4) -> None:
    assert a.shape == b.shape
    dist, idx = cKDTree(b).query(a)
    assert dist.max() < tol
    assert len(np.unique(idx)) == len(b)  # a bijection, not many-to-one


def padded_random(seed: int, shape: tuple[int, int, int] = (14, 17, 19)) -> np.ndarray:
    out = np.zeros(tuple(s + 2 for s in shape), np.float32)
    out[1:-1, 1:-1, 1:-1] = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return out


def test_case_table_header_is_what_the_generator_writes():
    assert gen_tables.HEADER.read_text() == gen_tables.render_header()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_field_vertices_match_skimage(seed):
    vol = np.random.default_rng(seed).random((17, 19, 23), dtype=np.float32)
    ours = marching_cubes(vol, 0.5)
    assert_same_vertex_set(ours.vertices, skimage_mesh(vol, 0.5).vertices)


def test_smooth_field_area_and_volume_match_skimage():
    vol = sphere_field((48, 48, 48), (23.7, 24.2, 24.1), 15.3)
    ours, ref = marching_cubes(vol, 0.0), skimage_mesh(vol, 0.0)
    assert_same_vertex_set(ours.vertices, ref.vertices)
    assert ours.area() == pytest.approx(ref.area(), rel=1e-4)
    assert abs(ours.signed_volume()) == pytest.approx(abs(ref.signed_volume()), rel=1e-4)


@pytest.mark.parametrize("seed", range(6))
def test_random_field_surface_is_closed_consistently_oriented_manifold(seed):
    mesh = marching_cubes(padded_random(seed), 0.5)
    topo = mesh_topology(mesh)
    assert topo.watertight and topo.oriented, topo
    assert len(np.unique(mesh.vertices, axis=0)) == len(mesh.vertices)  # shared, never duplicated
    assert mesh.signed_volume() > 0


@pytest.mark.parametrize("seed", range(3))
def test_random_labels_touching_the_border_give_closed_surfaces(seed):
    labels = np.random.default_rng(seed).integers(0, 4, (13, 15, 17), dtype=np.uint8)
    meshes = marching_cubes_labels(labels)
    assert sorted(meshes) == [1, 2, 3]
    for mesh in meshes.values():
        topo = mesh_topology(mesh)
        assert topo.watertight and topo.oriented, topo
        assert mesh.signed_volume() > 0


def test_sphere_has_euler_characteristic_2_and_outward_winding():
    mesh = marching_cubes(sphere_field((40, 40, 40), (19.5, 19.2, 20.1), 12.0), 0.0)
    topo = mesh_topology(mesh)
    assert topo.watertight and topo.oriented and topo.euler == 2
    assert mesh.signed_volume() == pytest.approx(4 / 3 * np.pi * 12.0**3, rel=0.01)


def test_torus_has_euler_characteristic_0():
    mesh = marching_cubes(torus_field(48, 14.0, 5.0), 0.0)
    topo = mesh_topology(mesh)
    assert topo.watertight and topo.oriented and topo.euler == 0
    assert mesh.signed_volume() == pytest.approx(2 * np.pi**2 * 14.0 * 5.0**2, rel=0.02)


def test_gradient_normals_point_out_of_the_segment():
    center = np.array([19.5, 19.2, 20.1])
    mesh = marching_cubes(sphere_field((40, 40, 40), tuple(center), 12.0), 0.0, normals=True)
    radial = mesh.vertices - center
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    assert np.allclose(np.linalg.norm(mesh.normals, axis=1), 1.0, atol=1e-5)
    assert np.einsum("ij,ij->i", mesh.normals, radial).min() > 0.98


def oblique_affine(mirror: bool = False) -> np.ndarray:
    """Anisotropic spacing (0.7, 0.9, 2.5) mm, rotated about two axes, translated; optionally mirrored."""
    a, b = np.deg2rad(25.0), np.deg2rad(-12.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    lin = rz @ rx @ np.diag([0.7, 0.9, 2.5])
    if mirror:
        lin = lin @ np.diag([-1.0, 1.0, 1.0])
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = [-201.0, -59.0, -679.8]
    return aff


@pytest.mark.parametrize("mirror", [False, True])
def test_affine_places_vertices_and_keeps_outward_winding(mirror):
    vol = sphere_field((20, 30, 30), (14.6, 15.1, 9.7), 7.0)
    aff = oblique_affine(mirror)
    index_mesh = marching_cubes(vol, 0.0)
    world = marching_cubes(vol, 0.0, affine=aff)
    expected = index_mesh.vertices.astype(np.float64) @ aff[:3, :3].T + aff[:3, 3]
    assert np.allclose(world.vertices, expected, atol=1e-3)
    assert world.signed_volume() > 0
    assert world.signed_volume() == pytest.approx(index_mesh.signed_volume() * abs(np.linalg.det(aff[:3, :3])), rel=1e-5)


def test_normals_follow_the_affine_for_anisotropic_voxels():
    # A 12 mm sphere sampled with 0.8 x 0.8 x 2 mm voxels: world normals must be radial in mm.
    spacing = np.array([0.8, 0.8, 2.0])
    center_mm = np.array([20.0, 21.0, 22.0])
    z, y, x = np.ogrid[:24, :52, :54]
    dist = np.sqrt((x * spacing[0] - center_mm[0]) ** 2 + (y * spacing[1] - center_mm[1]) ** 2
                   + (z * spacing[2] - center_mm[2]) ** 2)
    aff = np.diag([*spacing, 1.0])
    mesh = marching_cubes((12.0 - dist).astype(np.float32), 0.0, affine=aff, normals=True)
    radial = mesh.vertices - center_mm
    assert np.allclose(np.linalg.norm(radial, axis=1), 12.0, atol=0.15)
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    assert np.einsum("ij,ij->i", mesh.normals, radial).min() > 0.97


def test_float16_fortran_order_and_int16_inputs_give_the_same_surface():
    vol = sphere_field((30, 32, 34), (16.2, 15.1, 14.3), 9.5)
    ref = marching_cubes(vol, 0.0)
    aff = oblique_affine()
    ref_world = marching_cubes(vol, 0.0, affine=aff)
    fortran = marching_cubes(np.asfortranarray(vol), 0.0, affine=aff)
    assert_same_vertex_set(fortran.vertices, ref_world.vertices, tol=1e-3)
    assert fortran.signed_volume() == pytest.approx(ref_world.signed_volume(), rel=1e-4)
    assert mesh_topology(fortran).oriented
    half = marching_cubes(vol.astype(np.float16), 0.0)
    assert half.signed_volume() == pytest.approx(ref.signed_volume(), rel=2e-3)
    hu = np.round(vol * 100).astype(np.int16)  # "HU" volume, iso-level in the same units
    assert marching_cubes(hu, 0.0).signed_volume() == pytest.approx(ref.signed_volume(), rel=2e-3)


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_empty_and_full_volumes_give_empty_meshes(fill):
    vol = np.full((8, 9, 10), fill, np.float32)
    mesh = marching_cubes(vol, 0.5)
    assert mesh.vertices.shape == (0, 3) and mesh.triangles.shape == (0, 3)
    assert mesh.vertices.dtype == np.float32 and mesh.triangles.dtype == np.uint32
    assert marching_cubes_labels(np.zeros((8, 9, 10), np.uint8)) == {}
    assert marching_cubes(np.zeros((0, 5, 5), np.float32), 0.5).is_empty
    assert marching_cubes(np.ones((1, 5, 5), np.float32), 0.5).is_empty  # no cells


def test_closed_option_caps_segments_cut_by_the_border():
    vol = np.ones((6, 7, 8), np.float32)
    box = marching_cubes(vol, 0.5, closed=True)
    topo = mesh_topology(box)
    assert topo.watertight and topo.oriented and topo.euler == 2
    # capped half a voxel beyond the border: an 8 x 7 x 6 box with chamfered edges and corners
    assert 0.9 * 8 * 7 * 6 < box.signed_volume() < 8 * 7 * 6
    assert box.vertices.min(axis=0) == pytest.approx([-0.5, -0.5, -0.5])
    open_mesh = marching_cubes(sphere_field((20, 20, 20), (10, 10, 0), 6.0), 0.0)
    assert mesh_topology(open_mesh).boundary_edges > 0
    capped = marching_cubes(sphere_field((20, 20, 20), (10, 10, 0), 6.0), 0.0, closed=True)
    assert mesh_topology(capped).watertight


def test_labels_in_one_pass_equal_one_label_at_a_time():
    labels = np.zeros((20, 22, 24), np.uint8)
    labels[2:9, 3:12, 4:15] = 1
    labels[10:18, 5:20, 3:22] = 2
    labels[0:5, 15:22, 18:24] = 8  # touches three borders
    aff = oblique_affine()
    together = marching_cubes_labels(labels, affine=aff)
    assert sorted(together) == [1, 2, 8]
    for value, mesh in together.items():
        single = marching_cubes_labels(labels, [value], affine=aff)[value]
        assert np.array_equal(mesh.vertices, single.vertices)
        assert np.array_equal(mesh.triangles, single.triangles)
        assert mesh_topology(mesh).watertight and mesh.signed_volume() > 0
        # a closed label surface through the voxel-edge midpoints encloses about the voxel count
        voxels = (labels == value).sum() * abs(np.linalg.det(aff[:3, :3]))
        assert mesh.signed_volume() == pytest.approx(voxels, rel=0.15)
    assert marching_cubes_labels(labels, [5])[5].is_empty
    fortran = marching_cubes_labels(np.asfortranarray(labels), [8], affine=aff)[8]
    assert fortran.signed_volume() == pytest.approx(together[8].signed_volume(), rel=1e-6)
    assert mesh_topology(fortran).oriented


def test_label_normals_are_unit_and_outward():
    labels = np.zeros((16, 16, 16), np.uint8)
    labels[3:12, 4:13, 2:14] = 3
    mesh = marching_cubes_labels(labels, normals=True)[3]
    assert np.allclose(np.linalg.norm(mesh.normals, axis=1), 1.0, atol=1e-5)
    center = mesh.vertices.mean(axis=0)
    assert (np.einsum("ij,ij->i", mesh.normals, mesh.vertices - center) > 0).all()


def test_thread_count_does_not_change_the_output():
    vol = padded_random(7, (30, 31, 90))
    one, two = marching_cubes(vol, 0.5, threads=1), marching_cubes(vol, 0.5, threads=2)
    assert np.array_equal(one.vertices, two.vertices) and np.array_equal(one.triangles, two.triangles)


def test_nan_voxels_are_outside_and_do_not_poison_vertices():
    vol = sphere_field((20, 20, 20), (10, 10, 10), 6.0)
    vol[10, 10, 16] = np.nan  # on the surface
    mesh = marching_cubes(vol, 0.0)
    assert np.isfinite(mesh.vertices).all() and mesh_topology(mesh).watertight


def test_c_order_float32_volume_is_not_copied():
    vol = sphere_field((96, 96, 96), (48, 47, 49), 40.0)
    tracemalloc.start()
    try:
        mesh = marching_cubes(vol, 0.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    output = mesh.vertices.nbytes + mesh.triangles.nbytes
    assert peak < output + 0.1 * vol.nbytes


def test_backend_probe_falls_back_to_cpu_and_can_be_forced():
    status = backend_status()
    assert status.selected in ("cpu", "cuda") and status.reason
    assert select_backend("cpu") == "cpu"
    if not status.cuda_available:
        assert select_backend("auto") == "cpu"
        with pytest.raises(RuntimeError, match="cuda"):
            marching_cubes(np.zeros((4, 4, 4), np.float32), 0.5, backend="cuda")
    with pytest.raises(ValueError):
        select_backend("opencl")


def test_label_counts_equal_numpy_bincount_on_a_random_label_map():
    from kernels import label_counts

    labels = np.random.default_rng(3).integers(0, 9, (17, 33, 65)).astype(np.uint8)
    counts = label_counts(labels)
    assert counts.shape == (256,)
    assert (counts == np.bincount(labels.ravel(), minlength=256)).all()

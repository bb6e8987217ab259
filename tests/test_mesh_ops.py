"""Mesh post-processing: component filter, Taubin smoothing, decimation to a triangle budget."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import Mesh, marching_cubes, marching_cubes_labels
from kernels.mesh_ops import (
    compact,
    decimate,
    filter_components,
    mesh_topology,
    taubin_smooth,
    triangle_components,
    vertex_normals,
)


def ball_labels() -> np.ndarray:
    """Label 1: a big ball (r=12), a medium ball (r=6) and a 2x2x2 speck."""
    z, y, x = np.ogrid[:40, :40, :64]
    labels = np.zeros((40, 40, 64), np.uint8)
    labels[(x - 16) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 <= 12**2] = 1
    labels[(x - 46) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 <= 6**2] = 1
    labels[5:7, 5:7, 58:60] = 1
    return labels


@pytest.fixture(scope="module")
def balls() -> Mesh:
    return marching_cubes_labels(ball_labels(), [1])[1]


@pytest.fixture(scope="module")
def sphere() -> Mesh:
    z, y, x = np.ogrid[:48, :48, :48]
    field = (18.0 - np.sqrt((x - 23.6) ** 2 + (y - 24.1) ** 2 + (z - 23.3) ** 2)).astype(np.float32)
    return marching_cubes(field, 0.0, normals=True)


def test_components_are_found(balls):
    n, _ = triangle_components(balls)
    assert n == 3


def test_keep_largest_keeps_the_biggest_volumes(balls):
    one = filter_components(balls, keep_largest=1)
    assert triangle_components(one)[0] == 1
    assert one.vertices[:, 0].max() < 30  # the big ball (x 4..28), not the medium one
    assert one.signed_volume() == pytest.approx(4 / 3 * np.pi * 12**3, rel=0.05)
    two = filter_components(balls, keep_largest=2)
    assert triangle_components(two)[0] == 2 and two.vertices[:, 0].max() > 50 - 1
    assert mesh_topology(two).watertight


def test_min_volume_drops_small_islands(balls):
    kept = filter_components(balls, min_volume=50.0)
    assert triangle_components(kept)[0] == 2
    assert kept.vertices[:, 0].max() < 54  # the speck at x 58..59 is gone
    assert len(np.unique(kept.triangles)) == len(kept.vertices)  # unused vertices compacted


def test_taubin_preserves_volume_and_smooths(sphere):
    label_sphere = marching_cubes_labels(
        (np.sqrt(np.sum((np.indices((40, 40, 40)) - 19.5) ** 2, axis=0)) <= 14).astype(np.uint8), [1])[1]
    smooth = taubin_smooth(label_sphere, iterations=20)
    assert smooth.signed_volume() == pytest.approx(label_sphere.signed_volume(), rel=0.03)
    assert mesh_topology(smooth).watertight

    def radius_spread(m: Mesh) -> float:
        r = np.linalg.norm(m.vertices - m.vertices.mean(axis=0), axis=1)
        return float(r.std())

    assert radius_spread(smooth) < 0.5 * radius_spread(label_sphere)  # the voxel staircase is gone
    assert smooth.normals is None
    assert taubin_smooth(sphere, 5).normals.shape == sphere.normals.shape


def test_decimation_hits_the_budget_and_stays_watertight(sphere):
    budget = len(sphere.triangles) // 5
    small = decimate(sphere, budget)
    assert 0.9 * budget <= len(small.triangles) <= budget
    assert mesh_topology(small).watertight
    assert small.signed_volume() == pytest.approx(sphere.signed_volume(), rel=0.02)
    assert small.vertices.dtype == np.float32 and small.triangles.dtype == np.uint32
    assert small.normals is not None and len(small.normals) == len(small.vertices)
    assert decimate(sphere, len(sphere.triangles) + 10) is sphere


def test_empty_meshes_pass_through():
    empty = Mesh.empty()
    assert filter_components(empty, keep_largest=1).is_empty
    assert taubin_smooth(empty).is_empty
    assert decimate(empty, 100).is_empty
    assert compact(empty).is_empty
    assert mesh_topology(empty).watertight


def test_vertex_normals_point_outward(sphere):
    n = vertex_normals(sphere)
    assert np.einsum("ij,ij->i", n, sphere.normals).min() > 0.9


def test_back_to_back_fins_are_removed_and_the_surface_is_a_manifold_again():
    from kernels.mesh_ops import drop_fins

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, -1, 0.2]], np.float32)
    tetra = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]], np.uint32)
    fin = np.array([[0, 1, 4], [1, 0, 4]], np.uint32)  # a zero-thickness flap on edge 0-1
    broken = Mesh(v, np.vstack([tetra, fin]))
    assert mesh_topology(broken).nonmanifold_edges == 1
    fixed = drop_fins(broken)
    assert len(fixed.vertices) == 4 and len(fixed.triangles) == 4
    assert mesh_topology(fixed).watertight and mesh_topology(fixed).oriented

"""Pure mesh post-processing for marching-cubes output: component filtering, Taubin smoothing,
quadric decimation. Every function takes a Mesh and returns a new Mesh (inputs are not modified).

Decimation uses `fast-simplification` (pyvista's wrapper of the Fast-Quadric-Mesh-Simplification
algorithm: numpy-only, ~0.5 MB, MIT) rather than Open3D (~1.1 GB, needs libusb) -- see kernels/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from kernels.mesh import Mesh


@dataclass(frozen=True)
class Topology:
    """Edge-use summary: watertight = every edge used by exactly two triangles, oriented = each such edge
    traversed once in each direction (consistent winding), euler = V - E + F over used vertices;
    misoriented_edges = shared edges both triangles run the same way; pinch_vertices = extra triangle fans
    around vertices (a vertex where two sheets touch), counted when no edge has more than two triangles."""

    watertight: bool
    oriented: bool
    boundary_edges: int
    nonmanifold_edges: int
    euler: int
    misoriented_edges: int = 0
    pinch_vertices: int = 0


def mesh_topology(mesh: Mesh) -> Topology:
    """Watertightness, orientation consistency, pinch vertices and Euler characteristic (for QA, tests and
    the Surface Segmentation's Finite Volume / Manifold), from one sort of the half-edges: O(M log M)."""
    t = np.ascontiguousarray(mesh.triangles, dtype=np.int64)
    n_tri, n_vert = len(t), max(len(mesh.vertices), 1)
    if n_tri == 0:
        return Topology(True, True, 0, 0, 0)
    src = t.ravel()  # half-edge h = 3 f + k runs from corner h to the next corner of face f
    nxt = np.arange(3 * n_tri, dtype=np.int64)
    nxt = nxt - nxt % 3 + (nxt % 3 + 1) % 3
    dst = src[nxt]
    key = np.minimum(src, dst) * n_vert + np.maximum(src, dst)
    order = np.argsort(key, kind="stable")
    ks = key[order]
    first = np.ones(len(ks), dtype=bool)
    first[1:] = ks[1:] != ks[:-1]
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(ks)))
    boundary = int(np.count_nonzero(counts == 1))
    nonmanifold = int(np.count_nonzero(counts > 2))
    pairs = starts[counts == 2]
    h1, h2 = order[pairs], order[pairs + 1]
    same_dir = src[h1] == src[h2]
    misoriented = int(np.count_nonzero(same_dir))
    used = int(np.count_nonzero(np.bincount(src, minlength=n_vert)))
    pinch = 0
    if nonmanifold == 0:
        # Corners (face, vertex) joined across each shared edge; the components are the fans around
        # vertices. One fan per used vertex <=> no pinch vertex.
        a2 = np.where(same_dir, h2, nxt[h2])  # corner of face 2 at the start vertex of h1
        b2 = np.where(same_dir, nxt[h2], h2)  # corner of face 2 at the end vertex of h1
        rows = np.concatenate([h1, nxt[h1]])
        cols = np.concatenate([a2, b2])
        graph = sp.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(3 * n_tri, 3 * n_tri))
        n_fans, _ = connected_components(graph.tocsr(), directed=False)
        pinch = int(n_fans - used)
    watertight = boundary == 0 and nonmanifold == 0
    return Topology(watertight=watertight, oriented=watertight and misoriented == 0, boundary_edges=boundary,
                    nonmanifold_edges=nonmanifold, euler=int(used - len(starts) + n_tri),
                    misoriented_edges=misoriented, pinch_vertices=pinch)


def triangle_components(mesh: Mesh) -> tuple[int, np.ndarray]:
    """(number of components, component id per triangle); triangles sharing a vertex are connected."""
    n_v, n_t = len(mesh.vertices), len(mesh.triangles)
    if n_t == 0:
        return 0, np.zeros(0, dtype=np.int64)
    t = mesh.triangles.astype(np.int64)
    rows = np.repeat(np.arange(n_t), 3)
    inc = sp.csr_matrix((np.ones(3 * n_t, dtype=np.int8), (rows, t.ravel())), shape=(n_t, n_v))
    # Bipartite triangle-vertex graph: components of it are the mesh components.
    graph = sp.bmat([[None, inc], [inc.T, None]], format="csr")
    n, lab = connected_components(graph, directed=False)
    tri_lab = lab[:n_t]
    _, tri_lab = np.unique(tri_lab, return_inverse=True)
    return int(tri_lab.max()) + 1, tri_lab


def component_volumes(mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    """(component id per triangle, |enclosed volume| per component) by the divergence theorem."""
    n, lab = triangle_components(mesh)
    if n == 0:
        return lab, np.zeros(0)
    v = mesh.vertices.astype(np.float64)
    t = mesh.triangles.astype(np.int64)
    signed = np.einsum("ij,ij->i", v[t[:, 0]], np.cross(v[t[:, 1]], v[t[:, 2]])) / 6.0
    return lab, np.abs(np.bincount(lab, weights=signed, minlength=n))


def filter_components(mesh: Mesh, keep_largest: int | None = None, min_volume: float | None = None) -> Mesh:
    """Keep the `keep_largest` components by enclosed volume and/or those with volume >= min_volume.

    Volume (not triangle count) is the ranking because a small crumpled island can have many triangles;
    units are those of the vertices (mm^3 for patient meshes).
    """
    lab, vols = component_volumes(mesh)
    if len(vols) == 0:
        return mesh
    keep = np.ones(len(vols), dtype=bool)
    if keep_largest is not None:
        order = np.argsort(-vols, kind="stable")
        keep[:] = False
        keep[order[: max(int(keep_largest), 0)]] = True
    if min_volume is not None:
        keep &= vols >= min_volume
    return compact(Mesh(mesh.vertices, mesh.triangles[keep[lab]], mesh.normals))


def compact(mesh: Mesh) -> Mesh:
    """Drop vertices no triangle uses and renumber the triangles."""
    used = np.zeros(len(mesh.vertices), dtype=bool)
    used[mesh.triangles.ravel()] = True
    remap = np.cumsum(used, dtype=np.int64) - 1
    normals = None if mesh.normals is None else mesh.normals[used]
    return Mesh(mesh.vertices[used], remap[mesh.triangles].astype(np.uint32), normals)


def _umbrella_operator(n_vertices: int, triangles: np.ndarray) -> sp.csr_matrix:
    """Uniform-weight Laplacian L = D^-1 A - I over the mesh edges."""
    t = triangles.astype(np.int64)
    i = np.concatenate([t[:, 0], t[:, 1], t[:, 2], t[:, 1], t[:, 2], t[:, 0]])
    j = np.concatenate([t[:, 1], t[:, 2], t[:, 0], t[:, 0], t[:, 1], t[:, 2]])
    adj = sp.csr_matrix((np.ones(len(i)), (i, j)), shape=(n_vertices, n_vertices))
    adj.data[:] = 1.0  # edges shared by two triangles were summed
    deg = np.asarray(adj.sum(axis=1)).ravel()
    inv = sp.diags(np.where(deg > 0, 1.0 / np.maximum(deg, 1), 0.0))
    return (inv @ adj - sp.diags((deg > 0).astype(float))).tocsr()


def taubin_smooth(mesh: Mesh, iterations: int = 10, lam: float = 0.5, mu: float = -0.53) -> Mesh:
    """Taubin lambda/mu smoothing: removes the voxel staircase without the shrinkage of plain Laplacian
    smoothing (alternating positive and negative steps form a low-pass filter). Normals are recomputed."""
    if len(mesh.triangles) == 0 or iterations <= 0:
        return mesh
    lap = _umbrella_operator(len(mesh.vertices), mesh.triangles)
    v = mesh.vertices.astype(np.float64)
    for _ in range(iterations):
        v = v + lam * (lap @ v)
        v = v + mu * (lap @ v)
    out = Mesh(v.astype(np.float32), mesh.triangles, None)
    if mesh.normals is not None:
        out.normals = vertex_normals(out)
    return out


def vertex_normals(mesh: Mesh) -> np.ndarray:
    """Area-weighted unit vertex normals following the triangle winding (outward for our meshes)."""
    v = mesh.vertices.astype(np.float64)
    t = mesh.triangles.astype(np.int64)
    fn = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    acc = np.zeros_like(v)
    for c in range(3):
        for d in range(3):
            acc[:, d] += np.bincount(t[:, c], weights=fn[:, d], minlength=len(v))
    length = np.linalg.norm(acc, axis=1, keepdims=True)
    return (acc / np.where(length > 0, length, 1.0)).astype(np.float32)


def decimate(mesh: Mesh, target_triangles: int, aggressiveness: float = 7.0) -> Mesh:
    """Quadric-error decimation to at most `target_triangles` triangles (a display/transfer budget).

    Meshes already within budget are returned unchanged. Normals, if present, are recomputed.
    """
    import fast_simplification

    n_t = len(mesh.triangles)
    if n_t <= target_triangles:
        return mesh
    if target_triangles <= 0:
        return Mesh.empty(mesh.normals is not None)
    pts, faces = fast_simplification.simplify(
        mesh.vertices.astype(np.float64), mesh.triangles.astype(np.int64), target_count=int(target_triangles),
        agg=aggressiveness,
    )
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(faces) > target_triangles:  # the collapse loop can stop a few short; drop the smallest faces
        area = np.linalg.norm(np.cross(pts[faces[:, 1]] - pts[faces[:, 0]], pts[faces[:, 2]] - pts[faces[:, 0]]), axis=1)
        faces = faces[np.sort(np.argsort(-area, kind="stable")[:target_triangles])]
    out = drop_fins(compact(Mesh(np.asarray(pts, dtype=np.float32), faces.astype(np.uint32), None)))
    if mesh.normals is not None:
        out.normals = vertex_normals(out)
    return out


def drop_fins(mesh: Mesh) -> Mesh:
    """Remove every triangle whose three vertices another triangle also uses: quadric decimation folds thin
    parts into such back-to-back pairs (zero-thickness fins; measured: 20 pairs in a body surface taken from
    283k to 20k triangles), whose edges then have four triangles and the surface is no longer a manifold.
    Removing both faces of a pair leaves each of its edges with the two triangles around the fin."""
    t = np.sort(mesh.triangles.astype(np.int64), axis=1)
    if len(t) == 0:
        return mesh
    _, inverse, counts = np.unique(t, axis=0, return_inverse=True, return_counts=True)
    keep = counts[inverse.ravel()] == 1
    if keep.all():
        return mesh
    return compact(Mesh(mesh.vertices, mesh.triangles[keep], mesh.normals))

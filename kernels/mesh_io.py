"""Mesh files for tools outside DICOM (3D printing, CAD, slicers): binary STL and binary PLY.

Both keep patient LPS millimetres as they are, so a file lines up with the CT in any viewer that reads
LPS (3D Slicer asks on import); the DICOM objects stay the record.
"""

from __future__ import annotations

import numpy as np

from kernels.mesh import Mesh


def stl_bytes(mesh: Mesh, header: str = "isonode surface, LPS mm") -> bytes:
    """Binary STL: an 80-byte header, the triangle count, then normal + 3 corners + 2 spare bytes each."""
    v = mesh.vertices.astype(np.float32)
    t = mesh.triangles.astype(np.int64)
    a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
    n = np.cross(b - a, c - a)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    n = n / np.where(length > 0, length, 1.0)
    rec = np.zeros(len(t), dtype=[("n", "<f4", 3), ("a", "<f4", 3), ("b", "<f4", 3), ("c", "<f4", 3),
                                  ("attr", "<u2")])
    rec["n"], rec["a"], rec["b"], rec["c"] = n, a, b, c
    head = header.encode("ascii", "replace")[:80].ljust(80, b" ")
    return head + np.uint32(len(t)).tobytes() + rec.tobytes()


def ply_bytes(mesh: Mesh, comment: str = "isonode surface, LPS mm") -> bytes:
    """Binary little-endian PLY with vertex normals when the mesh has them."""
    v = mesh.vertices.astype("<f4")
    props = ["property float x", "property float y", "property float z"]
    cols = [v]
    if mesh.normals is not None:
        props += ["property float nx", "property float ny", "property float nz"]
        cols.append(mesh.normals.astype("<f4"))
    head = "\n".join(["ply", "format binary_little_endian 1.0", f"comment {comment}",
                      f"element vertex {len(v)}", *props, f"element face {len(mesh.triangles)}",
                      "property list uchar uint vertex_indices", "end_header"]) + "\n"
    faces = np.zeros(len(mesh.triangles), dtype=[("n", "u1"), ("i", "<u4", 3)])
    faces["n"], faces["i"] = 3, mesh.triangles
    return head.encode("ascii") + np.hstack(cols).astype("<f4").tobytes() + faces.tobytes()


MZ3_MAGIC = 23117  # "MZ" little-endian
MZ3_FACES, MZ3_VERTICES = 1, 2


def mz3_bytes(mesh: Mesh, transform: np.ndarray | None = None) -> bytes:
    """Uncompressed MZ3 (NiiVue's own mesh format): indexed triangles, so a third of STL's size, and read
    without parsing text. `transform` (4x4) maps the vertices first, e.g. LPS -> RAS for NIfTI viewers."""
    v = mesh.vertices.astype(np.float64)
    if transform is not None:
        v = v @ transform[:3, :3].T + transform[:3, 3]
    head = np.array([MZ3_MAGIC, MZ3_FACES | MZ3_VERTICES], "<u2").tobytes()
    head += np.array([len(mesh.triangles), len(v), 0], "<u4").tobytes()
    return head + mesh.triangles.astype("<i4").tobytes() + v.astype("<f4").tobytes()

"""The indexed triangle mesh every surface stage exchanges (shared contract, see kernels/README.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Mesh:
    """Indexed triangle mesh: shared vertices, outward (counter-clockwise seen from outside) winding.

    vertices (N, 3) float32 in (x, y, z) -- patient mm when built with an affine, else voxel index units;
    triangles (M, 3) uint32 indices into vertices; normals (N, 3) float32 unit outward normals or None.
    """

    vertices: np.ndarray
    triangles: np.ndarray
    normals: np.ndarray | None = None

    @staticmethod
    def empty(with_normals: bool = False) -> Mesh:
        return Mesh(
            np.zeros((0, 3), np.float32),
            np.zeros((0, 3), np.uint32),
            np.zeros((0, 3), np.float32) if with_normals else None,
        )

    @property
    def is_empty(self) -> bool:
        return len(self.triangles) == 0

    def area(self) -> float:
        """Total surface area (same units squared as the vertices)."""
        a, b, c = self._corners()
        return float(0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())

    def signed_volume(self) -> float:
        """Enclosed volume by the divergence theorem; positive for a closed mesh with outward winding."""
        a, b, c = self._corners()
        return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)

    def _corners(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        v = self.vertices.astype(np.float64)
        t = self.triangles.astype(np.int64)
        return v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]

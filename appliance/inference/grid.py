"""Model grids and resampling between grids (numpy/scipy only: used by the appliance and the compiler).

A model grid is axis-aligned with patient LPS (index x -> +L, y -> +P, z -> +S) at the model's spacing,
so the network always sees the same anatomical orientation whatever the scanner wrote (tilted, flipped
or oblique stacks included). Arrays are indexed [z, y, x]; affines map (x, y, z, 1) to LPS mm as in
`dicom_node.volume.Volume`.

Axis-aligned pairs of grids (the common case) are resampled separably, one axis at a time, which is an
order of magnitude cheaper than general trilinear sampling on a 512x512x300 CT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

AIR_HU = -1024.0


@dataclass(frozen=True)
class Grid:
    """A voxel grid: `shape` (z, y, x) and `affine` (x, y, z, 1) -> LPS mm."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(sz, sy, sx) in mm."""
        n = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(n[2]), float(n[1]), float(n[0])


def lps_grid(src: Grid, spacing: tuple[float, float, float]) -> Grid:
    """The LPS-aligned grid at `spacing` (sz, sy, sx) covering every voxel centre of `src`, centred on it."""
    nz, ny, nx = src.shape
    corners = np.array(
        [[x, y, z, 1.0] for x in (0, nx - 1) for y in (0, ny - 1) for z in (0, nz - 1)], dtype=np.float64
    )
    pts = (src.affine @ corners.T)[:3]
    lo, hi = pts.min(axis=1), pts.max(axis=1)
    step = np.array([spacing[2], spacing[1], spacing[0]], dtype=np.float64)  # x, y, z
    n = np.floor((hi - lo) / step + 1e-6).astype(int) + 1
    origin = lo + ((hi - lo) - (n - 1) * step) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = np.diag(step)
    affine[:3, 3] = origin
    return Grid((int(n[2]), int(n[1]), int(n[0])), affine)


def _axis_aligned(m: np.ndarray) -> bool:
    off = m[:3, :3] - np.diag(np.diag(m[:3, :3]))
    return bool(np.all(np.abs(off) < 1e-6))


def _interp_axis(a: np.ndarray, axis: int, coords: np.ndarray, order: int, fill: float) -> np.ndarray:
    """Sample `a` along `axis` at fractional source indices `coords` (linear or nearest)."""
    n = a.shape[axis]
    shape = [1] * a.ndim
    shape[axis] = len(coords)
    if order == 0:
        idx = np.rint(coords).astype(np.int64)
        valid = (idx >= 0) & (idx < n)
        out = np.take(a, np.clip(idx, 0, n - 1), axis=axis)
        if not valid.all():
            out = np.where(valid.reshape(shape), out, np.asarray(fill, dtype=out.dtype))
        return out
    i0 = np.floor(coords).astype(np.int64)
    w = (coords - i0).astype(np.float32).reshape(shape)
    valid = ((coords >= -1e-3) & (coords <= n - 1 + 1e-3)).reshape(shape)
    lo = np.take(a, np.clip(i0, 0, n - 1), axis=axis).astype(np.float32, copy=False)
    hi = np.take(a, np.clip(i0 + 1, 0, n - 1), axis=axis).astype(np.float32, copy=False)
    out = lo + (hi - lo) * w
    if not valid.all():
        out = np.where(valid, out, np.float32(fill))
    return out


def resample(
    array: np.ndarray, src_affine: np.ndarray, dst: Grid, *, order: int = 1, fill: float = AIR_HU
) -> np.ndarray:
    """`array` (on `src_affine`) sampled at the voxel centres of `dst`; order 1 linear (float32), 0 nearest.

    Nearest keeps the input dtype (label maps). Voxels outside the source get `fill`.
    """
    m = np.linalg.inv(src_affine) @ dst.affine  # dst index -> src index
    if _axis_aligned(m):
        out = array
        # reduce the axes that shrink most first: later axes then run on fewer voxels
        axes = []
        for arr_axis, xyz in ((0, 2), (1, 1), (2, 0)):
            coords = m[xyz, xyz] * np.arange(dst.shape[arr_axis]) + m[xyz, 3]
            axes.append((dst.shape[arr_axis] / max(array.shape[arr_axis], 1), arr_axis, coords))
        for _, arr_axis, coords in sorted(axes, key=lambda t: t[0]):
            out = _interp_axis(out, arr_axis, coords, order, fill)
        return out if order == 0 else out.astype(np.float32, copy=False)
    out_dtype = array.dtype if order == 0 else np.float32
    out = np.empty(dst.shape, dtype=out_dtype)
    ny, nx = dst.shape[1], dst.shape[2]
    jj, ii = np.meshgrid(np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64), indexing="ij")
    src = array if order == 0 else array.astype(np.float32, copy=False)
    slab = max(1, int(4_000_000 // (ny * nx)))
    for z0 in range(0, dst.shape[0], slab):
        z1 = min(z0 + slab, dst.shape[0])
        kk = np.arange(z0, z1, dtype=np.float64)[:, None, None] * np.ones((1, ny, nx))
        pts = np.stack([np.broadcast_to(ii, kk.shape), np.broadcast_to(jj, kk.shape), kk], axis=0)
        src_idx = np.tensordot(m[:3, :3], pts, axes=1) + m[:3, 3, None, None, None]
        coords = src_idx[::-1]  # (x, y, z) -> array order (z, y, x)
        out[z0:z1] = ndimage.map_coordinates(src, coords, order=order, mode="constant", cval=fill)
    return out


def grid_of(array: np.ndarray, affine: np.ndarray) -> Grid:
    """The Grid an array with this affine lives on."""
    return Grid(tuple(int(s) for s in array.shape), np.asarray(affine, dtype=np.float64))  # type: ignore[arg-type]


def mm_to_voxels(mm: float, spacing: float) -> int:
    """A length in whole voxels, at least 1."""
    return max(1, int(math.ceil(mm / spacing - 1e-6)))

"""Intensity normalisation shared by training and inference (the manifest records the constants)."""

from __future__ import annotations

import numpy as np

HU_CLIP = (-1024.0, 2048.0)
HU_SCALE = 1.0 / 1000.0  # x = clip(hu) / 1000: lungs about -0.85, soft tissue 0.05, cortex > 0.5


X_COORD_SCALE_MM = 100.0  # left-right coordinate channel: mm from the FOV centre / 100


def x_coordinate(nx: int, sx: float, start: int = 0, length: int | None = None,
                 scale_mm: float = X_COORD_SCALE_MM) -> np.ndarray:
    """Left-right position of columns start..start+length of an nx-wide LPS grid, in units of 100 mm from
    the centre of the field of view (CT is reconstructed around the patient, so this says which side of
    the patient a voxel is on: the cue a patch alone lacks to tell the left lung from the right)."""
    length = nx if length is None else length
    centre = (nx - 1) / 2.0
    return ((np.arange(start, start + length, dtype=np.float32) - centre) * (sx / scale_mm)).astype(np.float32)


def network_input(hu: np.ndarray, spacing_x: float, clip: tuple[float, float] = (-1024.0, 2048.0),
                  scale: float = 1.0 / 1000.0, coord_mm: float = X_COORD_SCALE_MM) -> np.ndarray:
    """(2, z, y, x) float32: normalised HU and the left-right coordinate channel."""
    img = normalise_hu(hu, clip, scale)
    coord = np.broadcast_to(x_coordinate(hu.shape[2], spacing_x, scale_mm=coord_mm)[None, None, :], img.shape)
    return np.stack([img, coord])


def normalise_hu(hu: np.ndarray, clip: tuple[float, float] = HU_CLIP, scale: float = HU_SCALE) -> np.ndarray:
    """float32 network input from HU."""
    return (np.clip(np.asarray(hu, dtype=np.float32), clip[0], clip[1]) * np.float32(scale)).astype(np.float32)

"""Intensity normalisation shared by training and inference (the manifest records the constants)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

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


ENCLOSED_AIR_HU = -400.0  # air and aerated lung below, fat and every other tissue above
CHANNELS = ("hu", "x_coordinate", "enclosed_air")  # what a bundle's `normalisation.channels` may name


def enclosed_air(hu: np.ndarray, threshold: float = ENCLOSED_AIR_HU) -> np.ndarray:
    """1.0 where a voxel is air that its axial slice encloses (not connected in-plane to the slice's edge).

    Trachea, bronchi, lungs and bowel gas are enclosed; the air around the patient is not. Locally the
    trachea is pure air exactly like the air outside, and the few real tracheas in the training data did
    not teach a patch-based network that difference (it labelled the trachea outside air); this channel
    states it. Per slice, so a head scan's air that reaches the outside through the mouth in 3D still
    counts as enclosed where its slice closes around it."""
    air = hu < threshold
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    comp, n = ndimage.label(air, structure=in_plane)
    outside = np.zeros(n + 1, dtype=bool)
    outside[0] = True  # not air
    for edge in (comp[:, 0, :], comp[:, -1, :], comp[:, :, 0], comp[:, :, -1]):
        outside[np.unique(edge)] = True
    return (~outside[comp]).astype(np.float32)


def network_input(hu: np.ndarray, spacing_x: float, clip: tuple[float, float] = (-1024.0, 2048.0),
                  scale: float = 1.0 / 1000.0, coord_mm: float = X_COORD_SCALE_MM,
                  channels: tuple[str, ...] = ("hu", "x_coordinate")) -> np.ndarray:
    """(len(channels), z, y, x) float32: normalised HU, the left-right coordinate, enclosed air."""
    out = np.empty((len(channels), *hu.shape), dtype=np.float32)
    for i, name in enumerate(channels):
        if name == "hu":
            out[i] = normalise_hu(hu, clip, scale)
        elif name == "x_coordinate":
            out[i] = x_coordinate(hu.shape[2], spacing_x, scale_mm=coord_mm)[None, None, :]
        elif name == "enclosed_air":
            out[i] = enclosed_air(hu)
        else:
            raise ValueError(f"unknown network input channel {name!r} (known: {', '.join(CHANNELS)})")
    return out


def normalise_hu(hu: np.ndarray, clip: tuple[float, float] = HU_CLIP, scale: float = HU_SCALE) -> np.ndarray:
    """float32 network input from HU."""
    return (np.clip(np.asarray(hu, dtype=np.float32), clip[0], clip[1]) * np.float32(scale)).astype(np.float32)

"""Sliding-window inference with overlapping patches, Gaussian blending and batched backend calls."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def window_starts(n: int, p: int, overlap: float) -> list[int]:
    """Patch start indices along one axis covering [0, n) with the given overlap (last one flush)."""
    if n <= p:
        return [0]
    step = max(1, int(p * (1.0 - overlap)))
    starts = list(range(0, n - p, step))
    return starts + [n - p]


def gaussian_weights(patch: tuple[int, int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian importance map (peak 1, floor 1e-3): patch borders, where context is missing,
    count less where windows overlap."""
    w = np.ones(patch, dtype=np.float32)
    for axis, p in enumerate(patch):
        c = (p - 1) / 2.0
        g = np.exp(-0.5 * ((np.arange(p) - c) / (sigma_scale * p)) ** 2).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = p
        w = w * g.reshape(shape)
    return np.maximum(w / w.max(), 1e-3)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def sliding_window(
    image: np.ndarray,
    patch: tuple[int, int, int],
    run: Callable[[np.ndarray], np.ndarray],
    n_classes: int,
    *,
    overlap: float = 0.25,
    batch: int = 1,
    pad_value: float = -1.024,
) -> np.ndarray:
    """Class probabilities (C, D, H, W) float32 for a network input (D, H, W) or (channels, D, H, W).

    `run` maps a (batch, channels, *patch) float32 array to (batch, C, *patch) logits; the last batch is
    padded to the static batch size. Inputs smaller than the patch are padded with `pad_value` (air) in
    the first channel and edge values in the others.
    """
    if image.ndim == 3:
        image = image[None]
    channels, shape = image.shape[0], image.shape[1:]
    padded_shape = tuple(max(s, p) for s, p in zip(shape, patch, strict=True))
    if padded_shape != shape:
        pads = [(0, 0)] + [(0, p - s) for s, p in zip(shape, padded_shape, strict=True)]
        img = np.pad(image.astype(np.float32, copy=False), pads, mode="edge")
        img[0, shape[0]:] = pad_value
        img[0, :, shape[1]:] = pad_value
        img[0, :, :, shape[2]:] = pad_value
    else:
        img = np.ascontiguousarray(image, dtype=np.float32)
    starts = [
        (z, y, x)
        for z in window_starts(padded_shape[0], patch[0], overlap)
        for y in window_starts(padded_shape[1], patch[1], overlap)
        for x in window_starts(padded_shape[2], patch[2], overlap)
    ]
    weights = gaussian_weights(patch)
    acc = np.zeros((n_classes, *padded_shape), dtype=np.float32)
    wsum = np.zeros(padded_shape, dtype=np.float32)
    for b0 in range(0, len(starts), batch):
        chunk = starts[b0 : b0 + batch]
        x = np.zeros((batch, channels, *patch), dtype=np.float32)
        for i, (z, y, xx) in enumerate(chunk):
            x[i] = img[:, z : z + patch[0], y : y + patch[1], xx : xx + patch[2]]
        logits = run(x)
        for i, (z, y, xx) in enumerate(chunk):
            sl = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(xx, xx + patch[2]))
            acc[(slice(None), *sl)] += _softmax(logits[i]) * weights
            wsum[sl] += weights
    acc /= wsum
    return acc[:, : shape[0], : shape[1], : shape[2]]

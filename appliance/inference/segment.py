"""Segment one CT volume with a model bundle: resample to the model grid, normalise, sliding window,
argmax; the result lives on the model grid with its affine (`SegmentationResult`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from appliance.inference.backends import Backend
from appliance.inference.bundle import Label, ModelBundle
from appliance.inference.grid import Grid, grid_of, lps_grid, resample
from appliance.inference.normalise import network_input
from appliance.inference.sliding import sliding_window

log = logging.getLogger(__name__)


@dataclass
class SegmentationResult:
    """Labels (uint8, bundle label values) on the model grid; probabilities (C, z, y, x) float16 if kept."""

    labels: np.ndarray
    affine: np.ndarray
    label_table: list[Label]
    mode: str
    backend: str
    probabilities: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def grid(self) -> Grid:
        return grid_of(self.labels, self.affine)

    def labels_on(self, target: Grid) -> np.ndarray:
        """The label map resampled (nearest) onto another grid, e.g. the original CT."""
        return resample(self.labels, self.affine, target, order=0, fill=0)


def segment_array(
    hu: np.ndarray,
    affine: np.ndarray,
    bundle: ModelBundle,
    mode: str,
    backend: Backend,
    *,
    keep_probabilities: bool = False,
) -> SegmentationResult:
    """Run the bundle's `mode` on an HU array (z, y, x) with its affine."""
    spec = bundle.mode(mode)
    norm = bundle.manifest.normalisation
    timings: dict[str, float] = {}
    t = time.perf_counter()
    grid = lps_grid(grid_of(hu, affine), spec.spacing)
    image = resample(hu, affine, grid, order=1)
    timings["resample_s"] = time.perf_counter() - t
    t = time.perf_counter()
    image = network_input(image, grid.spacing[2], tuple(norm.clip), norm.scale, norm.x_coordinate_mm)
    timings["normalise_s"] = time.perf_counter() - t
    t = time.perf_counter()
    n_classes = 1 + len(bundle.manifest.labels)
    probs = sliding_window(image, tuple(spec.patch), backend.run, n_classes, overlap=spec.overlap,
                           batch=spec.batch, pad_value=float(norm.clip[0] * norm.scale))
    timings["network_s"] = time.perf_counter() - t
    t = time.perf_counter()
    labels = np.argmax(probs, axis=0).astype(np.uint8)
    timings["argmax_s"] = time.perf_counter() - t
    log.info("event=segmented mode=%s backend=%s grid=%s %s", mode, backend.name, grid.shape,
             " ".join(f"{k}={v:.3f}" for k, v in timings.items()))
    return SegmentationResult(labels, grid.affine, list(bundle.manifest.labels), mode, backend.name,
                              probs.astype(np.float16) if keep_probabilities else None, timings)

"""Segment one CT volume with a model bundle: resample to the model grid, normalise, crop to the patient,
sliding window, argmax, the mode's post-processing chain as its manifest lists it
(`appliance.inference.postprocess_steps`; the chest bundle's: experimental organs confined to soft tissue,
one component of single-structure organs, an airway of air above the lungs with its lumen, bone marrow, no
bone without cortex, lungs and bone to the outer edge of their partial-volume shell); the result lives on
the model grid with its affine (`SegmentationResult`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from appliance.inference.backends import Backend
from appliance.inference.bundle import Label, ModelBundle
from appliance.inference.crop import tissue_box
from appliance.inference.grid import Grid, grid_of, lps_grid, resample
from appliance.inference.normalise import enclosed_air, network_input
from appliance.inference.postprocess_steps import PostprocessContext, run_chain
from appliance.inference.sliding import sliding_window
from appliance.inference.source_grid import TISSUE_HU, EdgeRule, labels_on_source

log = logging.getLogger(__name__)

CROP_MARGIN_VOXELS = 8  # air kept around the patient: 12 mm at 1.5 mm, 24 mm at 3 mm


@dataclass
class SegmentationResult:
    """Labels (uint8, bundle label values, post-processed) on the model grid; the network's probabilities
    (C, z, y, x) float16, before post-processing, if kept."""

    labels: np.ndarray
    affine: np.ndarray
    label_table: list[Label]
    mode: str
    backend: str
    probabilities: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    edges: tuple[EdgeRule, ...] = ()  # the mode's edges to redraw on a finer grid (`source_grid`)

    @property
    def grid(self) -> Grid:
        return grid_of(self.labels, self.affine)

    def labels_on(self, target: Grid, hu: np.ndarray | None = None) -> np.ndarray:
        """The label map resampled (nearest) onto another grid, e.g. the original CT; given that grid's
        HU, with the mode's partial-volume edges drawn at its resolution (`source_grid`)."""
        return labels_on_source(self.labels, self.affine, target, hu, self.edges)


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
    # inputs are computed on the whole grid before cropping: the coordinate says where a voxel is in the
    # field of view, and enclosed air needs each slice's edge
    box = tissue_box(image, CROP_MARGIN_VOXELS, tuple(spec.patch))
    net_in = network_input(image, grid.spacing[2], tuple(norm.clip), norm.scale, norm.x_coordinate_mm,
                           tuple(norm.channels))[(slice(None), *box)]
    timings["normalise_s"] = time.perf_counter() - t
    t = time.perf_counter()
    n_classes = 1 + len(bundle.manifest.labels)
    probs = sliding_window(net_in, tuple(spec.patch), backend.run, n_classes, overlap=spec.overlap,
                           batch=spec.batch, pad_value=float(norm.clip[0] * norm.scale))
    timings["network_s"] = time.perf_counter() - t
    t = time.perf_counter()
    labels = np.zeros(grid.shape, dtype=np.uint8)  # outside the box: air, background
    labels[box] = np.argmax(probs, axis=0)
    full_probs = None
    if keep_probabilities:
        full_probs = np.zeros((n_classes, *grid.shape), dtype=np.float16)
        full_probs[0] = 1.0
        full_probs[(slice(None), *box)] = probs
    timings["argmax_s"] = time.perf_counter() - t
    t = time.perf_counter()
    channels = tuple(norm.channels)
    enclosed = (net_in[channels.index("enclosed_air")] if "enclosed_air" in channels
                else enclosed_air(image)[box])
    run_chain(PostprocessContext(labels[box], probs, image[box], enclosed, grid.spacing, bundle.manifest.labels),
              spec.postprocess or ())
    timings["postprocess_s"] = time.perf_counter() - t
    log.info("event=segmented mode=%s backend=%s grid=%s box=%s %s", mode, backend.name, grid.shape,
             tuple(s.stop - s.start for s in box), " ".join(f"{k}={v:.3f}" for k, v in timings.items()))
    return SegmentationResult(labels, grid.affine, list(bundle.manifest.labels), mode, backend.name,
                              full_probs, timings, edge_rules(bundle, mode))


def edge_rules(bundle: ModelBundle, mode: str) -> tuple[EdgeRule, ...]:
    """The mode's `source_edges` as label values and HU bounds (names checked by `load_bundle`)."""
    value = {lab.name: lab.value for lab in bundle.manifest.labels}
    return tuple(EdgeRule(value[e.label], value[e.host], *TISSUE_HU[e.tissue]) for e in bundle.mode(mode).source_edges)


"""The processing pipeline of one series version: pure stages, volume in, arrays out.

Today the pipeline assembles and checks the volume and records its geometry; segmentation, meshing and
the DICOM results plug in as further stages (see ../shared/ARCHITECTURE.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dicom_node.spool import store_durably
from dicom_node.volume import Volume, assemble_volume


@dataclass(frozen=True)
class VolumeSummary:
    """What a person checking a job wants to see about the assembled volume (no patient data)."""

    shape_zyx: tuple[int, int, int]
    spacing_xyz_mm: tuple[float, float, float]
    affine: list[list[float]]
    hu_min: float
    hu_max: float
    dtype: str
    instances: int
    resampled_from: str | None
    warnings: list[str]


def summarize_volume(volume: Volume) -> VolumeSummary:
    arr = volume.array
    return VolumeSummary(
        shape_zyx=tuple(int(n) for n in arr.shape),  # type: ignore[arg-type]
        spacing_xyz_mm=tuple(round(float(s), 6) for s in volume.spacing),  # type: ignore[arg-type]
        affine=np.round(volume.affine, 6).tolist(),
        hu_min=float(arr.min()) if arr.size else 0.0,
        hu_max=float(arr.max()) if arr.size else 0.0,
        dtype=str(arr.dtype),
        instances=len(volume.source_instances),
        resampled_from=getattr(volume, "resampled_from", None),
        warnings=list(getattr(volume, "warnings", ()) or ()),
    )


def process_series(files: Sequence[Path]) -> VolumeSummary:
    """Assemble the series and summarise it; raises VolumeError for input the node cannot process."""
    return summarize_volume(assemble_volume([Path(f) for f in files]))


def write_result(results_dir: Path, series_uid: str, version: int, mode: str, summary: VolumeSummary) -> Path:
    """Persist the job's result atomically; returns its path."""
    path = results_dir / series_uid / f"v{version}-{mode}" / "volume.json"
    store_durably(path, json.dumps(asdict(summary), indent=2).encode() + os.linesep.encode())
    return path

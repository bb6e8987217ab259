"""Write a label map on the original CT grid as NIfTI (RAS affine, as NIfTI readers expect).

Beside OUT.nii.gz goes OUT.labels.json: one JSON object mapping each label value the map may hold (a
decimal string) to the bundle's class name, e.g. {"1": "body", "2": "bone", ...}; 0 is background and
not listed. The experimental classes are listed only when they were included (`isonode segment
--experimental`), and then their name ends with " (experimental)", e.g. "8": "liver (experimental)"; held
back, their voxels hold the body's value. So the file stays a plain value -> name mapping for every reader.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dicom_node.derived import EXPERIMENTAL_LABEL_SUFFIX

if TYPE_CHECKING:  # the display module imports this one; it needs no bundle
    from appliance.inference.bundle import Label

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def labels_json_path(out: Path) -> Path:
    name = out.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return out.with_name(name[: -len(suffix)] + ".labels.json")
    return out.with_name(name + ".labels.json")


def label_names(table: Sequence[Label], include_experimental: bool) -> dict[int, str]:
    """The OUT.labels.json mapping (module docstring): the validated classes, plus the experimental ones
    marked as such where they were included."""
    return {lab.value: lab.name + (EXPERIMENTAL_LABEL_SUFFIX if lab.experimental else "")
            for lab in table if include_experimental or not lab.experimental}


def write_label_nifti(labels: np.ndarray, affine_lps: np.ndarray, out: Path, names: dict[int, str]) -> tuple[Path, Path]:
    """labels (z, y, x) with the Volume affine -> OUT.nii.gz (uint8, x/y/z axes) + OUT.labels.json."""
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)).astype(np.uint8), LPS_TO_RAS @ affine_lps)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"isonode segmentation"
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out))
    jpath = labels_json_path(out)
    jpath.write_text(json.dumps({str(k): v for k, v in sorted(names.items())}, indent=1) + "\n")
    return out, jpath

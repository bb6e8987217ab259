"""Write a label map on the original CT grid as NIfTI (RAS affine, as NIfTI readers expect)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def labels_json_path(out: Path) -> Path:
    name = out.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return out.with_name(name[: -len(suffix)] + ".labels.json")
    return out.with_name(name + ".labels.json")


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

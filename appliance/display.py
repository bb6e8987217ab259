"""What the bedside page draws: the CT downsampled for display and one mesh per segment, in the RAS
millimetres NIfTI viewers use, written beside the DICOM results by every job.

The page must show a preview seconds after the scan, so these are made from what the job already holds
(no second read of the series) and are small: about 256 voxels in plane, gzip at its fastest level.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from appliance.inference.nifti import LPS_TO_RAS
from dicom_node.derived import SegmentInfo
from dicom_node.volume import Volume
from kernels.mesh import Mesh
from kernels.mesh_io import mz3_bytes

DISPLAY_CT_FILE = "display_ct.nii.gz"
MAX_DISPLAY_INPLANE = 256
MAX_DISPLAY_SLICES = 384
GZIP_LEVEL = 1  # ~5x faster than the default level for ~10% more bytes: the preview's time matters more


def display_mesh_file(segment_number: int) -> str:
    return f"display_{segment_number:02d}.mz3"  # gzipped inside, as MZ3 allows


@dataclass(frozen=True)
class DisplayFile:
    filename: str
    data: bytes


def display_strides(shape_zyx: Sequence[int]) -> tuple[int, int, int]:
    """Integer steps (x, y, z) that bring the grid within the display size."""
    nz, ny, nx = shape_zyx
    inplane = max(1, math.ceil(max(nx, ny) / MAX_DISPLAY_INPLANE))
    return inplane, inplane, max(1, math.ceil(nz / MAX_DISPLAY_SLICES))


def display_ct_bytes(volume: Volume) -> bytes:
    """The volume as gzipped NIfTI-1: int16 HU, every stride-th voxel, RAS sform/qform."""
    import nibabel as nib

    sx, sy, sz = display_strides(volume.array.shape)
    arr = volume.array[::sz, ::sy, ::sx]
    hu = np.clip(np.rint(arr), -32768, 32767).astype(np.int16) if arr.dtype != np.int16 else arr
    affine = LPS_TO_RAS @ volume.affine @ np.diag([sx, sy, sz, 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"isonode display CT (downsampled)"
    img.header["cal_min"], img.header["cal_max"] = -160.0, 240.0  # soft-tissue window until the page picks one
    return gzip.compress(img.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0)


def display_mesh_bytes(mesh: Mesh) -> bytes:
    return gzip.compress(mz3_bytes(mesh, LPS_TO_RAS), compresslevel=GZIP_LEVEL, mtime=0)


def display_files(volume: Volume, segments: Sequence[SegmentInfo], meshes: dict[int, Mesh]) -> list[DisplayFile]:
    """The CT and each segment's mesh (segments numbered as in the Surface Segmentation)."""
    out = [DisplayFile(DISPLAY_CT_FILE, display_ct_bytes(volume))]
    out += [DisplayFile(display_mesh_file(s.number), display_mesh_bytes(meshes[s.label_value]))
            for s in segments]
    return out

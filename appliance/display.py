"""What the bedside page draws: the CT downsampled for display and one mesh per segment, in the RAS
millimetres NIfTI viewers use, written beside the DICOM results by every job.

The page must show a preview seconds after the scan, so these are made from what the job already holds
(no second read of the series) and are small: about 256 voxels in plane, gzip at its fastest level.
"""

from __future__ import annotations

import gzip
import math
import zlib
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
# The preview is coarse and must be quick: its CT slices at least this far apart (half the bytes of a 1 mm
# chest); the full result shows the slices as they came.
PREVIEW_MIN_SLICE_MM = 2.0
GZIP_WBITS = 31  # zlib's gzip container, which NiiVue and nibabel read
GZIP_LEVEL = 1  # ~5x faster than the default level for ~10% more bytes: the preview's time matters more


def display_mesh_file(segment_number: int) -> str:
    return f"display_{segment_number:02d}.mz3"  # gzipped inside, as MZ3 allows


@dataclass(frozen=True)
class DisplayFile:
    filename: str
    data: bytes


def display_strides(shape_zyx: Sequence[int], slice_mm: float = 0.0, min_slice_mm: float = 0.0,
                    ) -> tuple[int, int, int]:
    """Integer steps (x, y, z) that bring the grid within the display size (and slices at least
    `min_slice_mm` apart, given their spacing `slice_mm`)."""
    nz, ny, nx = shape_zyx
    inplane = max(1, math.ceil(max(nx, ny) / MAX_DISPLAY_INPLANE))
    by_spacing = math.ceil(min_slice_mm / slice_mm - 1e-6) if slice_mm > 0 else 1
    return inplane, inplane, max(1, math.ceil(nz / MAX_DISPLAY_SLICES), by_spacing)


def display_ct_bytes(volume: Volume, min_slice_mm: float = 0.0) -> bytes:
    """The volume as gzipped NIfTI-1: int16 HU, every stride-th voxel, RAS sform/qform. Huffman-only
    deflate: CT noise leaves little for string matching (60% of the size against 58% at level 1, in 60%
    of the time)."""
    import nibabel as nib

    sx, sy, sz = display_strides(volume.array.shape, volume.spacing[2], min_slice_mm)
    arr = volume.array[::sz, ::sy, ::sx]
    hu = np.clip(np.rint(arr), -32768, 32767).astype(np.int16) if arr.dtype != np.int16 else arr
    affine = LPS_TO_RAS @ volume.affine @ np.diag([sx, sy, sz, 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"isonode display CT (downsampled)"
    img.header["cal_min"], img.header["cal_max"] = -160.0, 240.0  # soft-tissue window until the page picks one
    deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, GZIP_WBITS, 9, zlib.Z_HUFFMAN_ONLY)
    return deflate.compress(img.to_bytes()) + deflate.flush()


def display_mesh_bytes(mesh: Mesh) -> bytes:
    return gzip.compress(mz3_bytes(mesh, LPS_TO_RAS), compresslevel=GZIP_LEVEL, mtime=0)


def display_files(volume: Volume, segments: Sequence[SegmentInfo], meshes: dict[int, Mesh], mode: str,
                  ) -> list[DisplayFile]:
    """The CT and each segment's mesh (segments numbered as in the Surface Segmentation)."""
    min_slice_mm = PREVIEW_MIN_SLICE_MM if mode == "preview" else 0.0
    out = [DisplayFile(DISPLAY_CT_FILE, display_ct_bytes(volume, min_slice_mm))]
    out += [DisplayFile(display_mesh_file(s.number), display_mesh_bytes(meshes[s.label_value]))
            for s in segments]
    return out

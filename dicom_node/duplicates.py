"""Is an instance received again the object already stored? A SOP Instance UID names one object, so a
sender re-sending it (a retry, a second push) gets Success, and other content under a stored UID is a
conflict the node refuses (dicom_node.status.DUPLICATE_SOP_INSTANCE) rather than answer Success and drop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from dicom_node.part10 import split_part10

PIXEL_DATA = 0x7FE00010


# What a lossless change of transfer syntax may change without a new SOP Instance UID (PS3.5 8.2): the
# encoding's group lengths, how the pixels are encoded (compared decoded instead: Bits Allocated, Stored,
# High Bit, Pixel Representation, Photometric Interpretation, Planar Configuration; NEMA's J2K and
# uncompressed samples of one image differ in Bits Stored), and a transcoder's note of itself in the
# derivation (DCMTK writes one: Derivation Description, Derivation Code Sequence).
ENCODING = {0x00280100, 0x00280101, 0x00280102, 0x00280103, 0x00280004, 0x00280006, 0x00082111, 0x00089215}


def _public_values(ds: Dataset) -> dict:
    """Every standard attribute's value but the pixels and what encodes them (private ones read as UN in
    implicit VR and are not comparable across transfer syntaxes)."""
    return {elem.tag: elem.value for elem in ds if not elem.tag.is_private and elem.tag.element != 0
            and elem.tag != PIXEL_DATA and elem.tag not in ENCODING}


def same_instance(stored: Path, transfer_syntax: UID, dataset_bytes: bytes | memoryview, ds: Dataset) -> bool:
    """Whether a stored file holds the object received again: the same bytes in the same transfer syntax,
    or in another syntax the same attributes and the same decoded pixels. Anything unreadable is not."""
    try:
        stored_ts, stored_body = split_part10(stored.read_bytes())
        if stored_ts == str(transfer_syntax):
            return bytes(stored_body) == bytes(dataset_bytes)
        old = dcmread(stored)
        new = Dataset(ds)
        new.file_meta = FileMetaDataset()
        new.file_meta.TransferSyntaxUID = transfer_syntax
        if _public_values(old) != _public_values(new):
            return False
        if ("PixelData" in old) != ("PixelData" in new):
            return False
        return "PixelData" not in old or np.array_equal(old.pixel_array, new.pixel_array)
    except Exception:  # unreadable or undecodable: treat as different, the stored file stays the record
        return False

"""Frames decoded at ingest are kept, bounded, and used by volume assembly instead of a second decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEGLSLossless

from compiler.phantom import make_phantom, write_ct_series
from dicom_node.database import Database
from dicom_node.decoded_frames import DecodedFrames
from dicom_node.index import InstanceIndex
from dicom_node.scp import DicomScp, ScpSettings
from dicom_node.spool import SpoolLayout
from dicom_node.volume import assemble_volume


def _body(path: Path) -> bytes:
    meta_length = pydicom.dcmread(path, stop_before_pixels=True).file_meta[0x00020000].value
    return path.read_bytes()[132 + 12 + meta_length:]


def test_the_cache_keeps_the_most_recent_frames_within_its_byte_bound():
    cache = DecodedFrames(max_bytes=3 * 100)
    for i in range(5):
        cache.put(f"1.{i}", np.full((10, 10), i, np.uint8))
    assert cache.get("1.0") is None and cache.get("1.1") is None
    assert cache.get("1.2") is not None  # now the most recently used
    cache.put("1.5", np.zeros((10, 10), np.uint8))
    assert cache.get("1.3") is None and cache.get("1.2") is not None
    assert cache.nbytes <= 300 and len(cache) == 3
    assert not cache.get("1.2").flags.writeable
    cache.put("big", np.zeros((20, 20), np.uint8))  # larger than the whole bound: not kept
    assert cache.get("big") is None


def test_compressed_images_decoded_at_ingest_build_the_same_volume_without_decoding_again(tmp_path):
    files = write_ct_series(make_phantom((6, 32, 32), (2, 2, 2)).hu, tmp_path / "src", spacing=(2, 2, 2),
                            transfer_syntax=JPEGLSLossless)
    cache = DecodedFrames(max_bytes=1 << 20)
    scp = DicomScp(ScpSettings(min_free_bytes=0), SpoolLayout(tmp_path / "spool"),
                     InstanceIndex(Database(tmp_path / "db.sqlite")), decoded=cache)
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert scp.store(_body(f), JPEGLSLossless, ds.SOPClassUID, ds.SOPInstanceUID).status == 0
    assert len(cache) == len(files)
    stored = sorted((tmp_path / "spool").rglob("*.dcm"))
    from_disk = assemble_volume(stored)
    from_cache = assemble_volume(stored, decoded=cache.get)
    assert np.array_equal(from_disk.array, from_cache.array)
    assert np.array_equal(from_disk.affine, from_cache.affine)

    # the cache is really what is read: a marked frame shows up in the volume
    first = from_disk.source_instances[0].sop_instance_uid
    marked = cache.get(first).copy()
    marked[0, 0] = 4000
    cache.put(first, marked)
    assert assemble_volume(stored, decoded=cache.get).array[0, 0, 0] == 4000 - 1024

"""Bounds on what one instance may make the node allocate: a Deflated data set that inflates past the
bound, and pixel data whose header claims more, are refused with 0xA700 before the allocation."""

from __future__ import annotations

import resource
import struct
import zlib
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from dicom_node import status
from dicom_node.database import Database
from dicom_node.index import InstanceIndex
from dicom_node.limits import TooLargeError, check_pixel_size, inflated_size
from dicom_node.scp import DicomScp, ScpSettings
from dicom_node.spool import SpoolLayout

CT = "1.2.840.10008.5.1.4.1.1.2"
MB = 1024 * 1024


def _encode(ds: Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def _bomb(inflated_mb: int) -> tuple[bytes, str]:
    """A CT data set, raw-deflated, with a private OB element of zeros: a few KB that inflate to `inflated_mb`."""
    sop = generate_uid()
    head = Dataset()
    head.SOPClassUID, head.SOPInstanceUID, head.Modality = CT, sop, "CT"
    head.add_new(0x00090010, "LO", "BOMB")
    tail = Dataset()
    tail.StudyInstanceUID, tail.SeriesInstanceUID = generate_uid(), generate_uid()
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = BytesIO()
    out.write(deflater.compress(_encode(head)))
    out.write(deflater.compress(struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, inflated_mb * MB)))
    chunk = b"\0" * MB
    for _ in range(inflated_mb):
        out.write(deflater.compress(chunk))
    out.write(deflater.compress(_encode(tail)) + deflater.flush())
    return out.getvalue(), sop


@pytest.fixture
def scp(tmp_path) -> DicomScp:
    settings = ScpSettings(min_free_bytes=0, max_dataset_bytes=64 * MB)
    return DicomScp(settings, SpoolLayout(tmp_path / "spool"), InstanceIndex(Database(tmp_path / "db.sqlite")))


def test_a_deflate_bomb_is_refused_with_0xa700_without_inflating_it_whole(scp):
    data, sop = _bomb(1024)  # 1 GB inflated, 16x the bound
    assert len(data) < 2 * MB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcome = scp.store(data, DeflatedExplicitVRLittleEndian, CT, sop)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert outcome.status == status.OUT_OF_RESOURCES and "inflates to more than 64 MB" in outcome.reason
    assert grown_mb < 200, f"peak memory grew {grown_mb:.0f} MB while refusing"
    assert not list(scp.spool.root.rglob("*.dcm"))


def test_a_deflated_data_set_within_the_bound_is_inflated_and_read(scp):
    data, sop = _bomb(8)
    outcome = scp.store(data, DeflatedExplicitVRLittleEndian, CT, sop)
    # inflated and read within the bound; a CT without pixel data is then the decodability check's to refuse
    assert outcome.status == status.CANNOT_UNDERSTAND_PIXEL_DATA, outcome


def test_a_corrupt_deflate_stream_is_refused_as_unparsable(scp):
    outcome = scp.store(b"\x00\xff" * 100, DeflatedExplicitVRLittleEndian, CT, generate_uid())
    assert outcome.status == status.CANNOT_UNDERSTAND_UNPARSABLE and "deflate" in outcome.reason


def test_pixel_data_whose_header_claims_too_much_is_refused_before_decoding(scp):
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "CT"
    ds.Rows = ds.Columns = 60000
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = b"\0\0" * 16
    outcome = scp.store(_encode(ds), ExplicitVRLittleEndian, CT, ds.SOPInstanceUID)
    assert outcome.status == status.OUT_OF_RESOURCES and "6866 MB" in outcome.reason


def test_inflated_size_counts_without_keeping_and_stops_past_the_limit():
    data, _ = _bomb(32)
    assert inflated_size(data, 64 * MB) > 32 * MB
    with pytest.raises(TooLargeError):
        inflated_size(data, 8 * MB)


def test_an_incomplete_pixel_module_is_left_to_the_decodability_check():
    ds = Dataset()
    ds.Rows = 512
    check_pixel_size(ds, MB)  # no Columns/BitsAllocated: not this check's to refuse

"""`isonode process SERIES_DIR --mode preview|full --out DIR`: the whole pipeline without the network."""

from __future__ import annotations

import re
import subprocess
import sys

import pydicom
from conftest import REPO, dciodvfy_errors, shared_case

from dicom_node.surface_seg import read_surface_segmentation
from kernels.mesh_io import ply_bytes, stl_bytes


def test_process_writes_surface_segmentation_seg_view_and_mesh_files_that_pass_dciodvfy(tmp_path):
    series = shared_case("crlm_ct_1004_ge_abdomen") / "ct_dicom"
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "appliance.cli", "process", str(series), "--mode", "preview",
                          "--out", str(out), "--mesh-files", "stl,ply"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "segment_s" in run.stdout and re.search(r"^backend (ort-cpu|openvino)-(fp32|bf16|int8) ", run.stdout, re.M)
    dicom = sorted(out.glob("*.dcm"))
    classes = {pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID: p for p in dicom}
    # a preview also holds the rendered view (Multi-frame True Color Secondary Capture) by default
    assert set(classes) == {"1.2.840.10008.5.1.4.1.1.66.5", "1.2.840.10008.5.1.4.1.1.66.4",
                            "1.2.840.10008.5.1.4.1.1.7.4"}
    for p in dicom:
        assert dciodvfy_errors(p) == [], p
    surfaces = read_surface_segmentation(classes["1.2.840.10008.5.1.4.1.1.66.5"])
    names = [info.tracking_id for info, _ in surfaces]
    assert {"body", "bone", "lung_left", "lung_right"} <= set(names)
    assert "liver" not in names, "experimental classes stay out unless asked for"
    for info, mesh in surfaces:
        stl = out / f"{info.number:02d}_{info.tracking_id}.stl"
        assert stl.read_bytes() == stl_bytes(mesh)
        assert (out / stl.with_suffix(".ply").name).read_bytes()[:3] == ply_bytes(mesh)[:3] == b"ply"


def test_process_refuses_a_folder_without_a_series_with_a_clear_message(tmp_path):
    (tmp_path / "junk.txt").write_text("not DICOM")
    run = subprocess.run([sys.executable, "-m", "appliance.cli", "process", str(tmp_path), "--out",
                          str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.startswith("isonode: cannot process the series")
    assert "Traceback" not in run.stderr


def test_a_gantry_tilted_deidentified_series_gives_objects_that_pass_dciodvfy(tmp_path):
    """The GE head series is tilted (resampled: the SEG lies on the node's regular grid) and says its
    identity was removed without naming the method, which every object must still get right."""
    series = shared_case("dcmqa_ge_head_gantry_tilt") / "ct_dicom"
    run = subprocess.run([sys.executable, "-m", "appliance.cli", "process", str(series), "--mode", "preview",
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    dicom = sorted(tmp_path.glob("*.dcm"))
    assert [p.name for p in dicom] == ["seg.dcm", "surfaces.dcm", "view.dcm"]
    for p in dicom:
        assert dciodvfy_errors(p) == [], p
        assert pydicom.dcmread(p, stop_before_pixels=True).DeidentificationMethod

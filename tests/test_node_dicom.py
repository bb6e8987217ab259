"""The node against DICOM tools we did not write (DCMTK), started as `isonode serve` subprocesses."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from conftest import (
    NODE_AE,
    REPO,
    dciodvfy_errors,
    echoscu,
    require_tool,
    shared_case,
    store_responses,
    storescu,
)
from pydicom.uid import JPEGLSLossless

from compiler.phantom import make_phantom, write_ct_series


def _stored_sop_uids(data_dir: Path) -> set[str]:
    return {p.stem for p in (data_dir / "spool").glob("*/*/*.dcm")}


def test_echoscu_gets_success(node):
    result = echoscu(node.port)
    assert result.returncode == 0, result.stderr


def test_wrong_called_ae_title_is_rejected_and_node_keeps_serving(node):
    result = echoscu(node.port, aec="SOMEONE_ELSE")
    assert result.returncode != 0
    assert echoscu(node.port).returncode == 0


def test_real_ge_series_is_stored_completed_and_assembled(node):
    files = sorted((shared_case("crlm_ct_1004_ge_abdomen") / "ct_dicom").glob("*.dcm"))
    result = storescu(node.port, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [r for _, r in store_responses(result.stdout + result.stderr)] == ["(Success)"] * len(files)

    status = node.wait_for(lambda s: s["jobs"]["done"] == 1, what="the series job to finish")
    assert status["instances"] == len(files)
    assert status["series"] == 1
    done = node.log_events("job.done")
    assert done and done[0]["shape"] == [41, 512, 512]


def test_every_decodable_transfer_syntax_sample_is_accepted(node):
    """Each sample is sent on its own association; whatever DCMTK can send, the node must accept."""
    samples = shared_case("dicom_ts_samples")
    # CT1_J2KR/CT2_J2KR (NEMA WG-04) store J2K with odd-length OW pixel data; DCMTK pads and sends a
    # codestream without its end marker, which the node rightly refuses (their decoding is in test_pixels).
    # TOSHIBA_J2K_SIZ0_PixRep1 reuses SIZ1_PixRep0's SOP Instance UID with other pixel values: a UID
    # conflict the node refuses (test_storage), though its decoding is fine (test_pixels).
    files = sorted(p for p in samples.rglob("*") if p.is_file()
                   and p.name not in {"README.txt", "CT1_J2KR", "CT2_J2KR", "TOSHIBA_J2K_SIZ0_PixRep1.dcm"} and not p.name.endswith(("1.2.840.10008.1.2.4.53.dcm", "1.2.840.10008.1.2.4.55.dcm")))
    stored_syntaxes = set()
    for f in files:
        result = storescu(node.port, f)
        responses = [r for _, r in store_responses(result.stdout + result.stderr) if r]
        # A sample whose syntax DCMTK cannot propose (JPEG process 14, 4.57) never reaches the node.
        assert responses in ([], ["(Success)"]), (f.name, result.stdout + result.stderr)
        if responses:
            stored_syntaxes.add(str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID))
    expected = {
        "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99",  # implicit, explicit, deflated
        "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",  # JPEG SV1, JPEG-LS, J2K
        "1.2.840.10008.1.2.5",  # RLE
    }
    assert expected <= stored_syntaxes, sorted(expected - stored_syntaxes)
    assert echoscu(node.port).returncode == 0


def test_retired_jpeg_syntaxes_are_refused_at_negotiation_and_node_keeps_serving(node):
    samples = shared_case("dicom_ts_samples")
    retired = sorted(samples.rglob("*1.2.840.10008.1.2.4.5[35].dcm"))
    assert retired, "expected the retired JPEG samples in dicom_ts_samples"
    result = storescu(node.port, *retired)
    assert "(Success)" not in result.stdout + result.stderr
    assert not _stored_sop_uids(node.data_dir)
    assert echoscu(node.port).returncode == 0


def test_other_content_under_a_stored_uid_is_refused_with_duplicate_sop_instance(node, tmp_path):
    f = sorted((shared_case("crlm_ct_1004_ge_abdomen") / "ct_dicom").glob("*.dcm"))[0]
    first = storescu(node.port, f)
    assert store_responses(first.stdout + first.stderr) == [(str(f), "(Success)")]
    changed = pydicom.dcmread(f)
    changed.WindowWidth = 1234
    changed.save_as(tmp_path / "changed.dcm")
    result = storescu(node.port, tmp_path / "changed.dcm")
    [(_, response)] = store_responses(result.stdout + result.stderr)
    assert response == "(Error: CannotUnderstand)"
    assert node.status()["instances"] == 1
    [event] = [e for e in node.log_events("store.refused") if e["status"] == "0xC240"]
    assert event["reason"] == "SOP Instance UID already stored with other content"


def test_duplicate_instance_is_idempotent(node):
    f = sorted((shared_case("crlm_ct_1004_ge_abdomen") / "ct_dicom").glob("*.dcm"))[0]
    for _ in range(2):
        result = storescu(node.port, f)
        assert store_responses(result.stdout + result.stderr) == [(str(f), "(Success)")]
    assert node.status()["instances"] == 1
    assert node.log_events("store.duplicate")


def test_series_completes_early_on_operator_command(node_factory, tmp_path):
    node = node_factory(completion_timeout_s=3600, complete_on_release=False).start()
    files = sorted((shared_case("crlm_ct_1004_ge_abdomen") / "ct_dicom").glob("*.dcm"))[:5]
    assert storescu(node.port, *files).returncode == 0
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    assert node.status()["series_receiving"] == 1
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "series", "complete", series_uid,
                          "--config", str(node.config_path), "--data-dir", str(node.data_dir)],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    status = node.wait_for(lambda s: s["jobs"]["done"] == 1, what="the job of the completed series")
    assert status["series_receiving"] == 0


def test_late_instances_reopen_the_series_as_a_new_version(node):
    files = sorted((shared_case("crlm_ct_1004_ge_abdomen") / "ct_dicom").glob("*.dcm"))
    assert storescu(node.port, *files[:20]).returncode == 0
    node.wait_for(lambda s: s["jobs"]["done"] == 1, what="first version processed")
    assert storescu(node.port, *files[20:]).returncode == 0
    node.wait_for(lambda s: s["jobs"]["done"] == 2, what="second version processed")
    shapes = sorted(tuple(e["shape"]) for e in node.log_events("job.done"))
    assert shapes == [(20, 512, 512), (41, 512, 512)]
    versions = sorted(e["version"] for e in node.log_events("series.complete"))
    assert versions == [1, 2]


def test_jpeg_ls_real_chest_series_is_received_and_assembled(node):
    files = sorted((shared_case("lidc_idri_0314_chest_1mm") / "ct_dicom").glob("*.dcm"))[:40]
    assert pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEGLSLossless
    result = storescu(node.port, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    node.wait_for(lambda s: s["jobs"]["done"] == 1, what="JPEG-LS series processed")
    assert node.log_events("job.done")[0]["shape"] == [40, 512, 512]


def test_sigterm_stops_the_node_cleanly(node):
    started = time.monotonic()
    assert node.stop() == 0
    assert time.monotonic() - started < 30
    assert node.log_events("node.stopped")


def test_second_server_on_same_data_dir_refuses_to_start(node, node_factory):
    second = node_factory()
    second.data_dir = node.data_dir
    with pytest.raises(RuntimeError, match="another isonode server"):
        second.start()


def test_gantry_tilted_head_series_is_resampled_onto_a_regular_grid(node):
    files = sorted((shared_case("dcmqa_ge_head_gantry_tilt") / "ct_dicom").glob("*.dcm"))
    result = storescu(node.port, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    node.wait_for(lambda s: s["jobs"]["done"] == 1, what="tilted series processed")
    resampled = node.log_events("volume_resampled")
    assert resampled and resampled[0]["slices_in"] == str(len(files))
    z, y, x = node.log_events("job.done")[0]["shape"]
    assert x == 512 and y > 512 and z > len(files)  # sheared stack widened in-plane, finer along the normal


def test_enhanced_ct_multiframe_phantom_is_received_and_assembled(node, tmp_path):
    ph = make_phantom((24, 64, 64), (2.0, 1.5, 1.5), seed=5)
    files = write_ct_series(ph.hu, tmp_path / "enhanced", spacing=(2.0, 1.5, 1.5), enhanced=True)
    assert len(files) == 1
    result = storescu(node.port, *files)
    assert store_responses(result.stdout + result.stderr)[0][1] == "(Success)", result.stdout
    node.wait_for(lambda s: s["jobs"]["done"] == 1, what="enhanced CT processed")
    assert node.log_events("job.done")[0]["shape"] == [24, 64, 64]


def test_concurrent_senders_are_all_stored_and_processed(node, tmp_path):
    series = [write_ct_series(make_phantom((30, 64, 64), (2.0, 2.0, 2.0), seed=s).hu, tmp_path / f"s{s}",
                              spacing=(2.0, 2.0, 2.0)) for s in range(3)]
    senders = [subprocess.Popen([require_tool("storescu"), "-R", "-xe", "-aec", NODE_AE, "-aet", f"CT{i}",
                                 "127.0.0.1", str(node.port), *map(str, files)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for i, files in enumerate(series)]
    assert [p.wait(timeout=120) for p in senders] == [0, 0, 0]
    status = node.wait_for(lambda s: s["jobs"]["done"] == 3, what="three series processed")
    assert status["instances"] == 90 and status["series"] == 3
    released = node.log_events("association.released")
    assert sorted(e["stored"] for e in released if e["calling_ae"].startswith("CT")) == [30, 30, 30]


def test_stored_files_with_our_file_meta_pass_dciodvfy(node, tmp_path):
    ph = make_phantom((3, 32, 32), (2.0, 1.0, 1.0), seed=2)
    files = write_ct_series(ph.hu, tmp_path / "s", spacing=ph.spacing, origin=ph.origin)
    assert dciodvfy_errors(files[0]) == []  # the source is clean, so any error would be ours
    assert storescu(node.port, *files).returncode == 0
    stored = sorted((node.data_dir / "spool").glob("*/*/*.dcm"))
    assert len(stored) == 3
    for path in stored:
        assert dciodvfy_errors(path) == [], path
        assert pydicom.dcmread(path).file_meta.SourceApplicationEntityTitle == "TESTSCU"


def test_serve_refuses_to_start_on_a_broken_model_bundle_naming_the_file(tmp_path):
    import shutil as _shutil

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    _shutil.copy(REPO / "models" / "ct_chest" / "manifest.json", bundle)
    config = tmp_path / "isonode.yaml"
    config.write_text(f"processing: {{bundle: {bundle}}}\n")
    run = subprocess.run([sys.executable, "-m", "appliance.cli", "serve", "--config", str(config), "--port", "0",
                          "--data-dir", str(tmp_path / "data")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("isonode: model bundle")
    assert "is missing" in run.stderr and "Traceback" not in run.stderr

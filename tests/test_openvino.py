"""OpenVINO as a CPU backend: the same labels as ONNX Runtime FP32 on real CT, candidates admitted only by
the bundle's accuracy check, and the check itself."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_case

from appliance.inference.accuracy import CHECK_FILE, MAX_DICE_LOSS, eligibility, read_check
from appliance.inference.backends import OrtBackend, choose_backend, cpu_backend
from appliance.inference.bundle import load_bundle
from appliance.inference.cpu_precision import REFERENCE, Candidate, cpu_candidates, cpu_fingerprint
from appliance.inference.openvino_backend import openvino_version
from appliance.inference.segment import segment_array
from compiler.precision_check import check_mode, class_dice

BUNDLE = Path(__file__).resolve().parent.parent / "models" / "ct_chest"
pytestmark = pytest.mark.skipif(openvino_version() is None, reason="openvino is not installed on this platform")

OV_FP32, OV_BF16, OV_INT8 = Candidate("openvino", "fp32"), Candidate("openvino", "bf16"), Candidate("openvino", "int8")


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUNDLE)


@pytest.fixture(scope="module")
def chest():
    from dicom_node.volume import assemble_volume

    vol = assemble_volume(sorted((shared_case("lidc_idri_0314_chest_1mm") / "ct_dicom").glob("*.dcm")))
    return vol.array, vol.affine


def test_openvino_runs_a_patch_like_onnx_runtime_and_gives_each_thread_its_own_request(bundle):
    spec = bundle.mode("preview")
    x = np.random.default_rng(0).normal(size=(1, 3, *spec.patch)).astype(np.float32)
    reference = OrtBackend(bundle.path(spec.fp32), ["CPUExecutionProvider"], 2).run(x)
    backend = cpu_backend(OV_FP32, bundle.path(spec.fp32), 2)
    outputs: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: outputs.append(backend.run(x))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outputs) == 2 and backend.name == "openvino-fp32"
    for out in outputs:
        assert out.shape == reference.shape
        assert np.abs(out - reference).max() < 1e-2 * np.abs(reference).max()


@pytest.mark.parametrize("candidate", [OV_FP32, OV_BF16], ids=lambda c: c.key)
def test_openvino_labels_a_real_chest_ct_as_onnx_runtime_fp32_does(bundle, chest, candidate):
    if candidate.precision == "bf16" and candidate not in cpu_candidates(bundle.mode("preview"), cpu_fingerprint(),
                                                                           True):
        pytest.skip("this CPU has no native bf16")
    hu, affine = chest
    spec = bundle.mode("preview")
    reference = segment_array(hu, affine, bundle, "preview", cpu_backend(REFERENCE, bundle.path(spec.fp32), 2))
    result = segment_array(hu, affine, bundle, "preview", cpu_backend(candidate, bundle.path(spec.fp32), 2))
    validated = {lab.value: lab.name for lab in bundle.manifest.labels if not lab.experimental}
    scores = class_dice(result.labels, reference.labels, validated)
    assert set(scores) >= {"body", "bone", "lung_left", "lung_right", "airway"}
    assert min(scores.values()) >= 1 - MAX_DICE_LOSS, scores


def _full_mode_check(records: dict) -> dict:
    return {"modes": {"full": records}}


def test_only_candidates_the_accuracy_check_passed_for_these_files_are_eligible(bundle):
    sha = bundle.manifest.files
    spec = bundle.mode("full")
    check = _full_mode_check({
        "openvino-bf16": {"model_sha256": sha[spec.fp32], "min_dice": 0.996},
        "openvino-int8": {"model_sha256": sha[spec.int8], "min_dice": 0.47, "worst": "aorta on chest"},
        "ort-cpu-int8": {"model_sha256": "another build's file", "min_dice": 0.999},
    })
    verdict = eligibility(bundle, "full", [REFERENCE, Candidate("ort-cpu", "int8"), OV_FP32, OV_BF16, OV_INT8], check)
    assert [c.key for c in verdict.eligible] == ["ort-cpu-fp32", "openvino-bf16"]
    assert "0.470" in verdict.refused["openvino-int8"] and "aorta on chest" in verdict.refused["openvino-int8"]
    assert "not checked" in verdict.refused["ort-cpu-int8"]  # a record for other files does not count
    assert "not checked" in verdict.refused["openvino-fp32"]


def test_auto_runs_the_fastest_eligible_candidate_and_a_forced_ineligible_one_still_runs(bundle, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("engines", CHECK_FILE))
    b = load_bundle(root)
    spec = b.mode("preview")
    (root / CHECK_FILE).write_text(json.dumps({"modes": {"preview": {
        "openvino-fp32": {"model_sha256": b.manifest.files[spec.fp32], "min_dice": 1.0},
        "openvino-int8": {"model_sha256": b.manifest.files[spec.int8], "min_dice": 0.69, "worst": "airway"}}}}))
    auto = choose_backend(b, spec, mode="preview", preference="cpu", threads=2, precision_cache=tmp_path)
    assert set(auto.precision.ms_per_patch) == {"ort-cpu-fp32", "openvino-fp32"}
    assert auto.backend.name == min(auto.precision.ms_per_patch, key=auto.precision.ms_per_patch.get)
    assert "0.690" in auto.precision.ineligible["openvino-int8"]
    forced = choose_backend(b, spec, mode="preview", preference="openvino", precision="int8", threads=2,
                            precision_cache=tmp_path)
    assert (forced.backend.name, forced.precision.source) == ("openvino-int8", "requested")
    with pytest.raises(RuntimeError, match="bf16"):
        choose_backend(b, spec, mode="preview", preference="ort-cpu", precision="bf16", threads=2)


def test_the_check_scores_each_candidate_against_fp32_per_validated_class(bundle):
    from compiler.phantom import make_phantom

    ph = make_phantom((48, 96, 96), (3.0, 3.0, 3.0), seed=4)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    records = check_mode(bundle, "preview", [("phantom", ph.hu, affine)], [OV_FP32], threads=2)
    rec = records["openvino-fp32"]
    assert rec["model_sha256"] == bundle.manifest.files[bundle.mode("preview").fp32]
    assert rec["eligible"] and rec["min_dice"] >= 0.99 and "phantom" in rec["cases"]
    assert not set(rec["cases"]["phantom"]) & {lab.name for lab in bundle.manifest.labels if lab.experimental}


def test_the_shipped_bundle_carries_an_accuracy_record_for_its_own_files(bundle):
    check = read_check(bundle)
    assert check, f"{CHECK_FILE} is missing: run python -m compiler.precision_check"
    for mode, spec in bundle.manifest.modes.items():
        records = check["modes"][mode]
        assert {"ort-cpu-int8", "openvino-fp32", "openvino-int8"} <= set(records)
        for key, rec in records.items():
            assert rec["model_sha256"] == bundle.manifest.files[Candidate.parse(key).model(spec)], (mode, key)
            assert rec["eligible"] == (rec["min_dice"] >= 1 - MAX_DICE_LOSS)


def test_isonode_segment_runs_openvino_when_asked_and_names_runtime_and_precision(tmp_path):
    import subprocess
    import sys

    from compiler.phantom import make_phantom, write_ct_series

    ph = make_phantom((40, 96, 96), (5.0, 3.5, 3.5), seed=5)
    series = tmp_path / "series"
    write_ct_series(ph.hu, series, spacing=ph.spacing, origin=ph.origin)
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("engines"))
    proc = subprocess.run([sys.executable, "-m", "appliance.cli", "segment", str(series), "--mode", "preview",
                           "--out", str(tmp_path / "seg.nii.gz"), "--bundle", str(root), "--threads", "2",
                           "--backend", "openvino", "--precision", "fp32"],
                          capture_output=True, text=True, cwd=BUNDLE.parent.parent, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("backend openvino-fp32") for line in lines), proc.stdout
    assert any(line.split()[:1] == ["network_s"] for line in lines), proc.stdout
    assert list((root / "engines").iterdir()), "OpenVINO's compiled-model cache is kept with the bundle"

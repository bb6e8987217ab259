"""Post-processing as data (appliance.inference.postprocess_steps): the manifest's chain runs in order,
reproduces the chest chain that segment.py hard-coded before, works on a bundle with other label names,
and load_bundle refuses a chain it cannot run, naming the mode, the step and the key."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from appliance.inference import segment
from appliance.inference.backends import OrtBackend
from appliance.inference.bundle import (
    BundleError,
    Code,
    Label,
    Manifest,
    ModeSpec,
    Normalisation,
    PostprocessStep,
    load_bundle,
    write_manifest,
)
from appliance.inference.grid import grid_of
from appliance.inference.normalise import enclosed_air
from appliance.inference.postprocess import (
    airway_beside_lumen,
    airway_is_air,
    bone_edge,
    confine_experimental,
    drop_bone_outside_patient,
    drop_bone_with_soft_surface,
    drop_bone_without_cortex,
    drop_implausible_airway,
    extend_airway_through_air,
    fill_airway_lumen,
    fill_bone_marrow,
    grow_lungs_into_air,
    keep_airway_tree,
    keep_patient,
    keep_single_structures,
    lung_edge,
    trim_bone_surface,
)
from appliance.inference.postprocess_steps import (
    STEPS,
    LabelValue,
    PostprocessContext,
    register,
    run_chain,
)
from appliance.inference.segment import segment_array
from compiler.phantom import make_phantom

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "models" / "ct_chest"


def _chest_chain_by_hand(labels, probs, hu, enclosed, table, single, spacing) -> None:
    """The chest chain written out as calls, as segment._postprocess hard-coded it before the chain moved
    into the manifest, with the partial-volume edges of issue 30 in place of the lung trim (the reference)."""
    value = {lab.name: lab.value for lab in table}
    confine_experimental(labels, probs, [lab.value for lab in table if not lab.experimental],
                         [lab.value for lab in table if lab.experimental], value["body"], bone=value["bone"])
    airway_is_air(labels, hu, value["airway"], value["body"])
    airway_beside_lumen(labels, hu, value["airway"])
    keep_patient(labels)
    keep_single_structures(labels, [value[name] for name in single if name in value and name != "airway"])
    drop_implausible_airway(labels, hu, value["airway"], (value["lung_left"], value["lung_right"]))
    if "airway" in single:
        keep_airway_tree(labels, hu, value["airway"])
    fill_airway_lumen(labels, enclosed, value["airway"])
    extend_airway_through_air(labels, hu, value["airway"], (value["body"], value["lung_left"], value["lung_right"]),
                              spacing)
    drop_bone_outside_patient(labels, value["bone"])
    fill_bone_marrow(labels, hu, value["bone"], value["body"], spacing)
    drop_bone_without_cortex(labels, hu, value["bone"], spacing)
    trim_bone_surface(labels, hu, value["bone"], value["body"])
    drop_bone_with_soft_surface(labels, hu, value["bone"], spacing)
    bone_edge(labels, hu, value["bone"], value["body"], spacing)
    grow_lungs_into_air(labels, hu, enclosed, (value["lung_left"], value["lung_right"]), (0, value["body"]), spacing)
    lung_edge(labels, hu, (value["lung_left"], value["lung_right"]), value["body"], spacing)


@pytest.fixture(scope="module")
def chest():
    return load_bundle(BUNDLE)


def test_shipped_chain_on_noisy_phantom_labels_matches_the_chest_chain_by_hand(chest):
    ph = make_phantom((48, 96, 96), (3.0, 3.0, 3.0), seed=2)
    rng = np.random.default_rng(0)
    probs = np.eye(9, dtype=np.float32)[ph.labels].transpose(3, 0, 1, 2) + rng.random((9, *ph.labels.shape),
                                                                                      dtype=np.float32) * 0.9
    hu = ph.hu.astype(np.float32)
    enclosed = enclosed_air(hu)
    for mode, spec in chest.manifest.modes.items():
        before, after = np.argmax(probs, axis=0).astype(np.uint8), np.argmax(probs, axis=0).astype(np.uint8)
        _chest_chain_by_hand(before, probs, hu, enclosed, chest.manifest.labels, spec.keep_largest_component,
                               ph.spacing)
        seconds = run_chain(PostprocessContext(after, probs, hu, enclosed, ph.spacing, chest.manifest.labels),
                            spec.postprocess)
        assert len(seconds) == len(spec.postprocess) == 17
        assert (before != np.argmax(probs, axis=0)).sum() > 1000, "the chain must have had work to do"
        np.testing.assert_array_equal(after, before, err_msg=mode)


def test_shipped_preview_network_output_post_processed_as_the_chain_by_hand(chest, monkeypatch):
    seen = []

    def recording_chain(ctx, chain):
        seen.append((ctx.labels.copy(), ctx.probabilities.copy(), ctx.hu.copy(), ctx.enclosed.copy(), ctx.spacing))
        out = run_chain(ctx, chain)
        seen.append(ctx.labels.copy())
        return out

    monkeypatch.setattr(segment, "run_chain", recording_chain)
    ph = make_phantom((56, 100, 100), (3.0, 3.0, 3.0), seed=4)
    spec = chest.mode("preview")
    backend = OrtBackend(chest.path(spec.fp32), ["CPUExecutionProvider"], 2)
    affine = np.diag([*ph.spacing[::-1], 1.0])
    segment_array(ph.hu, affine, chest, "preview", backend)
    (labels, probs, hu, enclosed, spacing), after = seen
    _chest_chain_by_hand(labels, probs, hu, enclosed, chest.manifest.labels, spec.keep_largest_component, spacing)
    np.testing.assert_array_equal(after, labels)


def test_build_writes_the_chain_the_shipped_manifest_carries(chest):
    pytest.importorskip("torch", reason="compiler.build needs the `model` extra (torch)")
    from compiler.build import SMOKE, chest_postprocess

    for spec in chest.manifest.modes.values():
        assert chest_postprocess(tuple(spec.keep_largest_component)) == spec.postprocess
    smoke = chest_postprocess(SMOKE.single_component["preview"])
    assert [(s.step, s.args) for s in smoke if s.step.startswith("keep_")] == [
        ("keep_patient", {}), ("keep_single_structures", {"labels": ["lung_left", "lung_right"]}),
        ("keep_airway_tree", {"airway": "airway"})]


# a bundle of other labels

def _code(meaning: str) -> Code:
    return Code(code="0", scheme="SCT", meaning=meaning)


OTHER_LABELS = ["patient", "vertebra", "kidney", "spleen"]
OTHER_CHAIN = [
    {"step": "confine_experimental", "host": "patient", "bone": "vertebra"},
    {"step": "keep_patient"},
    {"step": "keep_single_structures", "labels": ["kidney", "spleen"]},
    {"step": "trim_bone_surface", "bone": "vertebra", "host": "patient"},
]


def _other_bundle(root: Path, chain: list[dict] | None = OTHER_CHAIN) -> Path:
    root.mkdir(parents=True)
    (root / "net.onnx").write_bytes(b"stand-in: the tests pass their own backend")
    labels = [Label(value=i, name=n, category=_code("organ"), type=_code(n), color=(i * 50, 0, 0),
                    experimental=n == "spleen") for i, n in enumerate(OTHER_LABELS, start=1)]
    mode = ModeSpec(spacing=(2.0, 2.0, 2.0), patch=(16, 32, 32), fp32="net.onnx",
                    postprocess=None if chain is None else [PostprocessStep.model_validate(s) for s in chain])
    write_manifest(root, Manifest(name="other", version="1", labels=labels,
                                  normalisation=Normalisation(clip=(-1000.0, 2000.0), scale=0.001),
                                  modes={"abdomen": mode}, files={}))
    return root


class _RegionNet:
    """Patient where denser than air, vertebra above 180 HU, kidney and spleen where the HU says so, kidney
    the runner-up in the spleen."""

    name = "regions"

    def run(self, x: np.ndarray) -> np.ndarray:
        hu = x[:, 0] * 1000.0
        logits = np.zeros((x.shape[0], 5, *x.shape[2:]), dtype=np.float32)
        logits[:, 0] = 1.0
        logits[:, 1] = (hu > -500) * 2.0
        logits[:, 2] = (hu > 180) * 3.0
        logits[:, 3] = (np.abs(hu - 150) < 5) * 4.0 + (np.abs(hu - 100) < 5) * 3.0
        logits[:, 4] = (np.abs(hu - 100) < 5) * 4.0
        return logits


def _abdomen() -> np.ndarray:
    hu = np.full((24, 64, 64), -1000.0, dtype=np.float32)
    hu[2:22, 8:56, 8:56] = 40.0  # patient
    hu[8:16, 20:30, 10:20] = 150.0  # a kidney
    hu[10:12, 40:42, 40:42] = 150.0  # and a detached speck the network also calls kidney
    hu[6:18, 30:40, 28:38] = 1000.0  # a vertebra
    hu[6:18, 30:40, 27] = 200.0  # with a soft surface layer the network calls bone
    hu[9:15, 22:28, 42:48] = 100.0  # a spleen (experimental)
    return hu


def test_a_bundle_with_other_label_names_runs_the_chain_its_manifest_names(tmp_path):
    bundle = load_bundle(_other_bundle(tmp_path / "other"))
    hu, affine = _abdomen(), np.diag([2.0, 2.0, 2.0, 1.0])
    res = segment_array(hu, affine, bundle, "abdomen", _RegionNet())
    labels = res.labels_on(grid_of(hu, affine))
    assert (labels[8:16, 20:30, 10:20] == 3).all()
    assert (labels[10:12, 40:42, 40:42] == 1).all()  # kidney is one structure: the speck is patient
    assert (labels[6:18, 30:40, 28:38] == 2).all() and (labels[6:18, 30:40, 27] == 1).all()  # surface trimmed
    # the experimental spleen became the validated runner-up, kidney, and then a second kidney island: patient
    assert (labels[9:15, 22:28, 42:48] == 1).all()
    assert "postprocess_s" in res.timings


def test_a_manifest_without_a_chain_loads_with_a_warning_and_keeps_the_networks_labels(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="appliance.inference.bundle"):
        bundle = load_bundle(_other_bundle(tmp_path / "old", chain=None))
    assert [r.getMessage() for r in caplog.records if "without_postprocess" in r.getMessage()] == [
        f"event=bundle_mode_without_postprocess bundle={tmp_path / 'old'} mode=abdomen labels=argmax"]
    hu, affine = _abdomen(), np.diag([2.0, 2.0, 2.0, 1.0])
    labels = segment_array(hu, affine, bundle, "abdomen", _RegionNet()).labels_on(grid_of(hu, affine))
    assert (labels[10:12, 40:42, 40:42] == 3).all() and (labels[9:15, 22:28, 42:48] == 4).all()
    assert (labels[6:18, 30:40, 27] == 2).all()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="appliance.inference.bundle"):
        load_bundle(_other_bundle(tmp_path / "none", chain=[]))  # no post-processing, chosen: no warning
    assert not caplog.records


@pytest.mark.parametrize("bad, message", [
    ({"step": "frobnicate"}, r"\(frobnicate\): unknown step \(known: airway_beside_lumen, .*trim_bone_surface.*\)"),
    ({"step": "trim_bone_surface", "bone": "vertebra", "host": "body"},
     r"\(trim_bone_surface\): argument 'host' names label 'body', which the bundle does not have "
     r"\(labels: patient, vertebra, kidney, spleen, background\)"),
    ({"step": "trim_bone_surface", "host": "patient"},
     r"\(trim_bone_surface\): missing argument 'bone' \(takes bone, host\)"),
    ({"step": "keep_patient", "host": "patient"}, r"\(keep_patient\): unexpected argument 'host' \(takes none\)"),
    ({"step": "keep_single_structures", "labels": "kidney"},
     r"\(keep_single_structures\): argument 'labels' must be a list of label names, not 'kidney'"),
    ({"step": "trim_bone_surface", "bone": ["vertebra"], "host": "patient"},
     r"\(trim_bone_surface\): argument 'bone' must be a label name, not \['vertebra'\]"),
])
def test_load_bundle_refuses_a_chain_it_cannot_run_naming_mode_step_and_key(tmp_path, bad, message):
    root = _other_bundle(tmp_path / "bad", chain=[{"step": "keep_patient"}, bad])
    with pytest.raises(BundleError, match=rf"manifest.json mode abdomen postprocess step 1 {message}$"):
        load_bundle(root)


def test_a_step_argument_that_is_not_a_name_is_refused_with_its_key(tmp_path):
    root = _other_bundle(tmp_path / "num")
    raw = json.loads((root / "manifest.json").read_text())
    raw["modes"]["abdomen"]["postprocess"][0]["host"] = 3
    (root / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"key modes\.abdomen\.postprocess\.0\.host"):
        load_bundle(root)


def test_the_shipped_manifest_refuses_a_step_naming_a_label_it_lacks(tmp_path):
    bad = tmp_path / "ct_chest"
    shutil.copytree(BUNDLE, bad, ignore=shutil.ignore_patterns("engines", "*.onnx"))
    raw = json.loads((bad / "manifest.json").read_text())
    raw["modes"]["full"]["postprocess"][12]["host"] = "kidney"
    (bad / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"mode full postprocess step 12 \(trim_bone_surface\).*'kidney'"):
        load_bundle(bad, verify=False)


def test_a_step_registers_once_with_keyword_label_arguments_only():
    assert {"trim_bone_surface", "grow_lungs_into_air", "keep_single_structures"} <= set(STEPS)
    assert STEPS["grow_lungs_into_air"].arguments == {"lungs": True, "hosts": True}
    with pytest.raises(ValueError, match="registered twice"):
        register("keep_patient")(lambda ctx: None)
    with pytest.raises(TypeError, match="'threshold' must be keyword-only and annotated LabelValue"):
        @register("test_only_bad_step")
        def _bad(ctx: PostprocessContext, *, bone: LabelValue, threshold: float) -> None:
            pass
    assert "test_only_bad_step" not in STEPS

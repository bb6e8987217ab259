"""compiler.labels.cache and the evaluation's references: cached labels keyed by the content that made
them, and every held-out score saying what kind of reference it was measured against."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from appliance.inference.grid import grid_of
from compiler.data import ALL_KNOWN, CASE_BY_NAME, REFERENCE_KINDS, Case, LabelledVolume, reference_kinds
from compiler.evaluate import TARGETS, evaluation_table, heldout_record, target_misses
from compiler.labels import cache
from compiler.labels.cache import labeller_sources, reference_ingredients, reference_key

CASE = Case("case_a", "ct.nii.gz", "CC0", "heldout", "seg.nii.gz", "ts_total")
FINE = (1.5, 1.5, 1.5)


@pytest.fixture
def repo_and_data(tmp_path):
    """A repository whose labeller imports a helper module (and one module nobody imports), and a case."""
    repo, root = tmp_path / "repo", tmp_path / "data"
    (repo / "compiler" / "labels").mkdir(parents=True)
    (repo / "helpers").mkdir()
    for init in ("compiler/__init__.py", "compiler/labels/__init__.py", "helpers/__init__.py"):
        (repo / init).write_text("")
    (repo / "compiler/labels/rules.py").write_text("from helpers.morph import close\nTHRESHOLD = 250\n")
    (repo / "compiler/data.py").write_text("import numpy as np\nfrom .labels import rules\n")
    (repo / "helpers/morph.py").write_text("from . import kernel\ndef close(x):\n    return x\n")
    (repo / "helpers/kernel.py").write_text("SIZE = 3\n")
    (repo / "helpers/unused.py").write_text("X = 1\n")
    (root / CASE.name).mkdir(parents=True)
    (root / CASE.name / CASE.source).write_bytes(b"ct bytes")
    (root / CASE.name / CASE.silver).write_bytes(b"silver bytes")
    return repo, root


def test_the_labeller_sources_are_its_package_data_py_and_the_modules_they_import(repo_and_data):
    repo, _ = repo_and_data
    names = {p.relative_to(repo).as_posix() for p in labeller_sources(repo)}
    assert names == {"compiler/__init__.py", "compiler/labels/__init__.py", "compiler/labels/rules.py",
                     "compiler/data.py", "helpers/__init__.py", "helpers/morph.py", "helpers/kernel.py"}
    ingredients = reference_ingredients(CASE, FINE, repo_and_data[1], repo=repo)
    assert "numpy" in ingredients["libraries"] and not {"compiler", "helpers"} & set(ingredients["libraries"])
    # the real labeller: every module of compiler/labels, the silver merge, the DICOM reader, the resampling
    real = {p.relative_to(cache.REPO).as_posix() for p in labeller_sources()}
    assert {"compiler/labels/reference.py", "compiler/labels/table.py", "compiler/labels/cache.py",
            "compiler/data.py", "dicom_node/volume.py", "appliance/inference/grid.py"} <= real
    assert "compiler/build.py" not in real and "compiler/train.py" not in real


def test_the_key_changes_with_the_labeller_text_the_input_bytes_and_the_grid_and_only_then(repo_and_data):
    repo, root = repo_and_data

    def key(spacing=FINE):
        return reference_key(CASE, spacing, root, repo=repo)

    k0 = key()
    assert key() == k0  # nothing changed
    os.utime(root / CASE.name / CASE.source, (1, 1))  # a fresh clone's times: the content decides
    assert key() == k0

    rules = repo / "compiler/labels/rules.py"
    text = rules.read_text()
    rules.write_text(text.replace("250", "260"))
    assert key() != k0
    rules.write_text(text)
    assert key() == k0
    kernel = repo / "helpers/kernel.py"  # imported by an imported module
    kernel.write_text("SIZE = 5\n")
    assert key() != k0
    kernel.write_text("SIZE = 3\n")
    (repo / "helpers/unused.py").write_text("X = 2\n")  # not the labeller's
    assert key() == k0
    assert reference_key(CASE, FINE, root, sources=[rules], repo=repo) != k0  # the sources may be given

    for name in (CASE.source, CASE.silver):
        f = root / CASE.name / name
        f.write_bytes(b"other " + f.read_bytes())
        assert key() != k0
        f.write_bytes(f.read_bytes().removeprefix(b"other "))
    assert key() == k0
    assert key((3.0, 3.0, 3.0)) != k0


def test_a_case_is_labelled_once_and_again_only_when_its_files_change(tmp_path, monkeypatch):
    root, store = tmp_path / "data", tmp_path / "cache"
    (root / CASE.name).mkdir(parents=True)
    (root / CASE.name / CASE.source).write_bytes(b"ct")
    (root / CASE.name / CASE.silver).write_bytes(b"silver")
    calls = []

    def fake_labelled_case(case, spacing, root_):
        calls.append(case.name)
        labels = np.ones((4, 5, 6), np.uint8)
        return LabelledVolume(case.name, np.zeros(labels.shape, np.float32), labels,
                              np.full(labels.shape, ALL_KNOWN, np.uint16), grid_of(labels, np.eye(4)),
                              ("a note",), reference_kinds(case))

    monkeypatch.setattr(cache, "labelled_case", fake_labelled_case)
    first = cache.cached_case(CASE, FINE, store, root)
    again = cache.cached_case(CASE, FINE, store, root)
    assert calls == [CASE.name] and again.reference_key == first.reference_key != ""
    assert again.reference_kind == first.reference_kind == reference_kinds(CASE) and again.notes == ("a note",)
    assert np.array_equal(again.labels, first.labels)
    meta = json.loads(next(store.glob("*.json")).read_text())  # what made it, for a person to read
    assert meta["key"] == first.reference_key and meta["ingredients"]["inputs"].keys() == {
        f"{CASE.name}/{CASE.source}", f"{CASE.name}/{CASE.silver}"}
    assert "compiler/labels/reference.py" in meta["ingredients"]["labeller"]

    (root / CASE.name / CASE.source).write_bytes(b"ct, another series")
    third = cache.cached_case(CASE, FINE, store, root)
    assert calls == [CASE.name] * 2 and third.reference_key != first.reference_key
    assert len(list(store.glob("*.npz"))) == 2  # the old file is left, never read for the new key


def test_reference_kinds_name_what_made_each_class_on_a_silver_case_and_rules_elsewhere():
    total = CASE_BY_NAME["ts_example_dicom_j2k"]  # TotalSegmentator "total": organs, lungs, bones
    assert reference_kinds(total) == {"body": "rule", "bone": "rule+silver", "lung_left": "silver",
                                      "lung_right": "silver", "airway": "rule", "heart": "silver",
                                      "aorta": "silver", "liver": "silver"}
    # what merge_silver takes depends on what the silver file holds and where it looks
    no_lungs = reference_kinds(total, silver_present={2, 6})
    assert (no_lungs["lung_left"], no_lungs["bone"], no_lungs["liver"]) == ("rule", "rule+silver", "silver")
    assert reference_kinds(total, silver_covers_all=False)["lung_right"] == "rule+silver"
    cta = reference_kinds(CASE_BY_NAME["ts_cta_thorax_abdomen_1p5mm"])
    assert cta == {"body": "rule", "bone": "rule+silver", "lung_left": "rule", "lung_right": "rule",
                   "airway": "rule", "heart": "silver", "aorta": "silver"}
    for name in ("lidc_idri_0314_chest_1mm", "crlm_ct_1004_ge_abdomen"):  # the held-out cases: no silver
        assert reference_kinds(CASE_BY_NAME[name]) == dict.fromkeys(
            ("body", "bone", "lung_left", "lung_right", "airway"), "rule")
    assert reference_kinds(CASE_BY_NAME["lidc_idri_0314_chest_1mm"], rule_known={1, 3}) == {
        "body": "rule", "lung_left": "rule"}
    assert set(reference_kinds(None).values()) == {"phantom"}
    assert set(REFERENCE_KINDS) == {"rule", "silver", "rule+silver", "phantom", "human"}


def test_heldout_record_and_table_say_which_scores_are_rules_and_that_none_is_human():
    def row(d, kinds):
        return {"fp32": {c: {"dice": d} for c in kinds}, "int8": {c: {"dice": d} for c in kinds},
                "int8_vs_fp32": {"voxel_agreement": 1.0, "body": 1.0},
                "reference": {"kind": kinds, "labeller": {"key": "k"}, "case": {"name": "x"}}}

    cases = {"preview/chest": row(0.99, {"body": "rule", "lung_left": "rule"}),
             "full/chest": row(0.95, {"body": "rule", "heart": "silver"})}
    rec = heldout_record(cases)
    assert rec["scored_against"] == {"rule": ["body", "lung_left"], "silver": ["heart"]}
    assert [c["name"] for c in rec["cases"]] == ["x"] and "no human" in rec["reference"].lower()
    assert set(rec["kinds"]) == {"rule", "silver"}
    lines = evaluation_table(cases).splitlines()
    assert lines[0].split() == ["case", "class", "reference", "fp32", "int8"]
    assert lines[1].split() == ["preview/chest", "body", "rule", "0.990", "0.990"]
    assert lines[-1].split() == ["full/chest", "heart", "silver", "0.950", "0.950"]
    # the reference entry is no network's scores: the targets read past it
    assert [(m.case, m.which, m.label) for m in target_misses(cases, TARGETS)] == [
        ("full/chest", "fp32", "body"), ("full/chest", "int8", "body")]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    pytest.importorskip("torch", reason="the model toolchain needs the `model` extra (torch)")
    from compiler.build import SMOKE, build

    root = tmp_path_factory.mktemp("smoke_ref")
    return build(root / "bundle", SMOKE, root / "work", threads=1), SMOKE, root / "work"


def test_the_smoke_build_and_a_reevaluation_say_what_each_score_was_measured_against(smoke, tmp_path):
    from appliance.inference.bundle import load_bundle
    from compiler.build import reevaluate

    out, budget, work = smoke

    def check(evaluation):
        assert evaluation["cases"] and evaluation["heldout"]["cases"]
        for row in evaluation["cases"].values():
            kinds = row["reference"]["kind"]
            scored = {c for which in ("teacher", "fp32", "int8") for c in row[which] if c != "seconds"}
            assert set(kinds) == scored and set(kinds.values()) == {"phantom"}  # the smoke build's held-out phantom
            assert row["reference"]["case"]["licence"] == "generated"
        assert set(evaluation["heldout"]["scored_against"]) == {"phantom"}
        assert "human" in evaluation["heldout"]["reference"]
        return {key: {k: sorted(v) for k, v in row.items() if isinstance(v, dict)}
                for key, row in evaluation["cases"].items()} | {"heldout": sorted(evaluation["heldout"])}

    built = check(load_bundle(out).manifest.evaluation)
    again = tmp_path / "bundle"
    shutil.copytree(out, again)
    reevaluate(again, budget, work, threads=1)
    assert check(load_bundle(again).manifest.evaluation) == built  # --reevaluate writes the same structure

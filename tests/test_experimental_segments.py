"""Experimental classes (the bundle marks heart, aorta and liver `experimental`) reach no result unless a
route asks for them, and held back they are body, not holes; asked for, every object, view, page and
`.labels.json` says they are experimental.

The pipeline tests feed the phantom's exact labels through the stages after the network
(`pipeline.describe_result`), so they need no model run; the `isonode segment` test runs the bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import REPO, dciodvfy_errors

from appliance.inference.bundle import Label, load_bundle
from appliance.inference.nifti import label_names, write_label_nifti
from appliance.inference.segment import SegmentationResult
from appliance.meshing import MeshSettings
from appliance.pipeline import (
    OutputPlan,
    PipelineOutput,
    SeriesInput,
    describe_result,
    held_back,
    host_value,
    read_series,
)
from compiler.phantom import LABELS, make_phantom, write_ct_series
from dicom_node.derived import EXPERIMENTAL_LABEL_SUFFIX, SEGMENT_LABEL_MAX, experimental_label
from dicom_node.surface_seg import read_surface_segmentation

BUNDLE = REPO / "models" / "ct_chest"
EXPERIMENTAL = {"heart", "aorta", "liver"}
PHANTOM_SHAPE, PHANTOM_SPACING = (40, 96, 96), (5.0, 3.5, 3.5)


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUNDLE, verify=False)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PHANTOM_SHAPE, PHANTOM_SPACING, seed=5)


@pytest.fixture(scope="module")
def series_dir(phantom, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("series")
    write_ct_series(phantom.hu, out, spacing=phantom.spacing, origin=phantom.origin)
    return out


@pytest.fixture(scope="module")
def case(phantom, series_dir, bundle) -> tuple[SeriesInput, SegmentationResult]:
    """The phantom series as the pipeline reads it, and its exact labels as the segmentation (CT grid)."""
    series_input = read_series(sorted(series_dir.iterdir()))
    assert series_input.volume.array.shape == phantom.labels.shape
    result = SegmentationResult(phantom.labels.copy(), series_input.volume.affine, list(bundle.manifest.labels),
                                "preview", "phantom")
    return series_input, result


@dataclass
class Described:
    output: PipelineOutput
    files: dict[str, bytes]
    dir: Path
    legend: list[str]


def _describe(case, bundle, tmp_path: Path, monkeypatch, *, experimental: bool) -> Described:
    """The stages after the network with a plan like a route's; the rendered view's legend is captured
    (the renderer itself has tests of its own and needs offscreen OpenGL)."""
    legend: list[str] = []

    def render(meshes, segments, **kw):  # noqa: ANN001, ANN202, ARG001
        legend.extend(s.label for s in segments)
        return np.zeros((4, 64, 64, 3), np.uint8)

    monkeypatch.setattr("appliance.pipeline.render_views", render)
    runtime = SimpleNamespace(bundle=bundle, mc_backend="cpu", threads=1,
                              describe_mode=lambda mode: {"inference": "phantom", "marching_cubes": "cpu"})
    plan = OutputPlan(mode="preview", mesh=MeshSettings(20000, 5, 50.0), experimental_segments=experimental,
                      seg=True, mesh_files=("stl",), rendered_view=True)
    output = describe_result(*case, runtime, plan)  # type: ignore[arg-type]
    for o in output.objects:
        (tmp_path / o.filename).write_bytes(o.data)
    return Described(output, {o.filename: o.data for o in output.objects}, tmp_path, legend)


def _seg_items(path: Path) -> list[pydicom.Dataset]:
    return list(pydicom.dcmread(path, stop_before_pixels=True).SegmentSequence)


def _seg_label_map(path: Path, series_input: SeriesInput) -> tuple[np.ndarray, dict[int, str]]:
    """The SEG back on the CT grid (segment numbers) and each number's Tracking ID."""
    seg = hd.seg.segread(path)
    numbers = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in series_input.headers],
                                                combine_segments=True)
    return numbers, {int(s.SegmentNumber): str(s.TrackingID) for s in seg.SegmentSequence}


# ------------------------------------------------------------------------------------------ held_back


def _table(*specs: tuple[int, str, bool]) -> list[Label]:
    code = {"code": "1", "scheme": "99TEST", "meaning": "x"}
    return [Label(value=v, name=n, category=code, type=code, color=(1, 2, 3), experimental=e) for v, n, e in specs]


def test_held_back_experimental_voxels_become_the_body_class_and_stay_when_asked_for():
    table = _table((1, "body", False), (2, "bone", False), (6, "heart", True), (8, "liver", True))
    labels = np.array([[[0, 1, 2, 6, 8, 3]]], dtype=np.uint8)
    assert held_back(labels, table, include_experimental=False).tolist() == [[[0, 1, 2, 1, 1, 3]]]
    assert held_back(labels, table, include_experimental=True) is labels
    assert labels.tolist() == [[[0, 1, 2, 6, 8, 3]]], "the caller's map is not changed"


def test_the_host_is_the_bundles_validated_body_class_and_background_only_without_one(bundle):
    assert host_value(bundle.manifest.labels) == 1
    assert host_value(_table((3, "body", False), (4, "liver", True))) == 3
    assert host_value(_table((3, "kidney", False), (4, "liver", True))) == 0
    assert host_value(_table((3, "body", True))) == 0, "an experimental body is no host"


def test_an_experimental_label_keeps_its_mark_within_the_64_characters_of_lo():
    assert experimental_label("Liver") == "Liver (experimental)"
    long = experimental_label("x" * 80)
    assert len(long) == SEGMENT_LABEL_MAX and long.endswith(EXPERIMENTAL_LABEL_SUFFIX)


# ------------------------------------------------------------------------------------------ the pipeline


def test_by_default_no_experimental_class_reaches_a_result_and_the_body_is_whole_where_they_were(
        case, bundle, phantom, tmp_path, monkeypatch):
    got = _describe(case, bundle, tmp_path, monkeypatch, experimental=False)
    assert {"surfaces.dcm", "seg.dcm", "view.dcm"} <= set(got.files)
    for name in ("surfaces.dcm", "seg.dcm", "view.dcm"):
        assert dciodvfy_errors(got.dir / name) == [], name

    surfaces = read_surface_segmentation(got.dir / "surfaces.dcm")
    assert {"body", "bone", "lung_left", "lung_right"} <= {s.tracking_id for s, _ in surfaces}
    assert not EXPERIMENTAL & {s.tracking_id for s, _ in surfaces}
    assert not any(s.experimental or s.description for s, _ in surfaces)
    items = _seg_items(got.dir / "seg.dcm")
    assert not EXPERIMENTAL & {str(i.TrackingID) for i in items}
    assert not any("SegmentDescription" in i for i in items)
    assert not [name for name in got.files if name.endswith(".stl") and any(e in name for e in EXPERIMENTAL)]
    assert not any("experimental" in label.lower() for label in got.legend)
    page = got.output.display["segments"]
    assert not EXPERIMENTAL & {s["name"] for s in page} and not any(s["experimental"] for s in page)
    assert not EXPERIMENTAL & set(got.output.segments)

    # the SEG: every voxel of the held-back organs is body (1 in the phantom, never background)
    numbers, tracking = _seg_label_map(got.dir / "seg.dcm", case[0])
    body_number = next(n for n, t in tracking.items() if t == "body")
    organs = np.isin(phantom.labels, [LABELS[n] for n in EXPERIMENTAL])
    assert organs.sum() > 10000
    assert (numbers[organs] == body_number).all()
    # the body surface encloses the organs too (no cavity), and its volume counts them
    voxel_mm3 = float(np.prod(PHANTOM_SPACING))
    whole_body = (np.isin(phantom.labels, [LABELS["body"], *(LABELS[n] for n in EXPERIMENTAL)])).sum() * voxel_mm3
    body_only = (phantom.labels == LABELS["body"]).sum() * voxel_mm3
    body_mesh = next(m for s, m in surfaces if s.tracking_id == "body")
    assert abs(body_mesh.signed_volume() - whole_body) < 0.05 * whole_body
    assert body_mesh.signed_volume() > body_only + 0.5 * (whole_body - body_only)
    assert got.output.segments["body"]["volume_ml"] == pytest.approx(whole_body / 1000.0, abs=0.1)


def test_a_route_that_asks_gets_the_experimental_classes_labelled_experimental_in_seg_surfaces_view_and_page(
        case, bundle, phantom, tmp_path, monkeypatch):
    got = _describe(case, bundle, tmp_path, monkeypatch, experimental=True)
    for name in ("surfaces.dcm", "seg.dcm", "view.dcm"):
        assert dciodvfy_errors(got.dir / name) == [], name
    model = f"{bundle.manifest.name} {bundle.manifest.version}"
    description = f"EXPERIMENTAL: not validated for clinical use (model {model})"
    expected = {"heart": "Heart (experimental)", "aorta": "Aorta (experimental)", "liver": "Liver (experimental)"}

    surfaces = {s.tracking_id: s for s, _ in read_surface_segmentation(got.dir / "surfaces.dcm")}
    assert {n: surfaces[n].label for n in EXPERIMENTAL} == expected
    assert all(surfaces[n].description == description and surfaces[n].experimental for n in EXPERIMENTAL)
    assert surfaces["body"].label == "Entire body" and not surfaces["body"].description
    assert not surfaces["body"].experimental

    items = {str(i.TrackingID): i for i in _seg_items(got.dir / "seg.dcm")}
    assert {n: str(items[n].SegmentLabel) for n in EXPERIMENTAL} == expected
    assert all(str(items[n].SegmentDescription) == description for n in EXPERIMENTAL)
    assert "SegmentDescription" not in items["body"]

    assert set(expected.values()) <= set(got.legend)
    page = {s["name"]: s for s in got.output.display["segments"]}
    assert all(page[n]["experimental"] and page[n]["label"] == expected[n] for n in EXPERIMENTAL)
    assert not page["body"]["experimental"]
    stl = [name for name in got.files if name.endswith(".stl")]
    assert all(name.endswith("_experimental.stl") == any(f"_{e}_" in name for e in EXPERIMENTAL) for name in stl)

    # included, the liver is its own segment and the body is the body alone
    numbers, tracking = _seg_label_map(got.dir / "seg.dcm", case[0])
    liver_number = next(n for n, t in tracking.items() if t == "liver")
    assert (numbers[phantom.labels == LABELS["liver"]] == liver_number).all()


def test_held_back_classes_leave_the_seg_of_the_validated_classes_as_it_was(case, bundle, phantom, tmp_path,
                                                                             monkeypatch):
    """Only where an experimental organ was does the default SEG differ from the experimental one, and
    there it says body."""
    (tmp_path / "held").mkdir()
    (tmp_path / "shown").mkdir()
    held = _describe(case, bundle, tmp_path / "held", monkeypatch, experimental=False)
    shown = _describe(case, bundle, tmp_path / "shown", monkeypatch, experimental=True)
    a, ta = _seg_label_map(held.dir / "seg.dcm", case[0])
    b, tb = _seg_label_map(shown.dir / "seg.dcm", case[0])
    names_a = np.array([""] + [ta[n] for n in sorted(ta)])[a]
    names_b = np.array([""] + [tb[n] for n in sorted(tb)])[b]
    organ = np.isin(names_b, sorted(EXPERIMENTAL))
    assert (names_a[~organ] == names_b[~organ]).all()
    assert (names_a[organ] == "body").all()


# ------------------------------------------------------------------------------------------ isonode segment


def test_labels_json_lists_experimental_classes_only_when_included_and_marks_them(bundle, tmp_path):
    table = bundle.manifest.labels
    assert label_names(table, include_experimental=False) == {1: "body", 2: "bone", 3: "lung_left",
                                                              4: "lung_right", 5: "airway"}
    names = label_names(table, include_experimental=True)
    assert names[8] == "liver (experimental)" and names[6] == "heart (experimental)" and names[1] == "body"
    _, jpath = write_label_nifti(np.zeros((2, 3, 4), np.uint8), np.eye(4), tmp_path / "x.nii.gz", names)
    assert json.loads(jpath.read_text())["8"] == "liver (experimental)"  # still value -> name


def test_isonode_segment_holds_experimental_classes_back_as_body_unless_asked_for(series_dir, tmp_path):
    import nibabel as nib

    def start(out: Path, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "appliance.cli", "segment", str(series_dir), "--mode",
                                 "preview", "--out", str(out), "--threads", "1", "--backend", "ort-cpu",
                                 "--precision", "fp32", *extra],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    runs = {"held": start(tmp_path / "held.nii.gz"), "shown": start(tmp_path / "shown.nii.gz", "--experimental")}
    for name, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, (name, stderr[-2000:])
    held = np.asanyarray(nib.load(str(tmp_path / "held.nii.gz")).dataobj)
    shown = np.asanyarray(nib.load(str(tmp_path / "shown.nii.gz")).dataobj)
    assert set(np.unique(held)) <= {0, 1, 2, 3, 4, 5}
    organ = shown >= 6
    assert organ.sum() > 100, "the model finds some experimental organ in the phantom"
    assert (held[organ] == 1).all() and (held[~organ] == shown[~organ]).all()
    held_names = json.loads((tmp_path / "held.labels.json").read_text())
    shown_names = json.loads((tmp_path / "shown.labels.json").read_text())
    assert held_names == {"1": "body", "2": "bone", "3": "lung_left", "4": "lung_right", "5": "airway"}
    assert shown_names == {**held_names, "6": "heart (experimental)", "7": "aorta (experimental)",
                           "8": "liver (experimental)"}


def test_the_page_labels_an_experimental_segment_experimental_even_from_a_result_recorded_before_the_mark():
    from appliance.web.views import _legend_label

    assert _legend_label({"label": "Liver", "experimental": True}) == "Liver (experimental)"
    assert _legend_label({"label": "Liver (experimental)", "experimental": True}) == "Liver (experimental)"
    assert _legend_label({"label": "Entire body", "experimental": False}) == "Entire body"

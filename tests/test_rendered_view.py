"""The rendered 3D view (appliance.rendered_view) and its DICOM form, the Multi-frame True Color Secondary
Capture (dicom_node.secondary_capture), and how the pipeline adds it to a result series.

The data are made here: a small CT series written with compiler.phantom and assembled by dicom_node.volume
(so the affine and source references are the pipeline's own), and three spheres meshed by our marching
cubes on that grid at known places in patient LPS: one on the patient's left, one on the right, one
anterior and toward the head. Colours are chosen so that each sphere has one dominant channel; shading
changes brightness, not which channel dominates.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import REPO, dciodvfy_errors, require_tool
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from appliance.config import SeriesFacts, load_config, parse_config
from appliance.inference.bundle import load_bundle
from appliance.pipeline import SeriesInput, encode_results
from appliance.rendered_view import VIEWS, RenderError, RenderUnavailableError, render_views
from appliance.worker import output_plan
from compiler.phantom import write_ct_series
from dicom_node.derived import (
    Code,
    Equipment,
    ResultSeries,
    SegmentInfo,
    SourceRef,
    SourceSeries,
    part10_bytes,
)
from dicom_node.secondary_capture import (
    MULTIFRAME_TRUE_COLOR_SC_SOP_CLASS_UID,
    MultiFrameTrueColorSC,
    SecondaryCaptureError,
)
from dicom_node.volume import Volume, assemble_volume
from kernels import marching_cubes_labels
from kernels.mesh import Mesh

SHAPE = (40, 60, 100)  # z, y, x
SPACING = (2.0, 2.0, 2.0)  # sz, sy, sx mm
ORIGIN = (-99.0, -59.0, -39.0)  # voxel (0, 0, 0) in LPS mm: the grid is centred on the origin
# Sphere centres in LPS mm: +x is the patient's left, -y anterior, +z toward the head.
LEFT, RIGHT, ANTERIOR_HEAD = (60.0, 0.0, 0.0), (-60.0, 0.0, 0.0), (0.0, -30.0, 20.0)
RADIUS = 14.0
ANATOMY = Code("91723000", "SCT", "Anatomical Structure")
RED = SegmentInfo(1, 3, "Left thing", ANATOMY, Code("44029006", "SCT", "Left lung"), (220, 40, 40))
GREEN = SegmentInfo(2, 4, "Right thing", ANATOMY, Code("3341006", "SCT", "Right lung"), (40, 210, 40))
BLUE = SegmentInfo(3, 5, "Front top", ANATOMY, Code("89187006", "SCT", "Airway structure"), (40, 70, 230))
# a colour no other segment or text has: where it shows, an absent segment was drawn
MAGENTA = SegmentInfo(4, 6, "Absent", ANATOMY, Code("80891009", "SCT", "Heart"), (230, 30, 230))
VIEW_LABELS = ["ANTERIOR", "LEFT LATERAL", "POSTERIOR", "RIGHT LATERAL"]


@dataclass(frozen=True)
class Case:
    source: SourceSeries
    volume: Volume
    headers: list[pydicom.Dataset]
    meshes: dict[int, Mesh]


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    files = write_ct_series(np.zeros(SHAPE, np.int16), tmp_path_factory.mktemp("ct"), spacing=SPACING,
                            origin=ORIGIN, patient_name="DOE^JANE", patient_id="PID-4455")
    vol = assemble_volume(files)
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE[::-1]), indexing="ij"), axis=-1)  # (x, y, z, 3)
    lps = (ijk @ vol.affine[:3, :3].T + vol.affine[:3, 3]).transpose(2, 1, 0, 3)  # (z, y, x, 3)
    labels = np.zeros(SHAPE, np.uint8)
    for value, centre in ((3, LEFT), (4, RIGHT), (5, ANTERIOR_HEAD)):
        labels[np.linalg.norm(lps - np.asarray(centre), axis=-1) <= RADIUS] = value
    meshes = marching_cubes_labels(labels, [3, 4, 5], vol.affine, normals=True)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    refs = tuple(SourceRef(s.sop_class_uid, s.sop_instance_uid, s.frame_number) for s in vol.source_instances)
    source = SourceSeries(headers[0], vol.study_instance_uid, vol.series_instance_uid, vol.frame_of_reference_uid,
                          refs)
    return Case(source, vol, headers, meshes)


@pytest.fixture(scope="module")
def frames(case: Case) -> np.ndarray:
    return render_views(case.meshes, [RED, GREEN, BLUE], notice="PREVIEW - not for diagnosis alone",
                        caption="test-model 1.0")


def _dominant(frame: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """Pixels whose dominant channel is the colour's dominant channel (shading scales brightness, and a
    specular highlight whitens the colour, neither changes the dominant channel), in the middle band of
    the frame: the legend (top right, in the segments' colours) and the notice stay out."""
    channel = int(np.argmax(rgb))
    others = [c for c in range(3) if c != channel]
    f = frame.astype(np.int32)
    mask = (f[..., channel] > 50) & (f[..., channel] > 1.5 * f[..., others[0]]) & (
        f[..., channel] > 1.5 * f[..., others[1]])
    band = np.zeros_like(mask)
    rows = frame.shape[0]
    band[rows // 6: rows - rows // 6] = True
    return mask & band


def _centre(frame: np.ndarray, seg: SegmentInfo) -> tuple[float, float]:
    rows, cols = np.nonzero(_dominant(frame, seg.color_rgb))
    assert rows.size > 200, f"{seg.label} is not visible"
    return float(rows.mean()), float(cols.mean())


# --------------------------------------------------------------------------------------------- rendering


def test_frames_are_rgb_uint8_with_one_frame_per_view_and_a_black_background(case):
    out = render_views(case.meshes, [RED, GREEN, BLUE], size=(300, 400), views=("anterior", "superior"))
    assert out.dtype == np.uint8 and out.shape == (2, 300, 400, 3)
    assert (out.max(axis=-1) < 8).mean() > 0.5  # mostly background


def test_anterior_view_shows_the_patients_left_on_the_image_right_and_the_head_up(frames):
    anterior = frames[0]
    red_row, red_col = _centre(anterior, RED)  # patient's left
    green_row, green_col = _centre(anterior, GREEN)  # patient's right
    blue_row, _ = _centre(anterior, BLUE)  # toward the head
    cols = anterior.shape[1]
    assert red_col > cols * 0.6 and green_col < cols * 0.4
    assert blue_row < red_row - 10 and blue_row < green_row - 10


def test_posterior_view_mirrors_the_anterior_one(frames):
    _, red_col = _centre(frames[2], RED)
    _, green_col = _centre(frames[2], GREEN)
    assert red_col < frames.shape[2] * 0.4 < frames.shape[2] * 0.6 < green_col


@pytest.mark.parametrize(("index", "anterior_on"), [(1, "left"), (3, "right")])
def test_lateral_views_put_anterior_on_the_side_their_letters_say(frames, index, anterior_on):
    _, blue_col = _centre(frames[index], BLUE)  # the anterior sphere
    middle = frames.shape[2] / 2
    assert (blue_col < middle - 20) if anterior_on == "left" else (blue_col > middle + 20)


def test_the_near_segment_hides_the_far_one_in_a_lateral_view(frames):
    """Seen from the patient's left, the left sphere lies in front of the right one, which it covers."""
    left_lateral, right_lateral = frames[1], frames[3]
    assert _dominant(left_lateral, RED.color_rgb).sum() > 20 * max(1, _dominant(left_lateral, GREEN.color_rgb).sum())
    assert _dominant(right_lateral, GREEN.color_rgb).sum() > 20 * max(1, _dominant(right_lateral, RED.color_rgb).sum())


@pytest.mark.parametrize(("name", "letters"), [
    ("anterior", {"left": "R", "right": "L", "top": "H", "bottom": "F"}),
    ("posterior", {"left": "L", "right": "R", "top": "H", "bottom": "F"}),
    ("left", {"left": "A", "right": "P", "top": "H", "bottom": "F"}),
    ("right", {"left": "P", "right": "A", "top": "H", "bottom": "F"}),
    ("superior", {"left": "L", "right": "R", "top": "A", "bottom": "P"}),
    ("inferior", {"left": "R", "right": "L", "top": "A", "bottom": "P"}),
])
def test_orientation_letters_follow_the_camera(name, letters):
    assert VIEWS[name].edge_letters == letters


@pytest.mark.parametrize("absent", ["missing", "empty"])
def test_a_segment_without_a_mesh_is_neither_drawn_nor_listed(case, absent):
    meshes = dict(case.meshes)
    if absent == "empty":
        meshes[MAGENTA.label_value] = Mesh.empty()
    out = render_views(meshes, [RED, GREEN, BLUE, MAGENTA])
    f = out.astype(np.int32)
    magenta = (f[..., 0] > 60) & (f[..., 2] > 60) & (f[..., 1] * 2 < np.minimum(f[..., 0], f[..., 2]))
    assert not magenta.any()  # the whole frame, legend included
    assert all(_dominant(frame, GREEN.color_rgb).any() for frame in out[[0, 2]])


def test_the_body_envelope_is_translucent_so_the_organs_inside_show(case):
    body = SegmentInfo(1, 1, "Body", ANATOMY, Code("38266002", "SCT", "Entire body"), (177, 122, 101))
    z, y, x = np.ogrid[-30:31, -30:31, -30:31]
    around = marching_cubes_labels(((x / 28.0) ** 2 + (y / 28.0) ** 2 + (z / 28.0) ** 2 <= 1).astype(np.uint8),
                                   [1], np.diag([4.0, 4.0, 4.0, 1.0]))[1]  # a 112 mm ball around everything
    around.vertices -= around.vertices.mean(axis=0)
    out = render_views({**case.meshes, 1: around}, [body, RED, GREEN, BLUE], views=("anterior",))
    assert _dominant(out[0], BLUE.color_rgb).sum() > 200


def test_render_refuses_bad_input_naming_the_argument(case):
    with pytest.raises(RenderError, match="views"):
        render_views(case.meshes, [RED], views=("oblique",))
    with pytest.raises(RenderError, match="size"):
        render_views(case.meshes, [RED], size=(10, 10))
    with pytest.raises(RenderError, match="size"):
        render_views(case.meshes, [RED], size=None)
    with pytest.raises(RenderError, match="nothing to render"):
        render_views({}, [RED])
    with pytest.raises(RenderError, match="segments"):
        render_views(case.meshes, [])
    bad = Mesh(case.meshes[3].vertices, case.meshes[3].triangles + np.uint32(10**6))
    with pytest.raises(RenderError, match="segment 1 .*triangles"):
        render_views({3: bad}, [RED])


def test_osmesa_renders_where_egl_finds_no_driver(tmp_path):
    """Where EGL has no vendor library (libglvnd told to look nowhere), the renderer falls back to OSMesa
    by itself; the environment is changed for the child process only."""
    script = (
        "import numpy as np\n"
        "from appliance import rendered_view as rv\n"
        "from dicom_node.derived import Code, SegmentInfo\n"
        "from kernels import marching_cubes_labels\n"
        "lab = np.zeros((12, 12, 12), np.uint8); lab[3:9, 3:9, 3:9] = 1\n"
        "s = SegmentInfo(1, 1, 'Cube', Code('1', 'SCT', 'a'), Code('2', 'SCT', 'b'), (200, 30, 30))\n"
        "f = rv.render_views(marching_cubes_labels(lab, [1], np.eye(4)), [s], size=128, views=('anterior',))\n"
        "print(rv._window_class(), int((f[..., 0] > 100).sum()))\n"
    )
    env = {"__EGL_VENDOR_LIBRARY_FILENAMES": str(tmp_path / "none.json"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    window, red = run.stdout.split()
    assert window == "vtkOSOpenGLRenderWindow" and int(red) > 1000


# ---------------------------------------------------------------------------------------- the DICOM IOD


def _series(instance_number: int = 3) -> ResultSeries:
    return ResultSeries(generate_uid(), 9901, "PREVIEW not for diagnosis alone", "PREVIEW",
                        instance_number=instance_number)


def _sc(case: Case, frames: np.ndarray, **kwargs) -> MultiFrameTrueColorSC:
    args = {"source": case.source, "series": _series(), "frames": frames, "frame_labels": VIEW_LABELS,
            "equipment": Equipment(device_serial_number="0123ABCD")}
    args.update(kwargs)
    return MultiFrameTrueColorSC(**args, derivation_description="Surface rendering of the segments",
                                 image_comments="PREVIEW - not for diagnosis alone")


@pytest.fixture(scope="module")
def written(case: Case, frames: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sc") / "view.dcm"
    path.write_bytes(part10_bytes(_sc(case, frames)))
    return path


def test_view_passes_dciodvfy_without_errors_or_warnings(written):
    assert dciodvfy_errors(written) == []
    out = subprocess.run([require_tool("dciodvfy"), str(written)], capture_output=True, text=True, timeout=60)
    # the phantom source is clean, so any warning would be the view's own
    assert [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Warning")] == []


def test_view_holds_the_frames_labelled_in_the_result_series_with_references_to_the_source(written, case, frames):
    ds = pydicom.dcmread(written)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == MULTIFRAME_TRUE_COLOR_SC_SOP_CLASS_UID
    assert (ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration) == (3, "RGB", 0)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
    assert int(ds.NumberOfFrames) == 4 and ds.FrameIncrementPointer == 0x00182002
    assert list(ds.FrameLabelVector) == VIEW_LABELS
    assert np.array_equal(ds.pixel_array, frames)
    assert ds.BurnedInAnnotation == "YES" and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.ConversionType == "WSD" and ds.Modality == "SEG" and ds.InstanceNumber == 3
    assert ds.StudyInstanceUID == case.source.study_instance_uid and ds.PatientID == "PID-4455"
    assert ds.SeriesInstanceUID != case.source.series_instance_uid
    source_uids = [r.sop_instance_uid for r in case.source.instances]
    assert [i.ReferencedSOPInstanceUID for i in ds.SourceImageSequence] == source_uids
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == case.source.series_instance_uid
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence] == \
        source_uids
    assert [c.CodeMeaning for c in ds.DerivationCodeSequence] == ["Segmentation", "Surface rendering"]


@pytest.mark.parametrize(("change", "attribute"), [
    ({"frames": np.zeros((4, 64, 64, 3), np.float32)}, "dtype float32"),
    ({"frames": np.zeros((4, 64, 64), np.uint8)}, "Samples per Pixel 3"),
    ({"frames": np.zeros((4, 64, 64, 4), np.uint8)}, "Samples per Pixel 3"),
    ({"frames": np.zeros((0, 64, 64, 3), np.uint8), "frame_labels": []}, "Number of Frames"),
    ({"frames": [[0, 0, 0]]}, "must be a numpy array"),
    ({"frame_labels": VIEW_LABELS[:3]}, "Frame Label Vector"),
    ({"frame_labels": ["A VERY LONG VIEW NAME", "B", "C", "D"]}, r"frame_labels\[0\] \(Frame Label Vector"),
    ({"frame_labels": "ANTERIOR"}, "Frame Label Vector"),
])
def test_iod_refuses_bad_input_naming_the_attribute(case, change, attribute):
    frames = change.pop("frames", np.zeros((4, 64, 64, 3), np.uint8))
    with pytest.raises(SecondaryCaptureError, match=attribute):
        _sc(case, frames, **change)


def test_iod_refuses_the_source_series_as_the_result_series(case):
    series = replace(_series(), series_instance_uid=case.source.series_instance_uid)
    with pytest.raises(SecondaryCaptureError, match="Series Instance UID"):
        _sc(case, np.zeros((4, 64, 64, 3), np.uint8), series=series)


def test_non_ascii_text_switches_the_character_set_to_utf8(case):
    ds = _sc(case, np.zeros((4, 64, 64, 3), np.uint8), series=replace(_series(), series_description="Vorschau – Lunge"))
    reread = pydicom.dcmread(BytesIO(part10_bytes(ds)))
    assert reread.SpecificCharacterSet == "ISO_IR 192" and reread.SeriesDescription == "Vorschau – Lunge"


# ------------------------------------------------------------------------------------------ the pipeline


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(REPO / "models" / "ct_chest", verify=False)


def _encode(case: Case, bundle, config, mode: str, route) -> tuple[list, dict]:
    plan = replace(output_plan(config, mode, route), seg=False)  # the SEG has tests of its own
    series = ResultSeries(generate_uid(), 9901 if mode == "preview" else 9902, f"{mode} test", mode.upper())
    return encode_results(SeriesInput(case.volume, case.source, case.headers), None, case.meshes, plan, bundle,
                          series)


def test_a_preview_result_holds_the_view_as_instance_three_and_a_full_one_does_not_by_default(case, bundle):
    config = load_config(None)  # the documented firmware defaults
    route = config.route_for(SeriesFacts(modality="CT"))
    objects, timings = _encode(case, bundle, config, "preview", route)
    view = next(o for o in objects if o.filename == "view.dcm")
    ds = pydicom.dcmread(BytesIO(view.data))
    assert view.sop_class_uid == ds.SOPClassUID == MULTIFRAME_TRUE_COLOR_SC_SOP_CLASS_UID
    assert view.sop_instance_uid == ds.SOPInstanceUID and ds.InstanceNumber == 3
    surfaces = pydicom.dcmread(BytesIO(objects[0].data), stop_before_pixels=True)
    assert ds.SeriesInstanceUID == surfaces.SeriesInstanceUID
    assert int(ds.NumberOfFrames) == 4 and ds.ImageComments == "PREVIEW - not for diagnosis alone"
    assert timings["rendered_view_s"] > 0
    full, full_timings = _encode(case, bundle, config, "full", route)
    assert "view.dcm" not in [o.filename for o in full] and "rendered_view_s" not in full_timings


def test_a_routing_rule_decides_which_modes_get_the_view(case, bundle):
    config = parse_config("routing:\n  rules:\n"
                          "    - {name: both, modality: CT, rendered_view: [preview, full]}\n"
                          "    - {name: none, modality: MR, rendered_view: []}\n"
                          "    - {name: default, modality: PT}\n")
    both = config.route_for(SeriesFacts(modality="CT"))
    assert output_plan(config, "full", both).rendered_view
    assert "view.dcm" in [o.filename for o in _encode(case, bundle, config, "full", both)[0]]
    none = config.route_for(SeriesFacts(modality="MR"))
    assert not output_plan(config, "preview", none).rendered_view
    default = config.route_for(SeriesFacts(modality="PT"))
    assert output_plan(config, "preview", default).rendered_view and not output_plan(config, "full", default).rendered_view


def test_a_machine_without_offscreen_opengl_still_sends_surfaces_and_seg(case, bundle, monkeypatch, caplog):
    def unavailable(*args, **kwargs):
        raise RenderUnavailableError("no offscreen OpenGL")

    monkeypatch.setattr("appliance.pipeline.render_views", unavailable)
    config = load_config(None)
    with caplog.at_level(logging.WARNING, logger="appliance.pipeline"):
        objects, _ = _encode(case, bundle, config, "preview", config.route_for(SeriesFacts(modality="CT")))
    assert [o.filename for o in objects if o.is_dicom] == ["surfaces.dcm"]
    assert any(r.getMessage() == "rendered_view.unavailable" for r in caplog.records)

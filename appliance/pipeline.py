"""The processing pipeline of one series version, as pure stages with typed seams:

    files -> `read_series` -> SeriesInput (Volume + source description)
          -> `segment_volume` -> SegmentationResult (labels on the model grid)
          -> `shown_result` -> the labels as the result shows them (`held_back`: an experimental class
             the route does not ask for is body, not a hole)
          -> `mesh_result` -> one Mesh per segment (patient LPS mm)
          -> `encode_results` -> ResultObject list (Surface Segmentation, SEG, rendered view, optional STL/PLY)
          -> `write_results` -> files under the job's result directory

The worker (`appliance.worker`), `isonode process` and `isonode segment` all run these functions with
one `Runtime` (`appliance.runtime`), so what a test or the CLI measures is what the node ships.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from appliance.display import DISPLAY_CT_FILE, display_files, display_mesh_file
from appliance.inference.bundle import Label, ModelBundle
from appliance.inference.grid import grid_of
from appliance.inference.segment import SegmentationResult, segment_array
from appliance.meshing import MeshSettings, SegmentMeshes, mesh_segments
from appliance.rendered_view import DEFAULT_VIEWS, VIEWS, RenderUnavailableError, render_views
from appliance.runtime import Runtime
from dicom_node.derived import (
    AlgorithmInfo,
    Code,
    Equipment,
    ResultSeries,
    SegmentInfo,
    SourceRef,
    SourceSeries,
    experimental_description,
    experimental_label,
    part10_bytes,
)
from dicom_node.logfmt import log_event
from dicom_node.secondary_capture import MULTIFRAME_TRUE_COLOR_SC_SOP_CLASS_UID, MultiFrameTrueColorSC
from dicom_node.seg import SEGMENTATION_SOP_CLASS_UID, build_segmentation
from dicom_node.spool import store_durably
from dicom_node.surface_seg import SURFACE_SEGMENTATION_SOP_CLASS_UID, SurfaceSegmentation
from dicom_node.volume import MAX_VOLUME_VOXELS, DecodedLookup, Volume, assemble_volume
from kernels import label_counts
from kernels.mesh import Mesh
from kernels.mesh_io import ply_bytes, stl_bytes

log = logging.getLogger(__name__)

# Result series numbers: far above what scanners use, preview before full in a viewer's series list.
RESULT_SERIES_NUMBER = {"preview": 9901, "full": 9902}
MM3_PER_ML = 1000.0


@dataclass(frozen=True)
class VolumeSummary:
    """What a person checking a job wants to see about the assembled volume (no patient data)."""

    shape_zyx: tuple[int, int, int]
    spacing_xyz_mm: tuple[float, float, float]
    affine: list[list[float]]
    hu_min: float
    hu_max: float
    dtype: str
    instances: int
    resampled_from: str | None
    warnings: list[str]


def summarize_volume(volume: Volume) -> VolumeSummary:
    arr = volume.array
    return VolumeSummary(
        shape_zyx=tuple(int(n) for n in arr.shape),  # type: ignore[arg-type]
        spacing_xyz_mm=tuple(round(float(s), 6) for s in volume.spacing),  # type: ignore[arg-type]
        affine=np.round(volume.affine, 6).tolist(),
        hu_min=float(arr.min()) if arr.size else 0.0,
        hu_max=float(arr.max()) if arr.size else 0.0,
        dtype=str(arr.dtype),
        instances=len({s.sop_instance_uid for s in volume.source_instances}),
        resampled_from=volume.resampled_from,
        warnings=list(volume.warnings),
    )


@dataclass
class SeriesInput:
    """The assembled volume and what the result objects need to say about their source."""

    volume: Volume
    source: SourceSeries
    headers: list[Dataset]  # source instances in volume order (one per distinct SOP instance), no pixels


def read_series(files: Sequence[Path], decoded: DecodedLookup | None = None, *,
                max_voxels: int = MAX_VOLUME_VOXELS) -> SeriesInput:
    """Assemble the series (raises VolumeError / PixelDecodeError for input the node cannot process) and
    read the source headers the result objects copy and reference. `decoded`: frames the node decoded at
    ingest (dicom_node.decoded_frames), used instead of decoding those files again."""
    volume = assemble_volume([Path(f) for f in files], decoded=decoded, max_voxels=max_voxels)
    by_uid: dict[str, Dataset] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        by_uid[str(ds.SOPInstanceUID)] = ds
    ordered_uids = list(dict.fromkeys(s.sop_instance_uid for s in volume.source_instances))
    headers = [by_uid[u] for u in ordered_uids]
    source = SourceSeries(
        header=headers[0],
        study_instance_uid=volume.study_instance_uid,
        series_instance_uid=volume.series_instance_uid,
        frame_of_reference_uid=volume.frame_of_reference_uid,
        instances=tuple(SourceRef(s.sop_class_uid, s.sop_instance_uid, s.frame_number)
                        for s in volume.source_instances),
    )
    return SeriesInput(volume, source, headers)


def segment_volume(volume: Volume, runtime: Runtime, mode: str) -> SegmentationResult:
    """The bundle's `mode` on the volume with the runtime's backend for that mode."""
    return segment_array(volume.array, volume.affine, runtime.bundle, mode, runtime.backend(mode))


@dataclass(frozen=True)
class OutputPlan:
    """What a result series holds, decided by the route and the config."""

    mode: str
    mesh: MeshSettings
    experimental_segments: bool = False
    seg: bool = True
    mesh_files: tuple[str, ...] = ()
    rendered_view: bool = False  # a rendered 3D view (Secondary Capture) in the result series


def output_labels(bundle: ModelBundle, experimental: bool) -> list[Label]:
    """The bundle's classes a result describes: the validated ones, plus the experimental ones where a
    route asks for them (on expert-labelled abdomens the experimental liver covers 10-17% of the liver)."""
    return [lab for lab in bundle.manifest.labels if experimental or not lab.experimental]


HOST_CLASS = "body"


def host_value(table: Sequence[Label]) -> int:
    """The label value a held-back experimental voxel takes: the validated class named "body". The
    post-processing (`postprocess.confine_experimental`, host "body") leaves an experimental organ only
    voxels the validated classes would call body, so body is what they are without the organ. 0
    (background) only for a bundle without a validated body class."""
    return next((lab.value for lab in table if lab.name == HOST_CLASS and not lab.experimental), 0)


def held_back(labels: np.ndarray, table: Sequence[Label], include_experimental: bool) -> np.ndarray:
    """The uint8 label map as a result shows it: the classes `table` marks experimental become the host
    class (`host_value`) unless the route (or `isonode segment --experimental`) asks for them. They lie
    inside the patient, so mapping them to background would cut holes in the body; every consumer (SEG,
    meshes, display, volumes, the NIfTI of `isonode segment`) reads the labels through this function.
    Returns `labels` itself when nothing is held back, else a new array."""
    if include_experimental or not any(lab.experimental for lab in table):
        return labels
    return held_back_lut(table, include_experimental)[labels]


def held_back_lut(table: Sequence[Label], include_experimental: bool) -> np.ndarray:
    """`held_back` as a 256-entry lookup table (uint8 label value -> value shown), for composing with
    another mapping of label values before one pass over a large label map."""
    lut = np.arange(256, dtype=np.uint8)
    if not include_experimental:
        lut[[lab.value for lab in table if lab.experimental]] = host_value(table)
    return lut


def shown_result(result: SegmentationResult, include_experimental: bool) -> SegmentationResult:
    """`result` with its labels as the result shows them (`held_back`)."""
    return replace(result, labels=held_back(result.labels, result.label_table, include_experimental))


def mesh_result(result: SegmentationResult, labels: Sequence[Label], settings: MeshSettings,
                runtime: Runtime) -> SegmentMeshes:
    """One cleaned surface per class in `labels` that is present, on the model grid, in LPS mm. Give it
    the `shown_result`: a held-back class meshed as a cavity would leave a hole in the body surface."""
    return mesh_segments(result.labels, result.affine, [lab.value for lab in labels], settings,
                         backend=runtime.mc_backend, threads=runtime.threads)


def segment_infos(labels: Sequence[Label], present: set[int], algorithm: AlgorithmInfo) -> list[SegmentInfo]:
    """Segments numbered 1..n in bundle order over the classes that have a surface. An experimental class
    says so in its label and description (`derived.experimental_label`, `experimental_description`):
    every object, view and page that names the segment shows it."""
    out = []
    for lab in labels:
        if lab.value not in present:
            continue
        out.append(SegmentInfo(
            number=len(out) + 1, label_value=lab.value,
            label=experimental_label(lab.type.meaning) if lab.experimental else lab.type.meaning,
            category=Code(lab.category.code, lab.category.scheme, lab.category.meaning),
            type=Code(lab.type.code, lab.type.scheme, lab.type.meaning),
            color_rgb=tuple(lab.color), tracking_id=lab.name,  # type: ignore[arg-type]
            description=experimental_description(algorithm) if lab.experimental else "",
            experimental=lab.experimental))
    return out


def mesh_file_name(segment: SegmentInfo, kind: str) -> str:
    """The STL/PLY file of a segment; these formats carry no label, so an experimental one says so here."""
    return f"{segment.number:02d}_{segment.tracking_id}{'_experimental' if segment.experimental else ''}.{kind}"


def result_series(bundle: ModelBundle, mode: str) -> ResultSeries:
    name, version = bundle.manifest.name, bundle.manifest.version
    what = "not for diagnosis alone" if mode == "preview" else "3D segmentation"  # fits 64 with the version
    return ResultSeries(
        series_instance_uid=generate_uid(),
        series_number=RESULT_SERIES_NUMBER[mode],
        series_description=f"{mode.upper()} {what} ({name} {version})"[:64],
        content_label=mode.upper(),
        content_description=f"{name} {version} {mode}"[:64],
    )


@dataclass(frozen=True)
class ResultObject:
    """One file of a result series. DICOM objects carry their SOP class and instance and are sent;
    STL/PLY files are kept beside them for people and tools outside DICOM."""

    filename: str
    data: bytes
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None

    @property
    def is_dicom(self) -> bool:
        return self.sop_class_uid is not None


def encode_results(series_input: SeriesInput, result: SegmentationResult, meshes: dict[int, Mesh],
                   plan: OutputPlan, bundle: ModelBundle, series: ResultSeries, *,
                   equipment: Equipment | None = None) -> tuple[list[ResultObject], dict[str, float]]:
    """The result series' objects: Surface Segmentation of every meshed segment, a binary SEG of the same
    segments on the CT grid, a rendered view (Secondary Capture) and STL/PLY per segment where the plan
    asks; and the seconds each took."""
    equipment = equipment or Equipment()
    algorithm = AlgorithmInfo(bundle.manifest.name, bundle.manifest.version)
    labels = output_labels(bundle, plan.experimental_segments)
    segments = segment_infos(labels, set(meshes), algorithm)
    timings: dict[str, float] = {}
    objects: list[ResultObject] = []
    if not segments:
        return objects, timings
    t = time.perf_counter()
    surf = SurfaceSegmentation(source=series_input.source, series=series,
                               surfaces=[(s, meshes[s.label_value]) for s in segments],
                               algorithm=algorithm, equipment=equipment)
    objects.append(ResultObject("surfaces.dcm", part10_bytes(surf), SURFACE_SEGMENTATION_SOP_CLASS_UID,
                                str(surf.SOPInstanceUID)))
    timings["surface_seg_s"] = time.perf_counter() - t
    if plan.seg:
        t = time.perf_counter()
        volume = series_input.volume
        described = np.zeros(256, dtype=np.uint8)
        described[[s.label_value for s in segments]] = [s.label_value for s in segments]
        # one pass over the CT grid: a held-back class is body, never a hole in it; a class without a
        # surface (specks only) is not described: background
        shown = described[held_back_lut(bundle.manifest.labels, plan.experimental_segments)]
        on_ct = shown[result.labels_on(grid_of(volume.array, volume.affine), volume.array)]
        present = set(np.flatnonzero(label_counts(on_ct)).tolist())
        seg_segments = [replace(s, number=i + 1)  # renumbered: a segment too thin for the CT grid is gone
                        for i, s in enumerate(s for s in segments if s.label_value in present)]
        timings["to_ct_grid_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if seg_segments:
            seg_ds = build_segmentation(on_ct, volume.affine, series_input.headers, seg_segments, algorithm,
                                        equipment, replace(series, instance_number=2),
                                        resampled=volume.resampled_from is not None)
            objects.append(ResultObject("seg.dcm", part10_bytes(seg_ds), SEGMENTATION_SOP_CLASS_UID,
                                        str(seg_ds.SOPInstanceUID)))
        timings["seg_s"] = time.perf_counter() - t
    if plan.rendered_view:
        t = time.perf_counter()
        view = rendered_view_object(series_input.source, meshes, segments, plan.mode, algorithm,
                                    replace(series, instance_number=3), equipment)
        if view is not None:
            objects.append(view)
        timings["rendered_view_s"] = time.perf_counter() - t
    for kind in plan.mesh_files:
        encode = stl_bytes if kind == "stl" else ply_bytes
        for s in segments:
            objects.append(ResultObject(mesh_file_name(s, kind), encode(meshes[s.label_value])))
    return objects, timings


def rendered_view_object(source: SourceSeries, meshes: dict[int, Mesh], segments: Sequence[SegmentInfo],
                         mode: str, algorithm: AlgorithmInfo, series: ResultSeries,
                         equipment: Equipment) -> ResultObject | None:
    """The segments rendered from the fixed views as a Multi-frame True Color Secondary Capture, which any
    PACS viewer shows. None where this machine has no offscreen OpenGL: logged, and the Surface
    Segmentation and SEG still go out (a missing Mesa library must not hold back a result)."""
    notice = ("PREVIEW - not for diagnosis alone" if mode == "preview"
              else "3D segmentation - check against the CT images")
    try:
        frames = render_views(meshes, segments, notice=notice, caption=f"{algorithm.name} {algorithm.version}")
    except RenderUnavailableError as exc:
        log_event(log, "rendered_view.unavailable", level=logging.WARNING, reason=str(exc))
        return None
    labels = [VIEWS[v].label for v in DEFAULT_VIEWS]
    sc = MultiFrameTrueColorSC(
        source, series, frames, labels, equipment, image_comments=notice,
        derivation_description=(
            f"Surface rendering of the segments of this series' Surface Segmentation ({mode}, {algorithm.name} "
            f"{algorithm.version}); views {', '.join(labels)}; parallel projection, patient orientation "
            "letters, segment names and notice burned in")[:1024])
    return ResultObject("view.dcm", part10_bytes(sc), MULTIFRAME_TRUE_COLOR_SC_SOP_CLASS_UID, str(sc.SOPInstanceUID))


def write_results(out_dir: Path, objects: Sequence[ResultObject], *, fsync: bool = True,
                  replace: bool = False) -> list[Path]:
    """Write every object durably (temp file, fsync, rename) into `out_dir`. `replace` empties the folder
    first: a job's folder holds what an interrupted attempt left, which was never queued for delivery."""
    if replace and out_dir.exists():
        shutil.rmtree(out_dir)
    paths = []
    for o in objects:
        store_durably(out_dir / o.filename, o.data, fsync=fsync)
        paths.append(out_dir / o.filename)
    return paths


@dataclass
class PipelineOutput:
    """What one run produced and how long each stage took (seconds), for the job record and the log."""

    objects: list[ResultObject]
    volume: VolumeSummary
    series_instance_uid: str | None
    segments: dict[str, dict[str, float]]  # class name -> {triangles, volume_ml}
    timings: dict[str, float] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)
    display: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {"volume": asdict(self.volume), "result_series": self.series_instance_uid,
                "segments": self.segments, "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
                "backends": self.backends, "display": self.display}


def display_record(bundle: ModelBundle, shown: Sequence[SegmentInfo]) -> dict:
    """What the bedside page needs to draw a result without the bundle: files, names, colours, model
    (an experimental segment's label says so, as in the DICOM objects, and `experimental` flags it)."""
    return {"model": {"name": bundle.manifest.name, "version": bundle.manifest.version},
            "ct": DISPLAY_CT_FILE,
            "segments": [{"number": s.number, "name": s.tracking_id, "label": s.label, "color": list(s.color_rgb),
                          "experimental": s.experimental, "mesh": display_mesh_file(s.number)}
                         for s in shown]}


def _no_stage_report(name: str) -> None:
    return None


def run_pipeline(files: Sequence[Path], runtime: Runtime, plan: OutputPlan,
                 decoded: DecodedLookup | None = None, *, max_voxels: int = MAX_VOLUME_VOXELS,
                 on_stage: Callable[[str], None] = _no_stage_report) -> PipelineOutput:
    """Every stage on one series: read, segment, mesh, encode. Writing and delivery are the caller's.
    `on_stage(name)` is called as each stage starts (the worker shows progress with it)."""
    timings: dict[str, float] = {}
    on_stage("read")
    t = time.perf_counter()
    series_input = read_series(files, decoded, max_voxels=max_voxels)
    timings["read_s"] = time.perf_counter() - t
    on_stage("segment")
    t = time.perf_counter()
    result = segment_volume(series_input.volume, runtime, plan.mode)
    timings["segment_s"] = time.perf_counter() - t
    timings.update({f"segment.{k}": v for k, v in result.timings.items()})
    return describe_result(series_input, result, runtime, plan, timings, on_stage=on_stage)


def describe_result(series_input: SeriesInput, result: SegmentationResult, runtime: Runtime, plan: OutputPlan,
                    timings: dict[str, float] | None = None, *,
                    on_stage: Callable[[str], None] = _no_stage_report) -> PipelineOutput:
    """The stages after the network on one segmentation: the labels as the plan shows them (`held_back`),
    meshes, result objects, display files, volumes. `timings` so far are extended and returned."""
    timings = {} if timings is None else timings
    on_stage("mesh")
    t = time.perf_counter()
    labels = output_labels(runtime.bundle, plan.experimental_segments)
    as_shown = shown_result(result, plan.experimental_segments)
    meshed = mesh_result(as_shown, labels, plan.mesh, runtime)
    timings["mesh_s"] = time.perf_counter() - t
    timings.update({f"mesh.{k}": v for k, v in meshed.timings.items()})
    on_stage("encode")
    t = time.perf_counter()
    series = result_series(runtime.bundle, plan.mode)
    objects, enc_timings = encode_results(series_input, as_shown, meshed.meshes, plan, runtime.bundle, series)
    t_display = time.perf_counter()
    algorithm = AlgorithmInfo(runtime.bundle.manifest.name, runtime.bundle.manifest.version)
    shown = segment_infos(labels, set(meshed.meshes), algorithm)
    shown_files = display_files(series_input.volume, shown, meshed.meshes, plan.mode)
    objects += [ResultObject(f.filename, f.data) for f in shown_files]
    enc_timings["display_s"] = time.perf_counter() - t_display
    timings["encode_s"] = time.perf_counter() - t
    timings.update({f"encode.{k}": v for k, v in enc_timings.items()})
    voxel_ml = abs(float(np.linalg.det(result.affine[:3, :3]))) / MM3_PER_ML
    counts = label_counts(as_shown.labels)
    segments = {lab.name: {"triangles": len(meshed.meshes[lab.value].triangles),
                           "volume_ml": round(float(counts[lab.value]) * voxel_ml, 1)}
                for lab in labels if lab.value in meshed.meshes}
    series_uid = series.series_instance_uid if any(o.is_dicom for o in objects) else None
    return PipelineOutput(objects, summarize_volume(series_input.volume), series_uid, segments, timings,
                          runtime.describe_mode(plan.mode), display_record(runtime.bundle, shown))

"""ModelBundle: a directory with manifest.json and the ONNX models it lists, verified on load.

The manifest is the contract between `compiler/` (which writes it) and the appliance (which only reads
it): labels with SNOMED CT codes and colours, per-mode grid spacing, patch size, model files and
post-processing chain (`appliance.inference.postprocess_steps`), intensity normalisation, sha256 of every
file, training data with licences, and the evaluation table.
Loading refuses a bundle whose files are missing or whose hashes differ, naming the file, and a
post-processing step it cannot run on the bundle's labels, naming the mode, the step and the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.inference.postprocess_steps import StepError, resolve
from appliance.inference.source_grid import LABEL_BITS as EDGE_LABEL_BITS
from appliance.inference.source_grid import MAX_RULES as MAX_EDGE_RULES

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class BundleError(ValueError):
    """The bundle cannot be used; the message names the file or key and what is wrong."""


class Code(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    scheme: str
    meaning: str


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: int = Field(ge=1, le=255)
    name: str
    category: Code
    type: Code
    color: tuple[int, int, int]
    experimental: bool = False


class Normalisation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["clip_scale"] = "clip_scale"
    clip: tuple[float, float]
    scale: float
    # second input channel: left-right position, mm from the field-of-view centre / this value
    x_coordinate_mm: float = 100.0
    # the network's input channels in order (appliance.inference.normalise.network_input)
    channels: tuple[Literal["hu", "x_coordinate", "enclosed_air"], ...] = ("hu", "x_coordinate")


class PostprocessStep(BaseModel):
    """One entry of a mode's post-processing chain: `step` names a registered step
    (`appliance.inference.postprocess_steps`), every other key is one of its arguments, a label name or a
    list of label names, e.g. {"step": "trim_bone_surface", "bone": "bone", "host": "body"}."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, str | list[str]]
    step: str

    @property
    def args(self) -> dict[str, str | list[str]]:
        return dict(self.__pydantic_extra__ or {})


class SourceEdge(BaseModel):
    """An edge the CT's own grid redraws (`appliance.inference.source_grid`): `label` takes the `host`
    voxels beside it whose HU is the partial-volume edge of `tissue`."""

    model_config = ConfigDict(extra="forbid")
    tissue: Literal["lung", "bone"]
    label: str
    host: str


class ModeSpec(BaseModel):
    """One operating point: grid spacing (sz, sy, sx) mm, static patch (z, y, x), batch, model files."""

    model_config = ConfigDict(extra="forbid")
    spacing: tuple[float, float, float]
    patch: tuple[int, int, int]
    batch: int = 1
    overlap: float = Field(0.25, ge=0.0, lt=0.9)
    fp32: str
    int8: str | None = None
    student: str = ""
    # which file ran faster on the build machine's CPU (a record: the appliance times both on its own
    # CPU, appliance.inference.cpu_precision, since the answer depends on the processor)
    cpu_precision: Literal["int8", "fp32"] = "int8"
    cpu_ms_per_patch: dict[str, float] = {}
    # labels that are one connected structure at this grid, a record of the recipe: inference keeps the
    # largest component of those its chain's keep_single_structures steps name (the compiler writes both)
    keep_largest_component: list[str] = []
    # the post-processing steps in the order they run; None (a manifest from before the chain was data):
    # none, with a warning at load; [] none (`appliance.inference.postprocess_steps`)
    postprocess: list[PostprocessStep] | None = None
    # partial-volume edges redrawn on the CT's grid when the labels go there
    source_edges: list[SourceEdge] = []

    @property
    def ships_teacher(self) -> bool:
        """The mode runs the teacher network itself, not a student (`student` names which)."""
        return self.student.startswith("teacher")


class TrainingCase(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    licence: str
    use: str  # train | heldout | synthetic
    labels: str = ""


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int = FORMAT_VERSION
    name: str
    version: str
    created: str = ""
    labels: list[Label]
    normalisation: Normalisation
    modes: dict[str, ModeSpec]
    files: dict[str, str]  # file name -> sha256
    training_data: list[TrainingCase] = []
    evaluation: dict = {}
    provenance: dict = {}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ModelBundle:
    """A verified bundle: `manifest` plus `path(name)` for its files and `digest` (hash of the manifest)."""

    def __init__(self, root: Path, manifest: Manifest, digest: str) -> None:
        self.root = root
        self.manifest = manifest
        self.digest = digest

    def path(self, name: str) -> Path:
        return self.root / name

    def mode(self, mode: str) -> ModeSpec:
        if mode not in self.manifest.modes:
            raise BundleError(f"bundle {self.root} has no mode {mode!r} (has {sorted(self.manifest.modes)})")
        return self.manifest.modes[mode]

    def label_names(self) -> dict[int, str]:
        return {lab.value: lab.name for lab in self.manifest.labels}


def load_bundle(root: Path | str, *, verify: bool = True) -> ModelBundle:
    """Read and validate manifest.json and check every listed file's sha256. Raises BundleError."""
    root = Path(root)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"model bundle {root}: {MANIFEST} not found")
    raw = mpath.read_bytes()
    try:
        manifest = Manifest.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise BundleError(f"model bundle {root}: {MANIFEST} is not valid JSON ({exc})") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"model bundle {root}: {MANIFEST} key {where}: {first['msg']}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(f"model bundle {root}: format_version {manifest.format_version}, expected {FORMAT_VERSION}")
    for mode, spec in manifest.modes.items():
        for fname in filter(None, (spec.fp32, spec.int8)):
            if fname not in manifest.files:
                raise BundleError(f"model bundle {root}: mode {mode} uses {fname}, which has no sha256 in files")
        if spec.postprocess is None:
            log.warning("event=bundle_mode_without_postprocess bundle=%s mode=%s labels=argmax", root, mode)
        for i, step in enumerate(spec.postprocess or ()):
            try:
                resolve(step.step, step.args, manifest.labels)
            except StepError as exc:
                raise BundleError(f"model bundle {root}: {MANIFEST} mode {mode} postprocess step {i} "
                                  f"({step.step}): {exc}") from exc
        names = {lab.name for lab in manifest.labels}
        for i, edge in enumerate(spec.source_edges):
            for key in ("label", "host"):
                if getattr(edge, key) not in names:
                    raise BundleError(f"model bundle {root}: {MANIFEST} mode {mode} source_edges {i}: {key} "
                                      f"{getattr(edge, key)!r} is not a label of the bundle")
        if len(spec.source_edges) > MAX_EDGE_RULES:
            raise BundleError(f"model bundle {root}: {MANIFEST} mode {mode} source_edges: at most "
                              f"{MAX_EDGE_RULES} rules")
        too_high = [lab.name for lab in manifest.labels if lab.value >= 1 << EDGE_LABEL_BITS]
        if spec.source_edges and too_high:
            raise BundleError(f"model bundle {root}: {MANIFEST} mode {mode} source_edges: label {too_high[0]!r} "
                              f"has a value of {1 << EDGE_LABEL_BITS} or more, which edge refinement cannot carry")
    if verify:
        for fname, expected in manifest.files.items():
            fpath = root / fname
            if not fpath.is_file():
                raise BundleError(f"model bundle {root}: file {fname} is missing")
            actual = sha256_file(fpath)
            if actual != expected:
                raise BundleError(
                    f"model bundle {root}: file {fname} is corrupt (sha256 {actual[:16]}..., manifest says "
                    f"{expected[:16]}...)"
                )
    return ModelBundle(root, manifest, hashlib.sha256(raw).hexdigest())


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Fill in the sha256 of every file the modes use (plus those already listed) and write manifest.json."""
    names = set(manifest.files)
    for spec in manifest.modes.values():
        names.update(filter(None, (spec.fp32, spec.int8)))
    manifest.files = {n: sha256_file(root / n) for n in sorted(names)}
    path = root / MANIFEST
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=1) + "\n")
    return path

"""Real CT cases from ../shared/data: loading onto LPS-aligned grids, silver masks, and the split.

Which cases train and which are held out is fixed here (and written into the manifest): the held-out
cases never enter training, so the evaluation table measures generalisation to unseen patients and
scanners. The TotalSegmentator masks are network outputs ("silver"), never ground truth; the manifest
says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.inference.grid import Grid, grid_of, lps_grid, resample
from appliance.inference.normalise import enclosed_air
from compiler.labels.reference import ReferenceLabels, reference_labels
from compiler.labels.table import LABEL_TABLE, NUM_CLASSES, VALIDATED, VALUE

log = logging.getLogger(__name__)

ALL_KNOWN = (1 << NUM_CLASSES) - 1


@dataclass(frozen=True)
class Case:
    """One real CT case: `source` relative to the case folder; `silver` a label file and its mapping."""

    name: str
    source: str
    licence: str
    split: str  # "train" or "heldout"
    silver: str | None = None
    silver_kind: str | None = None  # key of SILVER_MAPS
    description: str = ""


CASES: tuple[Case, ...] = (
    Case("lidc_idri_0314_chest_1mm", "ct_dicom", "CC BY 3.0 (TCIA LIDC-IDRI)", "heldout",
         description="full chest, 1 mm, Philips; right lung largely opacified"),
    Case("crlm_ct_1004_ge_abdomen", "ct_dicom", "CC BY 4.0 (TCIA CRLM)", "heldout",
         description="contrast abdomen, 5 mm, GE"),
    Case("crlm_ct_1006_ge_abdomen", "ct_dicom", "CC BY 4.0 (TCIA CRLM)", "train",
         description="mid-chest to abdomen, oral+IV contrast, 5 mm, GE"),
    Case("ts_cta_thorax_abdomen_1p5mm", "ct.nii.gz", "Apache-2.0 (TotalSegmentator repo; provenance undocumented)",
         "train", "labels_pred.nii.gz", "ts_cta", "CTA neck to upper abdomen, 1.5 mm"),
    Case("ts_example_abdomen_3mm", "example_ct.nii.gz", "Apache-2.0 (TotalSegmentator repo; provenance undocumented)",
         "train", "example_ct_vertebrae_seg.nii.gz", "ts_total", "abdomen/lower thorax, 3 mm"),
    Case("ts_example_dicom_j2k", "dicom", "Apache-2.0 (TotalSegmentator repo)", "train",
         "example_seg_dicom.nii.gz", "ts_total", "upper abdomen, 20 slices, Siemens"),
    Case("dcmqa_ge_head_gantry_tilt", "ct_dicom", "BSD-2-Clause (dcm_qa_ct; data via Aliza)", "train",
         description="head, 18.5 deg tilt, uneven spacing, GE"),
)  # fmt: skip
CASE_BY_NAME = {case.name: case for case in CASES}

_TS_BONE = [25, *range(26, 51), *range(69, 79), 91, *range(92, 118)]
SILVER_MAPS: dict[str, dict[int, int]] = {
    # labels_pred of ts_cta: 1 heart, 2 aorta, 3 pulmonary artery, 4 T12
    "ts_cta": {1: VALUE["heart"], 2: VALUE["aorta"], 4: VALUE["bone"]},
    "ts_total": {5: VALUE["liver"], 10: 3, 11: 3, 12: 4, 13: 4, 14: 4, 16: VALUE["airway"], 51: VALUE["heart"],
                 52: VALUE["aorta"]} | {v: VALUE["bone"] for v in _TS_BONE},
}  # fmt: skip
# classes each silver file is authoritative about (inside its field of view)
SILVER_KNOWN: dict[str, tuple[int, ...]] = {
    "ts_cta": (VALUE["heart"], VALUE["aorta"]),
    "ts_total": (VALUE["liver"], VALUE["heart"], VALUE["aorta"]),
}

# What a class's reference on a case was made by (`reference_kinds`); the evaluation names one per class
# and case, so no score reads as agreement with a human.
REFERENCE_KINDS: dict[str, str] = {
    "rule": "the rule-based labeller (compiler/labels): HU thresholds and morphology, automatic",
    "silver": "a network's output: the TotalSegmentator masks shipped with the case (merge_silver), automatic, "
              "not ground truth",
    "rule+silver": "both: bone is the union of the rules' and the silver mask's; lungs are silver where the "
                   "silver file looks and the rules' elsewhere",
    "phantom": "exact: the procedural phantom's own labels (compiler/phantom.py)",
    "human": "an expert's segmentation",
}
# The only human labels in ../shared/data (its README): not an evaluation case
HUMAN_LABELS_NOTE = ("no human (expert) reference exists for any evaluation case; the only human-made labels in "
                     "../shared/data are dcmqi_ct3slice_liver_seg's (a liver DICOM SEG and test masks on 3 CT "
                     "slices, 3 mm of anatomy: for DICOM SEG tests, too thin for a volume evaluation)")


def shared_data_root() -> Path:
    """../shared/data relative to the repository root."""
    return (Path(__file__).resolve().parent.parent / ".." / "shared" / "data").resolve()


def _nifti_lps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine  # RAS -> LPS
    return np.ascontiguousarray(data.transpose(2, 1, 0)), affine


def load_ct(case: Case, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(HU array (z, y, x), affine (x, y, z, 1) -> LPS mm) of a case, on its own grid."""
    folder = (root or shared_data_root()) / case.name
    src = folder / case.source
    if src.suffix == ".gz":
        hu, affine = _nifti_lps(src)
        return hu.astype(np.int16), affine
    from dicom_node.volume import assemble_volume

    vol = assemble_volume(sorted(p for p in src.rglob("*") if p.is_file()))
    return vol.array, vol.affine


def load_silver(case: Case, grid: Grid, root: Path | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Silver labels mapped to our classes on `grid`, and the mask of voxels the silver file covers."""
    if case.silver is None or case.silver_kind is None:
        return None
    folder = (root or shared_data_root()) / case.name
    lab, affine = _nifti_lps(folder / case.silver)
    lut = np.zeros(max(256, int(lab.max()) + 1), dtype=np.uint8)
    for src, dst in SILVER_MAPS[case.silver_kind].items():
        lut[src] = dst
    mapped = resample(lut[lab.astype(np.int64)], affine, grid, order=0, fill=0)
    cover = resample(np.ones(lab.shape, dtype=np.uint8), affine, grid, order=0, fill=0).astype(bool)
    return mapped, cover


def merge_silver(ref: ReferenceLabels, silver: np.ndarray, cover: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, known bits) from the rules plus a silver mask (organs from silver, bone as the union)."""
    labels = ref.labels.copy()
    bits = known_bits(ref)
    body = labels > 0
    bone = silver == VALUE["bone"]
    labels[bone & body] = VALUE["bone"]
    bits[bone & body & (bits != 0)] |= np.uint16(1 << VALUE["bone"])  # silver sees the marrow the rules may not
    has_lungs = np.isin(silver, (3, 4)).any()
    if has_lungs:  # silver lungs replace the rule lungs where the silver file looks
        rule_lungs = np.isin(labels, (3, 4)) & cover
        labels[rule_lungs] = VALUE["body"]
        for v in (3, 4):
            labels[(silver == v) & body] = v
        bits[cover & ~ref.labelled] = ALL_KNOWN  # the silver file sees the lungs the rules could not
    for v in SILVER_KNOWN[kind]:
        labels[(silver == v) & body] = v
        bits[cover & (bits != 0)] |= np.uint16(1 << v)
    return labels, bits


def reference_kinds(case: Case | None, rule_known: Iterable[int] = VALIDATED,
                    silver_present: Iterable[int] | None = None, silver_covers_all: bool = True) -> dict[str, str]:
    """Class name -> what made its reference on `case` (a key of REFERENCE_KINDS), for every class the
    reference may know: "rule" for the classes the rules know (`rule_known`: the rules' `known`), and
    what `merge_silver` takes from the case's silver file, whose mapped values are `silver_present`
    (default: every value its SILVER_MAPS entry can give): its organs (SILVER_KNOWN) "silver", bone
    "rule+silver" (a union), lungs "silver" where they replace the rule lungs over the whole volume
    (`silver_covers_all`), else "rule+silver". `case` None: a phantom, exact labels."""
    names = {spec.value: spec.name for spec in LABEL_TABLE}
    if case is None:
        return {name: "phantom" for name in names.values()}
    kinds = {names[v]: "rule" for v in rule_known if v in names}
    if case.silver is None or case.silver_kind is None:
        return kinds
    present = set(SILVER_MAPS[case.silver_kind].values() if silver_present is None else silver_present)
    if VALUE["bone"] in present:
        kinds["bone"] = "rule+silver" if "bone" in kinds else "silver"
    if present & {VALUE["lung_left"], VALUE["lung_right"]}:  # merge_silver's has_lungs
        for v in (VALUE["lung_left"], VALUE["lung_right"]):
            kinds[names[v]] = "silver" if silver_covers_all or names[v] not in kinds else "rule+silver"
    for v in SILVER_KNOWN[case.silver_kind]:
        kinds[names[v]] = "silver"
    return kinds


def case_record(name: str) -> dict[str, str]:
    """Name, split, description and licence of an evaluated volume (a case of CASES, else a phantom)."""
    case = CASE_BY_NAME.get(name)
    if case is None:
        return {"name": name, "split": "heldout", "description": "procedural phantom nobody trained on "
                "(compiler/phantom.py)", "licence": "generated"}
    return {"name": case.name, "split": case.split, "description": case.description, "licence": case.licence}


def known_bits(ref: ReferenceLabels) -> np.ndarray:
    """Per-voxel bitmask of the classes the label is authoritative about (0 = ignore the voxel)."""
    bits = 0
    for v in ref.known:
        bits |= 1 << v
    out = np.full(ref.labels.shape, bits, dtype=np.uint16)
    for v, where in ref.class_unknown.items():
        out[where] &= np.uint16(~(1 << v) & 0xFFFF)
    out[~ref.labelled] = 0
    return out


@dataclass
class LabelledVolume:
    """HU (float32), labels (uint8), known bits (uint16) on one LPS-aligned grid."""

    name: str
    hu: np.ndarray
    labels: np.ndarray
    known: np.ndarray
    grid: Grid
    notes: tuple[str, ...] = ()
    # class name -> what made its reference (`reference_kinds`), and the content key of the labels
    # (`compiler.labels.cache.reference_key`; "" where they were not made from a case's files)
    reference_kind: dict[str, str] = field(default_factory=dict)
    reference_key: str = ""

    def __post_init__(self) -> None:
        self._index: dict[int, np.ndarray] = {}
        self._enclosed: np.ndarray | None = None
        self.present = frozenset(int(v) for v in np.unique(self.labels))

    @property
    def enclosed(self) -> np.ndarray:
        """The enclosed-air input channel, on the whole volume (a patch alone cannot see a slice's edge)."""
        if self._enclosed is None:
            self._enclosed = enclosed_air(self.hu).astype(np.uint8)
        return self._enclosed

    def class_index(self, value: int, max_points: int = 50_000) -> np.ndarray:
        """Flat indices of (a sample of) the voxels labelled `value`, for foreground-centred patches."""
        if value not in self._index:
            idx = np.flatnonzero(self.labels.ravel() == value)
            if idx.size > max_points:
                idx = np.random.default_rng(value).choice(idx, max_points, replace=False)
            self._index[value] = idx
        return self._index[value]


def labelled_case(case: Case, spacing: tuple[float, float, float], root: Path | None = None) -> LabelledVolume:
    """Load a case, resample it to the LPS grid at `spacing` and label it (rules + silver)."""
    hu_src, affine = load_ct(case, root)
    grid = lps_grid(grid_of(hu_src, affine), spacing)
    hu = resample(hu_src, affine, grid, order=1)
    ref = reference_labels(hu, spacing)
    labels, bits = ref.labels, known_bits(ref)
    kinds = reference_kinds(case, ref.known)
    silver = load_silver(case, grid, root)
    if silver is not None:
        labels, bits = merge_silver(ref, silver[0], silver[1], case.silver_kind or "")
        kinds = reference_kinds(case, ref.known, set(np.unique(silver[0]).tolist()) - {0}, bool(silver[1].all()))
    log.info("event=labelled_case case=%s shape=%s notes=%s reference=%s", case.name, grid.shape,
             json.dumps(ref.notes), json.dumps(kinds))
    return LabelledVolume(case.name, hu, labels, bits, grid, tuple(ref.notes), kinds)


def resampled_case(case: Case, fine: LabelledVolume, spacing: tuple[float, float, float],
                   root: Path | None = None) -> LabelledVolume:
    """A case on a coarser grid: HU resampled from its source, labels and known bits from `fine` (nearest)."""
    hu_src, affine = load_ct(case, root)
    grid = lps_grid(grid_of(hu_src, affine), spacing)
    return LabelledVolume(case.name, resample(hu_src, affine, grid, order=1),
                          resample(fine.labels, fine.grid.affine, grid, order=0, fill=0),
                          resample(fine.known, fine.grid.affine, grid, order=0, fill=1), grid, fine.notes,
                          dict(fine.reference_kind))

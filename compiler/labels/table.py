"""The label table every model bundle carries: value, name, SNOMED CT codes, colour, validation status.

Values follow the shared contract (0 background .. 8 liver). The codes go into the DICOM SEG / Surface
Segmentation output (Segmented Property Category / Type, CID 7150 / 7151), so they are SNOMED CT
concepts ("SCT"); colours are display RGB. `experimental` classes ship flagged: the product claims only
the validated ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

ANATOMICAL_STRUCTURE = ("123037004", "SCT", "Anatomical Structure")
TISSUE = ("85756007", "SCT", "Tissue")


@dataclass(frozen=True)
class LabelSpec:
    """One output class of the model. Codes are (code value, scheme designator, code meaning)."""

    value: int
    name: str
    category: tuple[str, str, str]
    type: tuple[str, str, str]
    color: tuple[int, int, int]
    experimental: bool = False

    def to_json(self) -> dict:
        d = asdict(self)
        d["category"] = dict(zip(("code", "scheme", "meaning"), self.category, strict=True))
        d["type"] = dict(zip(("code", "scheme", "meaning"), self.type, strict=True))
        d["color"] = list(self.color)
        return d


LABEL_TABLE: tuple[LabelSpec, ...] = (
    LabelSpec(1, "body", ANATOMICAL_STRUCTURE, ("38266002", "SCT", "Entire body"), (177, 122, 101)),
    LabelSpec(2, "bone", TISSUE, ("272673000", "SCT", "Bone"), (241, 214, 145)),
    LabelSpec(3, "lung_left", ANATOMICAL_STRUCTURE, ("44029006", "SCT", "Left lung"), (128, 174, 128)),
    LabelSpec(4, "lung_right", ANATOMICAL_STRUCTURE, ("3341006", "SCT", "Right lung"), (111, 184, 210)),
    LabelSpec(5, "airway", ANATOMICAL_STRUCTURE, ("89187006", "SCT", "Airway structure"), (182, 228, 255)),
    LabelSpec(6, "heart", ANATOMICAL_STRUCTURE, ("80891009", "SCT", "Heart"), (206, 110, 84), True),
    LabelSpec(7, "aorta", ANATOMICAL_STRUCTURE, ("15825003", "SCT", "Aorta"), (224, 97, 76), True),
    LabelSpec(8, "liver", ANATOMICAL_STRUCTURE, ("10200004", "SCT", "Liver"), (221, 130, 101), True),
)

NUM_CLASSES = 1 + len(LABEL_TABLE)  # background included
VALUE = {spec.name: spec.value for spec in LABEL_TABLE} | {"background": 0}
VALIDATED = tuple(s.value for s in LABEL_TABLE if not s.experimental)
EXPERIMENTAL = tuple(s.value for s in LABEL_TABLE if s.experimental)
# the organs lie inside the body: a volume that cannot label them leaves them as body (see losses)
INSIDE_BODY = (2, 3, 4, 5, 6, 7, 8)

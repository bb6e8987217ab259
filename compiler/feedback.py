"""The physicians' feedback from a node, as the list of series and segments to review.

Reads the export of `isonode feedback export` (format isonode-feedback/1). A flagged segment is a case for
the next labelling round: someone looks at it, corrects the reference, and it joins the evaluation set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from appliance.feedback import EXPORT_FORMAT


@dataclass(frozen=True)
class ReviewCase:
    """One series version whose result a physician flagged: which segments, why, and which model made it."""

    series_uid: str
    series_version: int
    model: str
    segments: tuple[str, ...]
    reasons: tuple[str, ...] = field(default=())


def load_review_list(path: Path) -> list[ReviewCase]:
    """The flagged series (accepted results are left out), one entry per series version and model."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: not an isonode feedback export (format {doc.get('format')!r})")
    grouped: dict[tuple[str, int, str], tuple[list[str], list[str]]] = {}
    for item in doc["feedback"]:
        if item["verdict"] != "flag":
            continue
        key = (item["series_uid"], int(item["series_version"]), f"{item['model_name']} {item['model_version']}")
        segments, reasons = grouped.setdefault(key, ([], []))
        if item["segment"] not in segments:
            segments.append(item["segment"])
        if item["reason"]:
            reasons.append(f"{item['segment']}: {item['reason']}")
    return [ReviewCase(uid, version, model, tuple(segs), tuple(reasons))
            for (uid, version, model), (segs, reasons) in grouped.items()]

"""Which modes a completed series gets and where its results go (`AppConfig.route_for` holds the rules).

Routing looks at the association (calling and called AE title) and at a few attributes of the series
(Modality, Body Part Examined, Series Description) read from one stored instance: the index keeps no
attributes beyond UIDs and modality, and one header read per series costs a millisecond.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from appliance.config import AppConfig, Route, SeriesFacts
from dicom_node.index import InstanceIndex, SeriesVersion

logger = logging.getLogger(__name__)


def series_facts(sv: SeriesVersion, header: Dataset | None) -> SeriesFacts:
    def text(keyword: str) -> str:
        return "" if header is None else str(header.get(keyword, "") or "")

    return SeriesFacts(calling_ae=sv.calling_ae, called_ae=sv.called_ae, modality=sv.modality or text("Modality"),
                       body_part_examined=text("BodyPartExamined"), series_description=text("SeriesDescription"))


class Router:
    """Routes series of the node's index by the config's rules."""

    def __init__(self, config: AppConfig, index: InstanceIndex, spool_root: Path) -> None:
        self.config = config
        self.index = index
        self.spool_root = spool_root

    def _header(self, sv: SeriesVersion) -> Dataset | None:
        files = self.index.series_files(sv.series_uid, up_to_version=sv.version)
        if not files:
            return None
        try:
            return pydicom.dcmread(self.spool_root / files[0], stop_before_pixels=True)
        except Exception:  # an unreadable header routes on the association alone
            logger.warning("routing.header_unreadable", extra={"fields": {"series": sv.series_uid}})
            return None

    def route(self, sv: SeriesVersion, header: Dataset | None = None) -> Route | None:
        return self.config.route_for(series_facts(sv, header if header is not None else self._header(sv)))

    def modes(self, sv: SeriesVersion) -> tuple[str, ...]:
        """The modes to queue when `sv` completes (none: stored only)."""
        route = self.route(sv)
        return () if route is None else route.modes

"""C-GET SCP (PS3.4 C.4.3): sends what an Identifier names back over the requesting association.

The peer proposed storage contexts with the SCP role; each instance goes out in a syntax it accepted
(decompressed where it took only uncompressed). Pending responses and the C-CANCEL check are
pynetdicom's and `send_instances`', shared with C-MOVE.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from dicom_node.catalog import Catalog, StoredInstance
from dicom_node.logfmt import log_event
from dicom_node.qr_find import failure
from dicom_node.qr_retrieve import accepted_syntaxes, select_instances, send_instances
from dicom_node.query import QueryError

logger = logging.getLogger(__name__)


class GetService:
    def __init__(self, catalog: Catalog, resolve_path: Callable[[StoredInstance], Path]) -> None:
        self.catalog = catalog
        self.resolve_path = resolve_path

    def get(self, identifier: Dataset, model: str, accepted_contexts: list,
            is_cancelled: Callable[[], bool] = lambda: False, *, calling_ae: str = "") -> Iterator[Any]:
        try:
            instances = select_instances(self.catalog, identifier, model)
        except QueryError as exc:
            log_event(logger, "get.refused", level=logging.WARNING, status=f"0x{exc.status:04X}",
                      reason=exc.reason, calling_ae=calling_ae)
            yield 1  # pynetdicom takes a final status only after a count
            yield failure(exc.status, exc.reason), None
            return
        accepted = accepted_syntaxes(cx for cx in accepted_contexts if cx.as_scu)  # we are the storage SCU
        yield len(instances)
        log_event(logger, "get.started", instances=len(instances), calling_ae=calling_ae)
        yield from send_instances(instances, self.resolve_path, lambda: accepted, is_cancelled, "get", calling_ae)

"""C-FIND SCP (PS3.4 C.4.1): answers Patient Root and Study Root queries from the catalog.

`find` is the handler: an Identifier in, (status, identifier) pairs out, as pynetdicom's C-FIND service
expects. The matches are read in one statement before the first response goes out, so a slow peer never
holds a read transaction open; a C-CANCEL is honoured between responses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from pydicom.dataset import Dataset

from dicom_node import status
from dicom_node.database import Database
from dicom_node.logfmt import log_event
from dicom_node.query import QueryError, matches, parse_query

logger = logging.getLogger(__name__)

FindResponse = tuple[int | Dataset, Dataset | None]


def failure(code: int, reason: str) -> Dataset:
    """A failure status with its reason in Error Comment (DCMTK's tools print it)."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = reason[:64]
    return ds


class FindService:
    def __init__(self, db: Database, ae_title: str) -> None:
        self.db = db
        self.ae_title = ae_title

    def find(self, identifier: Dataset, model: str, is_cancelled: Callable[[], bool] = lambda: False, *,
             calling_ae: str = "") -> Iterator[FindResponse]:
        t0 = time.perf_counter()
        try:
            query = parse_query(identifier, model)
            answers = matches(query, self.db.connection, self.ae_title)
        except QueryError as exc:
            log_event(logger, "find.refused", level=logging.WARNING, status=f"0x{exc.status:04X}",
                      reason=exc.reason, model=model, calling_ae=calling_ae)
            yield failure(exc.status, exc.reason), None
            return
        for sent, answer in enumerate(answers):
            if is_cancelled():
                log_event(logger, "find.cancelled", qr_level=query.level, sent=sent, matches=len(answers),
                          calling_ae=calling_ae)
                yield status.CANCEL, None
                return
            yield status.PENDING, answer
        log_event(logger, "find.done", qr_level=query.level, model=model, matches=len(answers),
                  ms=round((time.perf_counter() - t0) * 1000, 1), calling_ae=calling_ae)
        yield status.SUCCESS, None

"""What C-MOVE and C-GET share: which instances an Identifier asks for, and how each goes out.

A retrieve names what it wants by the unique key of its level (and may add others, matched as C-FIND
would); one without that key would send the whole store, so it is refused. An instance is sent in the
transfer syntax it was received in when the peer accepted it; a compressed one goes out decompressed
when the peer accepted only uncompressed syntaxes for its class (pydicom decodes every lossless syntax
the node accepts), so a workstation that reads only uncompressed data still gets JPEG-lossless CT.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import PresentationContext, build_context

from dicom_node import status
from dicom_node.catalog import Catalog, StoredInstance
from dicom_node.logfmt import log_event
from dicom_node.query import QueryError, parse_query, unique_key

logger = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_SUB_OPERATIONS = 65535  # the response's counts are US


def select_instances(catalog: Catalog, identifier: Dataset, model: str) -> list[StoredInstance]:
    """The instances a C-MOVE / C-GET Identifier names, or QueryError with the status to answer."""
    query = parse_query(identifier, model)
    key = unique_key(query.level)
    value = str(identifier.get(key, "") or "").strip()
    if not value or value == "*":
        raise QueryError(status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                         f"a {query.level} retrieve needs {key}")
    where, params = query.where()
    found = catalog.instances(where, params)
    if len(found) > MAX_SUB_OPERATIONS:
        raise QueryError(status.UNABLE_TO_PROCESS, f"{len(found)} instances: more than one retrieve can send")
    return found


def sub_association_contexts(instances: Iterable[StoredInstance]) -> list[PresentationContext]:
    """Contexts to propose to a move destination: each class in each stored syntax, plus uncompressed for
    a class held compressed (sent decompressed if the destination takes only that)."""
    wanted: dict[str, set[str]] = {}
    for inst in instances:
        wanted.setdefault(inst.sop_class_uid, set()).add(inst.transfer_syntax_uid)
    contexts: list[PresentationContext] = []
    for sop_class, syntaxes in sorted(wanted.items()):
        compressed = sorted(s for s in syntaxes if UID(s).is_compressed)
        for ts in compressed:
            contexts.append(build_context(sop_class, [ts]))
        contexts.append(build_context(sop_class, list(UNCOMPRESSED)))
    if len(contexts) > 128:
        raise QueryError(status.UNABLE_TO_PROCESS, "too many SOP classes and syntaxes for one association")
    return contexts


def accepted_syntaxes(contexts: Iterable[PresentationContext]) -> dict[str, set[str]]:
    """SOP class -> transfer syntaxes an established association accepted for sending."""
    accepted: dict[str, set[str]] = {}
    for cx in contexts:
        if cx.transfer_syntax:
            accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    return accepted


class NotSendableError(Exception):
    """The peer accepted no syntax this instance can be sent in."""


def load_for_sending(path: Path, instance: StoredInstance, accepted: dict[str, set[str]]) -> Dataset:
    """Read an instance, decompressed if the peer takes its class only uncompressed."""
    syntaxes = accepted.get(instance.sop_class_uid, set())
    stored = UID(instance.transfer_syntax_uid)
    if stored in syntaxes or (not stored.is_compressed and syntaxes & set(UNCOMPRESSED)):
        return dcmread(path)
    if syntaxes & set(UNCOMPRESSED):
        ds = dcmread(path)
        # a lossless syntax change keeps the instance's identity (pydicom would mint a new UID by default)
        ds.decompress(generate_instance_uid=False)
        return ds
    raise NotSendableError(f"peer accepted no transfer syntax for SOP class {instance.sop_class_uid}")


def send_instances(instances: list[StoredInstance], resolve_path: Callable[[StoredInstance], Path],
                   accepted: Callable[[], dict[str, set[str]]], is_cancelled: Callable[[], bool],
                   what: str, calling_ae: str) -> Iterator[tuple[int, Dataset | None]]:
    """(Pending, instance) per instance, or Cancel when the peer cancels; for C-MOVE and C-GET alike. No
    final Success: pynetdicom answers it (with the sub-operation counts) once the generator is exhausted."""
    t0 = time.perf_counter()
    unsendable = 0
    for sent, inst in enumerate(instances):
        if is_cancelled():
            log_event(logger, f"{what}.cancelled", sent=sent, total=len(instances), calling_ae=calling_ae)
            yield status.CANCEL, None
            return
        try:
            ds = load_for_sending(resolve_path(inst), inst, accepted())
        except (NotSendableError, OSError, ValueError, RuntimeError) as exc:
            # yielded anyway as an empty data set: pynetdicom counts it as a failed sub-operation
            unsendable += 1
            log_event(logger, f"{what}.instance_not_sent", level=logging.WARNING, sop_instance=inst.sop_instance_uid,
                      reason=str(exc) if isinstance(exc, NotSendableError) else type(exc).__name__)
            ds = Dataset()
        yield status.PENDING, ds
    log_event(logger, f"{what}.done", instances=len(instances), not_sent=unsendable,
              mb=round(sum(i.size for i in instances) / 1e6, 1), s=round(time.perf_counter() - t0, 2),
              calling_ae=calling_ae)

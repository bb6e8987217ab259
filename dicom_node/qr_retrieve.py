"""What C-MOVE and C-GET share: which instances an Identifier asks for, and how each goes out.

A retrieve names what it wants by the unique key of its level (and may add others, matched as C-FIND
would); one without that key would send the whole store, so it is refused. An instance is sent in the
transfer syntax it was received in when the peer accepted it; a compressed one goes out decompressed
when the peer accepted only uncompressed syntaxes for its class (pydicom decodes every lossless syntax
the node accepts), so a workstation that reads only uncompressed data still gets JPEG-lossless CT.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import PresentationContext, build_context

from dicom_node import status
from dicom_node.catalog import Catalog, StoredInstance
from dicom_node.query import QueryError, parse_query, unique_key

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

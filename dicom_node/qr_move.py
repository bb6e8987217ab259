"""C-MOVE SCP (PS3.4 C.4.2): sends what an Identifier names to a destination the config knows.

The Move Destination is an AE title; its address comes from the node's `destinations` (the same list
results go to, `--destination` included), never from the peer, so nobody can have patient data sent to
an address of their choosing. An unknown title is answered 0xA801. A destination configured with TLS is
sent to over TLS (its files unusable: 0xA801 too, logged with the reason). pynetdicom opens the sub-association
and sends a pending response after each C-STORE; the handler yields the destination, the count and then
one instance at a time (one file in memory), and stops at a C-CANCEL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.sop_class import Verification

from dicom_node import status
from dicom_node.catalog import Catalog, StoredInstance
from dicom_node.logfmt import log_event
from dicom_node.qr_find import failure
from dicom_node.qr_retrieve import (
    accepted_syntaxes,
    select_instances,
    send_instances,
    sub_association_contexts,
)
from dicom_node.query import QueryError
from dicom_node.requestor import leave_responses_to_the_sender
from dicom_node.sockets import set_tcp_nodelay
from dicom_node.tls import ClientTls, TlsConfigError, handshake_reason, on_handshake_failure

logger = logging.getLogger(__name__)

# Move Destination AE title -> (host, port) or (host, port, TLS settings or None), or None when unknown.
DestinationLookup = Callable[[str], tuple[str, int] | tuple[str, int, ClientTls | None] | None]


@dataclass
class _SubAssociation:
    """Captures the sub-association pynetdicom opens, to see which syntaxes the destination accepted."""

    assoc: Any = None
    handlers: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.handlers = [(evt.EVT_CONN_OPEN, set_tcp_nodelay), (evt.EVT_ACCEPTED, self._on_accepted)]

    def _on_accepted(self, event: evt.Event) -> None:
        leave_responses_to_the_sender(event.assoc)
        self.assoc = event.assoc

    def accepted(self) -> dict[str, set[str]]:
        return {} if self.assoc is None else accepted_syntaxes(self.assoc.accepted_contexts)


class MoveService:
    def __init__(self, catalog: Catalog, resolve_path: Callable[[StoredInstance], Path],
                 destinations: DestinationLookup) -> None:
        self.catalog = catalog
        self.resolve_path = resolve_path
        self.destinations = destinations

    def move(self, identifier: Dataset, model: str, move_destination: str,
             is_cancelled: Callable[[], bool] = lambda: False, *, calling_ae: str = "") -> Iterator[Any]:
        destination = self.destinations(move_destination.strip())
        if destination is None:
            log_event(logger, "move.refused", level=logging.WARNING, status=f"0x{status.MOVE_DESTINATION_UNKNOWN:04X}",
                      reason="move destination is not among the configured destinations",
                      move_destination=move_destination.strip(), calling_ae=calling_ae)
            yield None, None  # pynetdicom answers 0xA801
            return
        host, port, tls = (*destination, None)[:3]
        try:
            connect = self._tls_kwargs(host, tls, move_destination.strip(), calling_ae)
        except TlsConfigError as exc:
            log_event(logger, "move.refused", level=logging.ERROR, status=f"0x{status.MOVE_DESTINATION_UNKNOWN:04X}",
                      reason=f"the move destination's TLS settings cannot be used: {exc}",
                      move_destination=move_destination.strip(), calling_ae=calling_ae)
            yield None, None  # pynetdicom answers 0xA801, as for a destination it cannot reach
            return
        try:
            instances = select_instances(self.catalog, identifier, model)
            contexts = sub_association_contexts(instances)
        except QueryError as exc:
            log_event(logger, "move.refused", level=logging.WARNING, status=f"0x{exc.status:04X}",
                      reason=exc.reason, calling_ae=calling_ae)
            # pynetdicom takes a final status only after the destination and a count
            yield host, port, {"contexts": [build_context(Verification)], **connect}
            yield 1
            yield failure(exc.status, exc.reason), None
            return
        sub = _SubAssociation()
        yield host, port, {"contexts": contexts, "evt_handlers": sub.handlers, **connect}
        yield len(instances)
        log_event(logger, "move.started", instances=len(instances), move_destination=move_destination.strip(),
                  calling_ae=calling_ae)
        yield from send_instances(instances, self.resolve_path, sub.accepted, is_cancelled, "move", calling_ae)

    @staticmethod
    def _tls_kwargs(host: str, tls: ClientTls | None, move_destination: str, calling_ae: str) -> dict[str, Any]:
        """`associate()` arguments for a TLS destination (none for plain TCP); a failed handshake is logged
        with its reason here, since pynetdicom then answers 0xA801 without asking the handler again."""
        if tls is None:
            return {}

        def failed(exc: OSError) -> None:
            log_event(logger, "move.tls_failed", level=logging.WARNING, move_destination=move_destination,
                      reason=handshake_reason(exc), calling_ae=calling_ae)

        return {"tls_args": (on_handshake_failure(tls.context(), failed), host)}

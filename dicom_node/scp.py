"""The node's DICOM service provider (pynetdicom): C-ECHO, C-STORE, and Query/Retrieve (C-FIND, C-MOVE,
C-GET) on the same AE title and port.

The C-STORE handler is the durability boundary: it answers Success only after the instance is fsynced,
renamed into the spool, indexed and catalogued. Everything that can go wrong with a peer's data ends in a
failure status with an Error Comment and one log line; no exception escapes to pynetdicom.

Access is decided once per association (`dicom_node.access`): a peer allowed neither to store nor to
query is rejected; the Q/R presentation contexts are added to an association only for a peer allowed to
query and retrieve, so a failing check leaves them unoffered. The Q/R handlers live in one module each
(qr_find, qr_move, qr_get); this class only routes events to them.
"""

from __future__ import annotations

import logging
import ssl
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.dsutils import decode
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicom_node import status
from dicom_node.access import AccessPolicy
from dicom_node.audit import (
    MINOR_FAILURE,
    SERIOUS_FAILURE,
    SUCCESS,
    AuditTrail,
    Participant,
    ParticipantObject,
    patient_and_study,
)
from dicom_node.catalog import CatalogEntry
from dicom_node.decoded_frames import DecodedFrames
from dicom_node.duplicates import same_instance
from dicom_node.index import InstanceIndex, InstanceRecord
from dicom_node.limits import TooLargeError, check_pixel_size, inflate_bounded
from dicom_node.logfmt import log_event
from dicom_node.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, encode_file_meta
from dicom_node.pixels import TRANSFER_SYNTAXES_ACCEPTED, PixelDecodeError, check_decodable
from dicom_node.qr_find import FindService, failure
from dicom_node.qr_get import GetService
from dicom_node.qr_move import MoveService
from dicom_node.query import PATIENT_ROOT, STUDY_ROOT
from dicom_node.sockets import set_tcp_nodelay
from dicom_node.sop_classes import ACCEPTED_STORAGE_CLASSES, PROCESSED_IMAGE_CLASSES
from dicom_node.spool import InvalidUIDError, SpoolLayout, check_uid, free_bytes, place, write_temp
from dicom_node.tls import TlsSettings, server_context
from dicom_node.wellformed import MalformedElementError, check_elements

logger = logging.getLogger(__name__)

# pynetdicom 3.0.4 polls: the network (DUL) thread sleeps 1 ms when it has nothing to do, and each
# association's reactor sleeps 1 ms before looking for the next DIMSE message. A C-STORE stream is
# synchronous (the sender waits for each response), so those sleeps add up to ~1 ms per instance, about 20%
# of the node's receive time (measured here: 107 -> 129 MB/s for a 300-slice series). Polling every 0.2 ms
# instead costs CPU while an association is open and idle (measured per association: 4% of a core with
# pynetdicom's 1 ms, 13% at 0.2 ms), so it is a setting: node.poll_interval_ms.
DEFAULT_POLL_INTERVAL_S = 0.0002


class _ReactorClock:
    """Stands in for the `time` module inside pynetdicom.association, capping its poll sleeps."""

    def __init__(self, real_time: Any, cap_s: float) -> None:
        self._time = real_time
        self._cap_s = cap_s

    def sleep(self, seconds: float) -> None:
        self._time.sleep(min(seconds, self._cap_s))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._time, name)


def tune_pynetdicom_reactor(cap_s: float) -> None:
    """Cap the association reactor's poll sleep (process-wide, idempotent; see DEFAULT_POLL_INTERVAL_S)."""
    import pynetdicom.association as association_module

    current = association_module.time
    real = current._time if isinstance(current, _ReactorClock) else current
    association_module.time = _ReactorClock(real, cap_s)


@dataclass(frozen=True)
class ScpSettings:
    ae_title: str = "ISONODE"
    bind_address: str = "0.0.0.0"
    port: int = 11112
    max_pdu_size: int = 131072
    access: AccessPolicy = AccessPolicy()
    min_free_bytes: int = 1 << 30
    max_dataset_bytes: int = 512 << 20  # dicom_node.limits
    fsync: bool = True
    maximum_associations: int = 16
    max_associations_per_peer: int = 8  # one host (idle or hostile) cannot take every slot
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 120.0
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    tls: TlsSettings | None = None
    tls_port: int | None = None  # with `tls`: None = TLS on `port` instead of plain TCP, else TLS here too


@dataclass(frozen=True)
class StoreOutcome:
    status: int
    reason: str = ""
    series_uid: str = ""  # the stored instance's series (Success only)


@dataclass
class _AssociationStats:
    calling_ae: str
    address: str
    may_store: bool = False
    may_query_retrieve: bool = False
    statuses: Counter[int] = field(default_factory=Counter)
    series: set[str] = field(default_factory=set)
    stored_per_series: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class QueryRetrieveServices:
    find: FindService
    move: MoveService
    get: GetService


# Q/R SOP class -> (service, information model)
QR_CLASSES: dict[str, tuple[str, str]] = {
    PatientRootQueryRetrieveInformationModelFind: ("find", PATIENT_ROOT),
    StudyRootQueryRetrieveInformationModelFind: ("find", STUDY_ROOT),
    PatientRootQueryRetrieveInformationModelMove: ("move", PATIENT_ROOT),
    StudyRootQueryRetrieveInformationModelMove: ("move", STUDY_ROOT),
    PatientRootQueryRetrieveInformationModelGet: ("get", PATIENT_ROOT),
    StudyRootQueryRetrieveInformationModelGet: ("get", STUDY_ROOT),
}


# Called when an association that stored instances is released: (series UIDs, calling AE, called AE).
ReleasedHandler = Callable[[set[str], str, str], None]


class DicomScp:
    """Accepts associations, verifies and durably stores instances, indexes them; answers Q/R."""

    def __init__(self, settings: ScpSettings, spool: SpoolLayout, index: InstanceIndex,
                 on_released: ReleasedHandler | None = None, decoded: DecodedFrames | None = None,
                 query_retrieve: QueryRetrieveServices | None = None, audit: AuditTrail | None = None) -> None:
        self.settings = settings
        self.qr = query_retrieve
        self.audit = audit
        self.spool = spool
        self.index = index
        self.on_released = on_released
        self.decoded = decoded  # frames decoded by the decodability check, kept for the series' job
        self._ae = self._build_ae()
        self._servers: list[Any] = []
        # built now: a certificate that cannot be used stops the node at start, naming the file
        self._tls_context = server_context(settings.tls) if settings.tls is not None else None
        self._stats: dict[int, _AssociationStats] = {}
        self._stats_lock = threading.Lock()
        # Held from "is this UID indexed?" to "indexed", and by retention while it forgets and deletes a
        # series: a re-sent instance is never acknowledged into a file retention is about to delete.
        self.spool_guard = threading.Lock()

    def _build_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_pdu_size = s.max_pdu_size
        ae.maximum_associations = s.maximum_associations
        ae.acse_timeout = s.acse_timeout_s
        ae.dimse_timeout = s.dimse_timeout_s
        ae.network_timeout = s.network_timeout_s
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        for sop_class in ACCEPTED_STORAGE_CLASSES:
            # both roles: a C-GET requestor proposes to be the storage SCP on its own association
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES_ACCEPTED), scu_role=True, scp_role=True)
        return ae

    @staticmethod
    def _qr_contexts() -> list[PresentationContext]:
        return [build_context(sop_class) for sop_class in QR_CLASSES]

    @property
    def address(self) -> tuple[str, int]:
        if not self._servers:
            raise RuntimeError("the SCP is not running")
        host, port = self._servers[0].server_address[:2]
        return str(host), int(port)

    def start(self) -> tuple[str, int]:
        tune_pynetdicom_reactor(self.settings.poll_interval_s)
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_REJECTED, self._on_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
        ]
        s = self.settings
        plain_port = None if s.tls is not None and s.tls_port is None else s.port
        tls_port = None if s.tls is None else (s.tls_port or s.port)
        if plain_port is not None:
            self._servers.append(self._ae.start_server((s.bind_address, plain_port), block=False,
                                                       evt_handlers=handlers))
        if tls_port is not None:
            self._servers.append(self._ae.start_server((s.bind_address, tls_port), block=False,
                                                       evt_handlers=handlers, ssl_context=self._tls_context))
        host, port = self.address
        if not self.settings.access.store:
            log_event(logger, "scp.accepting_all_peers", level=logging.WARNING,
                      hint="set node.allowed_peers in the config to restrict who may send")
        log_event(logger, "scp.listening", ae_title=self.settings.ae_title, host=host, port=port,
                  max_pdu=self.settings.max_pdu_size, fsync=self.settings.fsync, plain_port=plain_port,
                  tls_port=tls_port, tls_peer_verified=self._tls_context is not None
                  and self._tls_context.verify_mode != ssl.CERT_NONE)
        return host, port

    def stop(self) -> None:
        if self._servers:
            for server in self._servers:
                server.shutdown()
            self._servers = []
            log_event(logger, "scp.stopped")

    # -- association events -------------------------------------------------------------------------

    def _on_conn_open(self, event: evt.Event) -> None:
        set_tcp_nodelay(event)
        dul = event.assoc.dul
        if hasattr(dul, "_run_loop_delay"):
            dul._run_loop_delay = self.settings.poll_interval_s

    def _on_requested(self, event: evt.Event) -> None:
        """Decide what the peer may do; offer Q/R only to permitted peers (pynetdicom swallows exceptions
        here, so every permission starts as False and is granted only after its check passed)."""
        assoc = event.assoc
        calling = assoc.requestor.primitive.calling_ae_title
        address = assoc.requestor.address
        open_from_peer = sum(1 for a in self._ae.active_associations
                             if a.is_acceptor and a.requestor.address == address)
        if open_from_peer > self.settings.max_associations_per_peer:  # this one included
            log_event(logger, "association.rejected", level=logging.WARNING, calling_ae=calling, address=address,
                      reason=f"more than node.max_associations_per_peer "
                             f"({self.settings.max_associations_per_peer}) open from this address")
            self._audit_association(False, calling, address, "too many associations from this address")
            _reject(assoc, status.REJECT_LOCAL_LIMIT_EXCEEDED)
            return
        access = self.settings.access
        may_store = access.may_store(calling, address)
        may_qr = self.qr is not None and access.may_query_retrieve(calling, address)
        if not may_store and not may_qr:
            log_event(logger, "association.rejected", level=logging.WARNING, calling_ae=calling, address=address,
                      reason="calling AE title/address in neither node.allowed_peers nor "
                             "query_retrieve.allowed_peers")
            self._audit_association(False, calling, address, "calling AE title/address not allowed")
            _reject(assoc, status.REJECT_CALLING_AE_NOT_RECOGNIZED)
            return
        if may_qr:
            assoc.acceptor.supported_contexts = [*assoc.acceptor.supported_contexts, *self._qr_contexts()]
        elif any(str(cx.abstract_syntax) in QR_CLASSES
                 for cx in assoc.requestor.primitive.presentation_context_definition_list):
            log_event(logger, "query_retrieve.refused", level=logging.WARNING, calling_ae=calling, address=address,
                      reason="calling AE title/address not in query_retrieve.allowed_peers")
        with self._stats_lock:
            self._stats[id(assoc)] = _AssociationStats(calling.strip(), address, may_store, may_qr)

    def _on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        log_event(logger, "association.accepted", calling_ae=assoc.requestor.ae_title,
                  address=assoc.requestor.address, contexts=len(assoc.accepted_contexts))
        self._audit_association(True, assoc.requestor.ae_title, assoc.requestor.address, "",
                                tls=self._tls_context is not None and self._is_tls(assoc))

    def _audit_association(self, accepted: bool, calling: str, address: str, reason: str, **detail: Any) -> None:
        if self.audit is not None:
            self.audit.record("association_accepted" if accepted else "association_refused",
                              outcome=SUCCESS if accepted else MINOR_FAILURE,
                              participants=[Participant(calling.strip(), address, True, "Source"),
                                            Participant(self.settings.ae_title, "", False, "Destination")],
                              **({"reason": reason} if reason else {}), **detail)

    @staticmethod
    def _is_tls(assoc: Any) -> bool:
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        return isinstance(sock, ssl.SSLSocket)

    def _on_closed(self, event: evt.Event) -> None:
        with self._stats_lock:
            stats = self._stats.pop(id(event.assoc), None)
        if stats is None or event.event is evt.EVT_REJECTED:
            return
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        log_event(logger, f"association.{how}", calling_ae=stats.calling_ae, address=stats.address,
                  stored=stats.statuses.get(status.SUCCESS, 0),
                  failed=sum(n for code, n in stats.statuses.items() if code != status.SUCCESS))
        if self.audit is not None:
            for series_uid, stored in stats.stored_per_series.items():
                self.audit.record(
                    "instances_received", outcome=SUCCESS if how == "released" else MINOR_FAILURE,
                    participants=[Participant(stats.calling_ae, stats.address, True, "Source"),
                                  Participant(self.settings.ae_title, "", False, "Destination")],
                    objects=[*patient_and_study(self.index.db.connection, series_uid),
                             ParticipantObject("series", series_uid, detail={"instances": stored})],
                    association=how)
        if how == "released" and stats.series and self.on_released is not None:
            try:
                self.on_released(stats.series, stats.calling_ae, self.settings.ae_title)
            except Exception:  # completion falls back to the idle timeout; the node keeps serving
                logger.exception("association.release_handler_failed")

    def _permissions(self, event: evt.Event) -> _AssociationStats | None:
        with self._stats_lock:
            return self._stats.get(id(event.assoc))

    def _count(self, event: evt.Event, code: int, series_uid: str = "") -> None:
        with self._stats_lock:
            stats = self._stats.get(id(event.assoc))
            if stats is not None:
                stats.statuses[code] += 1
                if series_uid:
                    stats.series.add(series_uid)
                    stats.stored_per_series[series_uid] += code == status.SUCCESS

    # -- services -----------------------------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        return status.SUCCESS

    def _qr_request(self, event: evt.Event, service: str) -> tuple[str, str, Dataset | None] | Dataset:
        """(model, calling AE, identifier) for a permitted Q/R request, or the failure to answer."""
        calling = event.assoc.requestor.ae_title.strip()
        peer = self._permissions(event)
        if self.qr is None or peer is None or not peer.may_query_retrieve:
            log_event(logger, f"{service}.refused", level=logging.WARNING, status=f"0x{status.NOT_AUTHORISED:04X}",
                      reason="calling AE title/address not in query_retrieve.allowed_peers", calling_ae=calling)
            return failure(status.NOT_AUTHORISED, "not authorised to query or retrieve")
        _, model = QR_CLASSES[str(event.request.AffectedSOPClassUID)]
        try:
            identifier = event.identifier
        except Exception as exc:  # a peer's bytes that do not decode
            log_event(logger, f"{service}.refused", level=logging.WARNING,
                      status=f"0x{status.UNABLE_TO_PROCESS:04X}", reason="identifier does not decode",
                      error=type(exc).__name__, calling_ae=calling)
            return failure(status.UNABLE_TO_PROCESS, "identifier does not decode")
        return model, calling, identifier

    def _on_find(self, event: evt.Event) -> Iterator[Any]:
        request = self._qr_request(event, "find")
        if isinstance(request, Dataset):
            yield request, None
            return
        model, calling, identifier = request
        self._audit_qr("query", event, model, identifier)
        yield from self.qr.find.find(identifier, model, lambda: event.is_cancelled, calling_ae=calling)

    def _audit_qr(self, what: str, event: evt.Event, model: str, identifier: Dataset | None,
                  outcome: int = SUCCESS, **detail: Any) -> None:
        """The query or retrieve as ATNA records it: who asked, under which model, with which keys."""
        if self.audit is None:
            return
        keys = {}
        if identifier is not None:
            for elem in identifier:
                if elem.VR != "SQ" and elem.value not in (None, ""):
                    keys[elem.keyword or str(elem.tag)] = str(elem.value)
        assoc = event.assoc
        self.audit.record(what, outcome=outcome,
                          participants=[Participant(assoc.requestor.ae_title.strip(), assoc.requestor.address,
                                                    True, "Source"),
                                        Participant(self.settings.ae_title, "", False, "Destination")],
                          objects=[ParticipantObject("query", model, detail={"keys": keys})], **detail)

    def _audited_retrieve(self, event: evt.Event, model: str, identifier: Dataset, responses: Iterator[Any],
                          **detail: Any) -> Iterator[Any]:
        """Pass a C-MOVE/C-GET's responses through and audit it once it ends: instances sent and failed
        (an empty data set in a Pending response is a failed sub-operation), cancelled or refused."""
        sent = failed = 0
        refused = cancelled = False
        try:
            for item in responses:
                if isinstance(item, tuple) and len(item) == 2:
                    code, ds = item
                    if isinstance(code, Dataset):
                        refused = True  # a failure status with its Error Comment
                    elif code == status.CANCEL:
                        cancelled = True
                    elif code == status.PENDING:
                        sent, failed = (sent + 1, failed) if ds is not None and len(ds) else (sent, failed + 1)
                yield item
        finally:
            outcome = SERIOUS_FAILURE if refused else MINOR_FAILURE if failed or cancelled else SUCCESS
            self._audit_qr("retrieve", event, model, identifier, outcome, sent=sent, failed=failed,
                           cancelled=cancelled, **detail)

    def _on_move(self, event: evt.Event) -> Iterator[Any]:
        request = self._qr_request(event, "move")
        if isinstance(request, Dataset):
            yield None, None  # pynetdicom's only answer before a destination: 0xA801 (reason logged)
            return
        model, calling, identifier = request
        destination = event.move_destination.decode("ascii", "replace").strip() \
            if isinstance(event.move_destination, bytes) else str(event.move_destination).strip()
        yield from self._audited_retrieve(
            event, model, identifier,
            self.qr.move.move(identifier, model, event.move_destination, lambda: event.is_cancelled,
                              calling_ae=calling), service="C-MOVE", move_destination=destination)

    def _on_get(self, event: evt.Event) -> Iterator[Any]:
        request = self._qr_request(event, "get")
        if isinstance(request, Dataset):
            yield 1  # pynetdicom takes a final status only after a count
            yield request, None
            return
        model, calling, identifier = request
        yield from self._audited_retrieve(
            event, model, identifier,
            self.qr.get.get(identifier, model, list(event.assoc.accepted_contexts), lambda: event.is_cancelled,
                            calling_ae=calling), service="C-GET")

    def _on_store(self, event: evt.Event) -> Dataset:
        req = event.request
        calling = event.assoc.requestor.ae_title
        peer = self._permissions(event)
        if peer is None or not peer.may_store:
            log_event(logger, "store.refused", level=logging.WARNING, status=f"0x{status.NOT_AUTHORISED:04X}",
                      reason="calling AE title/address not in node.allowed_peers", calling_ae=calling)
            rsp = Dataset()
            rsp.Status = status.NOT_AUTHORISED
            rsp.ErrorComment = "not authorised to store on this node"
            return rsp
        try:
            outcome = self.store(req.DataSet.getbuffer(), str(event.context.transfer_syntax),
                                 str(req.AffectedSOPClassUID), str(req.AffectedSOPInstanceUID),
                                 calling_ae=calling, called_ae=self.settings.ae_title)
        except Exception as exc:  # the node must never die on input; report and carry on
            logger.exception("store.internal_error", extra={"fields": {"calling_ae": calling}})
            outcome = StoreOutcome(status.CANNOT_UNDERSTAND_INTERNAL_ERROR, f"internal error: {type(exc).__name__}")
        self._count(event, outcome.status, outcome.series_uid)
        rsp = Dataset()
        rsp.Status = outcome.status
        if outcome.reason:
            rsp.ErrorComment = outcome.reason[:64]
        return rsp

    def store(self, dataset_bytes: bytes | memoryview, transfer_syntax_uid: str, sop_class_uid: str,
              sop_instance_uid: str, *, calling_ae: str = "", called_ae: str = "") -> StoreOutcome:
        """Verify, durably store and index one instance (its encoded data set as received); the C-STORE status."""

        def fail(code: int, reason: str, **fields: Any) -> StoreOutcome:
            log_event(logger, "store.refused", level=logging.WARNING, status=f"0x{code:04X}", reason=reason,
                      sop_class=sop_class_uid, sop_instance=sop_instance_uid, calling_ae=calling_ae, **fields)
            return StoreOutcome(code, reason)

        ts = UID(transfer_syntax_uid)
        limit = self.settings.max_dataset_bytes
        if len(dataset_bytes) > limit:
            return fail(status.OUT_OF_RESOURCES, f"data set larger than {limit // (1024 * 1024)} MB")
        try:
            # a Deflated data set is inflated here, within the bound, not by pydicom without one
            body = inflate_bounded(dataset_bytes, limit) if ts.is_deflated else dataset_bytes
        except TooLargeError as exc:
            return fail(status.OUT_OF_RESOURCES, str(exc))
        except zlib.error:
            return fail(status.CANNOT_UNDERSTAND_UNPARSABLE, "cannot parse data set: corrupt deflate stream")
        try:
            ds = decode(BytesIO(body), ts.is_implicit_VR, ts.is_little_endian, False)
            ds_class = str(ds.get("SOPClassUID", "") or "").strip()
            ds_instance = str(ds.get("SOPInstanceUID", "") or "").strip()
            study_uid = check_uid(str(ds.get("StudyInstanceUID", "") or ""), "StudyInstanceUID")
            series_uid = check_uid(str(ds.get("SeriesInstanceUID", "") or ""), "SeriesInstanceUID")
            modality = str(ds.get("Modality", "") or "")
        except InvalidUIDError as exc:
            return fail(status.CANNOT_UNDERSTAND_MISSING_UID, str(exc))
        except (InvalidDicomError, ValueError, TypeError, EOFError, OSError, KeyError, IndexError) as exc:
            # the exception's text may quote a value (a name, an ID): only its type is logged
            return fail(status.CANNOT_UNDERSTAND_UNPARSABLE, f"cannot parse data set: {type(exc).__name__}")
        try:
            # what is acknowledged can be read back in full, by us and by any reader
            check_elements(ds, explicit_vr=not ts.is_implicit_VR)
        except MalformedElementError as exc:
            return fail(status.CANNOT_UNDERSTAND_UNPARSABLE, f"cannot read data set: {exc}")
        if not ds_class:
            return fail(status.CANNOT_UNDERSTAND_MISSING_UID, "SOPClassUID is missing or empty")
        if ds_class != sop_class_uid:
            return fail(status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                        "SOPClassUID differs from the negotiated Affected SOP Class")
        try:
            ds_instance = check_uid(ds_instance, "SOPInstanceUID")
        except InvalidUIDError as exc:
            return fail(status.CANNOT_UNDERSTAND_MISSING_UID, str(exc))
        if ds_instance != sop_instance_uid.strip():
            return fail(status.CANNOT_UNDERSTAND_MISSING_UID, "SOPInstanceUID differs from Affected SOP Instance")

        is_image = ds_class in PROCESSED_IMAGE_CLASSES
        frame = None
        if is_image:
            try:
                check_pixel_size(ds, limit)
            except TooLargeError as exc:
                return fail(status.OUT_OF_RESOURCES, str(exc))
            try:
                frame = check_decodable(ds, transfer_syntax_uid=ts)
            except PixelDecodeError as exc:
                return fail(status.CANNOT_UNDERSTAND_PIXEL_DATA, f"pixel data: {exc}")

        def duplicate() -> StoreOutcome | None:
            """With the spool guard held: None if the UID is not stored; else Success if the stored object
            is this one (its series' retention clock restarts: it was just received again), else refused
            and the stored object kept."""
            known = self.index.relpath_of(ds_instance)
            if known is None:
                return None
            if not same_instance(self.spool.root / known, ts, dataset_bytes, ds):
                return fail(status.DUPLICATE_SOP_INSTANCE, "SOP Instance UID already stored with other content")
            self.index.touch(ds_instance)
            log_event(logger, "store.duplicate", sop_instance=ds_instance, series=series_uid, calling_ae=calling_ae)
            return StoreOutcome(status.SUCCESS, series_uid=series_uid)

        if self.index.contains(ds_instance):  # a re-send, answered without writing anything
            with self.spool_guard:
                outcome = duplicate()
            if outcome is not None:
                return outcome

        if free_bytes(self.spool.root) - len(dataset_bytes) < self.settings.min_free_bytes:
            return fail(status.OUT_OF_RESOURCES, "storage nearly full: instance refused")

        path = self.spool.instance_path(study_uid, series_uid, ds_instance)
        meta = encode_file_meta(ds_class, ds_instance, ts, source_ae_title=calling_ae)
        tmp, size = write_temp(path, [meta, dataset_bytes], fsync=self.settings.fsync)
        relpath = path.relative_to(self.spool.root).as_posix()
        try:
            # Checked, placed and indexed as one step against other stores of this UID and retention:
            # an indexed file is the acknowledged object and is never replaced; a file without an index
            # row was never acknowledged (a crash before indexing) and is replaced.
            with self.spool_guard:
                outcome = duplicate()
                if outcome is not None:
                    return outcome
                place(tmp, path, fsync=self.settings.fsync)
                version = self.index.record(
                    InstanceRecord(
                        sop_instance_uid=ds_instance,
                        sop_class_uid=ds_class,
                        transfer_syntax_uid=str(ts),
                        study_uid=study_uid,
                        series_uid=series_uid,
                        modality=modality,
                        is_image=is_image,
                        relpath=relpath,
                        size=size,
                        calling_ae=calling_ae,
                        called_ae=called_ae,
                    ),
                    catalog=CatalogEntry.from_dataset(ds, transfer_syntax_uid=str(ts), store="spool",
                                                      relpath=relpath, size=size),
                )
        finally:
            tmp.unlink(missing_ok=True)
        if self.decoded is not None and frame is not None and frame.shape[0] == 1:
            self.decoded.put(ds_instance, frame[0])
        log_event(logger, "store.accepted", level=logging.DEBUG, sop_instance=ds_instance, series=series_uid,
                  version=version, bytes=size)
        return StoreOutcome(status.SUCCESS, series_uid=series_uid)


def _reject(assoc: Any, result_source_diagnostic: tuple[int, int, int]) -> None:
    """A-ASSOCIATE-RJ from EVT_REQUESTED, as pynetdicom rejects itself: send, then end the association's
    DUL, which sends what it holds first (closing the socket at once could drop the reject, and the peer
    would see an abort instead of the reason)."""
    assoc.acse.send_reject(*result_source_diagnostic)
    assoc.kill()


def spool_layout(root: Path) -> SpoolLayout:
    root.mkdir(parents=True, exist_ok=True)
    return SpoolLayout(root)

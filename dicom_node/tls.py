"""DICOM TLS (PS3.15 B.1, the Secure Transport Connection Profile): server and client `ssl` contexts from
PEM files, built at start so a wrong file stops the node naming it instead of failing each connection.

The node's certificate and key identify it to senders; with `ca_certificates` the node also verifies
senders' certificates (mutual TLS), and only then does a peer's certificate vouch for its address.
Towards destinations (`ClientTls`) a context is built per connection instead: a file that cannot be
used fails the deliveries to that destination, naming it, and never stops the node.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class TlsConfigError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TlsSettings:
    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None  # verify the peer's certificate against these
    require_peer_certificate: bool = False  # server side: refuse a peer without a valid certificate


def _load(what: str, path: Path | None, load) -> None:  # noqa: ANN001 - an ssl loader
    try:
        load()
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
        raise TlsConfigError(f"{what} {path}: cannot load ({reason})") from exc


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """For the SCP: TLS 1.2 or newer (BCP 195, as PS3.15 B.9 asks), our certificate, optional client check."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load("certificate/private_key", tls.certificate, lambda: ctx.load_cert_chain(tls.certificate, tls.private_key))
    if tls.ca_certificates is not None:
        _load("ca_certificates", tls.ca_certificates, lambda: ctx.load_verify_locations(tls.ca_certificates))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_peer_certificate else ssl.CERT_OPTIONAL
    elif tls.require_peer_certificate:
        raise TlsConfigError("require_peer_certificate needs ca_certificates to verify the peers against")
    return ctx


def client_context(ca_certificates: Path | None, certificate: Path | None = None,
                   private_key: Path | None = None) -> ssl.SSLContext:
    """For sending (outbox, C-MOVE): verify the peer against `ca_certificates` (the system's CAs if unset),
    present our certificate where the peer asks for one."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_certificates is not None:
        _load("ca_certificates", ca_certificates, lambda: ctx.load_verify_locations(ca_certificates))
    if certificate is not None:
        _load("certificate/private_key", certificate, lambda: ctx.load_cert_chain(certificate, private_key))
    return ctx


@dataclass(frozen=True)
class ClientTls:
    """TLS towards a peer the node sends to (a destination: outbox deliveries, C-MOVE sub-associations).

    The peer's certificate is always verified against `ca_certificates` (the system's CAs if unset);
    whether it names the address we dialled only with `verify_hostname`, since DICOM peers are mostly
    addressed by IP and their certificates rarely carry it. Ours is presented if the peer asks.
    """

    ca_certificates: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    verify_hostname: bool = False

    def context(self) -> ssl.SSLContext:
        """A fresh context (files read now, so a renewed certificate needs no restart); TlsConfigError
        naming the file that cannot be used."""
        ctx = client_context(self.ca_certificates, self.certificate, self.private_key)
        ctx.check_hostname = self.verify_hostname  # the certificate itself is still required and verified
        return ctx


def on_handshake_failure(ctx: ssl.SSLContext, callback: Callable[[OSError], None]) -> ssl.SSLContext:
    """pynetdicom reports a failed handshake only as 'unable to connect' (the reason goes to its own log):
    have the sockets `ctx` wraps hand the error to `callback` first, so the caller can say why."""

    class _Socket(ctx.sslsocket_class):  # type: ignore[name-defined, misc]
        def do_handshake(self, block: bool = False) -> None:
            try:
                super().do_handshake(block)
            except OSError as exc:
                callback(exc)
                raise

    ctx.sslsocket_class = _Socket
    return ctx


def handshake_reason(exc: OSError) -> str:
    """A failed handshake in words, naming TLS (e.g. the peer's certificate not signed by our CA)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: the destination's certificate was not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc.strerror or type(exc).__name__}"
    if isinstance(exc, TimeoutError):
        return "TLS handshake failed: timed out (is the destination's port speaking TLS?)"
    return f"TLS handshake failed: {exc.strerror or type(exc).__name__} (is the destination's port speaking TLS?)"

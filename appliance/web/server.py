"""Runs the web service inside the appliance process on a thread of its own (its own asyncio loop), so a
busy page never holds up a C-STORE and the node needs no second service to manage.

The socket is bound before the thread starts: a port already taken is reported at once, and the node goes
on serving DICOM without the page rather than dying (DICOM is what scanners depend on).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time

import uvicorn

from appliance.config import AppConfig, ConfigError
from appliance.web.app import WebContext, create_app
from appliance.web.auth import resolve_token
from dicom_node.logfmt import log_event

logger = logging.getLogger(__name__)


def _bind(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class WebServer:
    def __init__(self, config: AppConfig, *, workers_alive=None, environ=None, clock=time.time,  # noqa: ANN001
                 audit=None) -> None:  # noqa: ANN001 - dicom_node.audit.AuditTrail
        self.config = config
        self.audit = audit
        self.workers_alive = workers_alive
        self.clock = clock
        self.environ = os.environ if environ is None else environ
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    def start(self) -> tuple[str, int]:
        """Bind, then serve on a thread. Raises ConfigError (token, certificate) or OSError (port)."""
        web = self.config.web
        token, source = resolve_token(web, self.config.data_dir, self.environ)
        https = web.certificate is not None
        if https:  # fail here, naming the files, rather than on the first connection
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(web.certificate, web.private_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"web.certificate {web.certificate} / web.private_key {web.private_key}: "
                                  f"cannot load ({getattr(exc, 'strerror', None) or type(exc).__name__})") from exc
        app = create_app(WebContext(self.config, token, https=https, workers_alive=self.workers_alive,
                                    clock=self.clock, audit=self.audit))
        sock = _bind(web.bind_address, web.port)
        self.address = sock.getsockname()[:2]
        uv_config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                   timeout_graceful_shutdown=2, ws="none",
                                   ssl_certfile=str(web.certificate) if https else None,
                                   ssl_keyfile=str(web.private_key) if https else None)
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="web",
                                        daemon=True)
        self._thread.start()
        log_event(logger, "web.started", address=self.address[0], port=self.address[1],
                  scheme="https" if https else "http", token_from=source)
        return self.address

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)

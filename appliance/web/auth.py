"""Who may see the page: one access token from the config (a file) or the environment, never the command
line (process lists show it). A login sets a signed session cookie, so tablets do not keep the token in a
script-readable place; API clients send it as a bearer header."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from appliance.config import ConfigError, WebConfig
from dicom_node.spool import store_durably

TOKEN_ENV = "ISONODE_WEB_TOKEN"
DEFAULT_TOKEN_FILE = "web-token"
MIN_TOKEN_CHARS = 8
SESSION_COOKIE = "isonode_session"


def token_file(web: WebConfig, data_dir: Path) -> Path:
    return web.token_file if web.token_file is not None else data_dir / DEFAULT_TOKEN_FILE


def resolve_token(web: WebConfig, data_dir: Path, environ: Mapping[str, str]) -> tuple[str, str]:
    """(token, where it came from). The environment wins; then `web.token_file`; with neither set, a token
    is made at first start in <data_dir>/web-token (owner-only), where the README tells the operator to look."""
    from_env = environ.get(TOKEN_ENV, "").strip()
    if from_env:
        if len(from_env) < MIN_TOKEN_CHARS:
            raise ConfigError(f"{TOKEN_ENV}: the token needs at least {MIN_TOKEN_CHARS} characters")
        return from_env, TOKEN_ENV
    path = token_file(web, data_dir)
    if not path.exists() and web.token_file is None:
        store_durably(path, (secrets.token_urlsafe(24) + "\n").encode())
        os.chmod(path, 0o600)
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"web.token_file {path}: cannot read the token: {exc.strerror}") from exc
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"web.token_file {path}: the token needs at least {MIN_TOKEN_CHARS} characters")
    return token, str(path)


class Sessions:
    """Session cookies are `expiry.signature`, signed with a key derived from the token: nothing to store,
    they survive a restart, and changing the token ends every session."""

    def __init__(self, token: str, lifetime_s: float) -> None:
        self._token = token.encode()
        self._key = hashlib.sha256(b"isonode-session\0" + self._token).digest()
        self.lifetime_s = lifetime_s

    def token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.strip().encode(), self._token)

    def _sign(self, expiry: int) -> str:
        return hmac.new(self._key, str(expiry).encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float | None = None) -> str:
        expiry = int((time.time() if now is None else now) + self.lifetime_s)
        return f"{expiry}.{self._sign(expiry)}"

    def valid(self, cookie: str | None, now: float | None = None) -> bool:
        if not cookie or "." not in cookie:
            return False
        expiry_text, signature = cookie.split(".", 1)
        if not expiry_text.isdigit() or not hmac.compare_digest(signature, self._sign(int(expiry_text))):
            return False
        return int(expiry_text) > (time.time() if now is None else now)


class LoginThrottle:
    """At most `max_failures` wrong tokens per client address in `window_s`: guessing takes forever."""

    def __init__(self, max_failures: int = 5, window_s: float = 60.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.setdefault(client, deque())
        while times and times[0] < now - self.window_s:
            times.popleft()
        return times

    def blocked(self, client: str, now: float | None = None) -> bool:
        return len(self._recent(client, time.monotonic() if now is None else now)) >= self.max_failures

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._recent(client, now).append(now)
        if len(self._failures) > 10_000:  # bounded: forget the quietest addresses
            for key in [k for k, v in self._failures.items() if not v][:5_000]:
                del self._failures[key]

"""Live updates for the page: one watcher per app notices every commit to the node's database (SQLite's
`data_version` changes when another connection commits), rebuilds the series list once, and hands it to
every open event stream. Clients never poll; the database is read once per change, not once per client."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

KEEPALIVE_S = 15.0
logger = logging.getLogger(__name__)


class SeriesFeed:
    def __init__(self, database_path: Path, snapshot: Callable[[], dict[str, Any]], *, interval_s: float = 0.25):
        self.database_path = database_path
        self.snapshot = snapshot
        self.interval_s = interval_s
        self.version = 0
        self.payload = ""
        self._subscribers = 0
        self._changed: asyncio.Condition | None = None
        self._task: asyncio.Task | None = None

    def _data_version(self, conn: sqlite3.Connection) -> int:
        return conn.execute("PRAGMA data_version").fetchone()[0]

    async def _watch(self) -> None:
        conn = sqlite3.connect(self.database_path, check_same_thread=False)
        try:
            seen = None
            while self._subscribers > 0:
                try:
                    current = await asyncio.to_thread(self._data_version, conn)
                    if current != seen:
                        payload = json.dumps(await asyncio.to_thread(self.snapshot))
                        seen = current
                        if payload != self.payload:
                            self.payload, self.version = payload, self.version + 1
                            async with self._changed:
                                self._changed.notify_all()
                except Exception:  # a busy or failing database: the page goes stale, the feed tries again
                    logger.exception("web.feed_error")
                await asyncio.sleep(self.interval_s)
        finally:
            conn.close()
            self._task = None

    async def stream(self, is_disconnected: Callable[[], Any]) -> AsyncIterator[str]:
        """Server-sent events: `series` with the list at once and after every change; keepalive comments."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        self._subscribers += 1
        if self._task is None:
            self._task = asyncio.create_task(self._watch())
        try:
            sent = 0
            yield "retry: 2000\n\n"
            while not await is_disconnected():
                if self.version != sent and self.payload:
                    sent = self.version
                    yield f"event: series\ndata: {self.payload}\n\n"
                    continue
                try:
                    async with self._changed:
                        await asyncio.wait_for(self._changed.wait(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
        finally:
            self._subscribers -= 1

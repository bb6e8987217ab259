"""The node's clock for stored times, deadlines and durations (leases, backoff, idle completion, retention).

A Jetson has no RTC battery: it may boot with its clock in 1970 and NTP steps it later, by decades. Times
compared with the wall clock would then expire every lease at once, or make a series received a minute
ago look years old. `SteadyClock` reads the wall clock once, at start, never earlier than the newest time
the database holds, and advances by the monotonic clock after that, so a step while the node runs
changes nothing. Times stay seconds since the epoch, so stored rows keep their meaning.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dicom_node.database import Database

Clock = Callable[[], float]

# The stored times that only move forward with the node's clock (deadlines such as not_before may lie
# ahead by design and are left out; the catalog keeps no times).
STORED_TIMES = (("series", "last_received_at"), ("instances", "received_at"), ("jobs", "updated_at"),
                ("outbox", "updated_at"))


class SteadyClock:
    """Seconds since the epoch: max(wall clock, `floor`) at construction, then advanced monotonically."""

    def __init__(self, floor: float = 0.0, *, wall: Clock = time.time,
                 monotonic: Clock = time.monotonic) -> None:
        self.wall_at_anchor = wall()
        self.anchor = max(self.wall_at_anchor, floor)
        self._monotonic = monotonic
        self._start = monotonic()

    def __call__(self) -> float:
        return self.anchor + (self._monotonic() - self._start)


def stored_time_floor(db: Database) -> float:
    """The newest time the database holds (0.0 for a fresh one): the node's clock never starts below it."""
    conn = db.connection
    floor = 0.0
    for table, column in STORED_TIMES:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
            newest = conn.execute(f"SELECT MAX({column}) FROM {table}").fetchone()[0]
            if newest is not None:
                floor = max(floor, float(newest))
    return floor

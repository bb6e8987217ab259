"""Frames the C-STORE handler already decoded, kept for the job that reads the series moments later.

The node must decode every compressed image at ingest to know it can (PS3.4: refuse with 0xC230 what
cannot be read), and the job then read the series back and decoded it again: 2.3 s of a 275-slice
JPEG-LS chest, half of the preview's budget. Keeping the decoded stored values in memory, bounded by
bytes with the least recently used dropped first, removes that second decode. It is only a cache: a
restart, an evicted frame or a multi-frame object is simply decoded from the spool as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class DecodedFrames:
    """SOP Instance UID -> stored values (rows, cols) of a single-frame image, at most `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._frames: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, sop_instance_uid: str, frame: np.ndarray) -> None:
        if frame.ndim != 2 or frame.nbytes > self.max_bytes:
            return
        frame = np.ascontiguousarray(frame)
        frame.setflags(write=False)  # shared with readers: nobody may change it in place
        with self._lock:
            old = self._frames.pop(sop_instance_uid, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._frames[sop_instance_uid] = frame
            self._bytes += frame.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._frames.popitem(last=False)
                self._bytes -= dropped.nbytes

    def get(self, sop_instance_uid: str) -> np.ndarray | None:
        with self._lock:
            frame = self._frames.get(sop_instance_uid)
            if frame is not None:
                self._frames.move_to_end(sop_instance_uid)
            return frame

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._frames)

"""Structured logging: one JSON object per line, one line per event.

Callers pass an event name and key/value fields. Nothing here inspects datasets, so PHI (patient names,
IDs, birth dates) can only reach the log if a caller passes it explicitly, which the code never does:
log UIDs, counts, statuses and reasons only.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any


def log_event(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log `event` with structured fields (rendered by JsonLineFormatter)."""
    logger.log(level, event, extra={"fields": fields})


_KV = re.compile(r"""(\w+)=('[^']*'|"[^"]*"|\([^)]*\)|\[[^\]]*\]|\S+)""")


def _split_logfmt(message: str) -> tuple[str, dict[str, str]]:
    """`event=name k=v ...` (the logfmt style some modules log in) -> (name, fields)."""
    pairs = dict((k, v.strip("'\"")) for k, v in _KV.findall(message))
    return pairs.pop("event", message), pairs


def _exception_summary(exc_info: Any) -> str:
    """The exception's type and where it was raised (file:line, function), never its message: messages
    can quote the data that failed (a patient name in a header, a path with an accession number)."""
    exc_type, _, tb = exc_info
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return exc_type.__name__
    code = last.tb_frame.f_code
    return f"{exc_type.__name__} at {code.co_filename.rsplit('/', 1)[-1]}:{last.tb_lineno} in {code.co_name}"


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event, parsed = _split_logfmt(message) if message.startswith("event=") else (message, {})
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
            **parsed,
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update({k: v for k, v in fields.items() if k not in entry})
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = _exception_summary(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def configure_logging(level: str = "INFO") -> None:
    """Send all logs to stderr as JSON lines; silence the chatty INFO logs of pynetdicom and highdicom."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # an INFO line per module it copies into a SEG

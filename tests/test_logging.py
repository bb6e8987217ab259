"""Logs are one JSON object per line, whichever style a module logs in."""

from __future__ import annotations

import json
import logging

from dicom_node.logfmt import JsonLineFormatter, log_event


def _format(logger_call) -> dict:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("test.logfmt")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger_call(logger)
    finally:
        logger.removeHandler(handler)
    line = JsonLineFormatter().format(records[0])
    assert "\n" not in line
    return json.loads(line)


def test_structured_fields_become_json_keys():
    entry = _format(lambda log: log_event(log, "store.refused", status="0xC230", reason="pixel data: truncated"))
    assert entry["event"] == "store.refused"
    assert entry["status"] == "0xC230" and entry["reason"] == "pixel data: truncated"
    assert entry["level"] == "info" and entry["ts"].endswith("Z")


def test_logfmt_style_messages_are_split_into_fields():
    entry = _format(lambda log: log.info("event=volume_assembled slices=%d shape=%s reason=%r", 3, (1, 2, 3), "a b"))
    assert entry["event"] == "volume_assembled"
    assert entry["slices"] == "3" and entry["shape"] == "(1, 2, 3)" and entry["reason"] == "a b"


def test_plain_messages_stay_whole():
    assert _format(lambda log: log.warning("something odd happened"))["event"] == "something odd happened"


def test_an_exception_is_logged_by_type_and_place_never_by_its_message():
    def fail(log):
        try:
            raise ValueError("Invalid value for PN: 'DOE^JANE' (patient 123456)")
        except ValueError:
            log.exception("store.internal_error")

    entry = _format(fail)
    assert entry["exception"].startswith("ValueError at test_logging.py:")
    assert "DOE" not in json.dumps(entry) and "123456" not in json.dumps(entry)

"""The pynetdicom poll tuning does what it says and still has something to tune."""

from __future__ import annotations

import inspect
import time

import pynetdicom.association as association_module
from pynetdicom.association import Association

from dicom_node.scp import _ReactorClock, tune_pynetdicom_reactor


def test_association_reactor_still_polls_with_module_time_sleep():
    # If a pynetdicom upgrade stops sleeping through `time.sleep` in the reactor, the tuning becomes a no-op.
    assert "time.sleep(0.001)" in inspect.getsource(Association._run_reactor)


def test_reactor_sleeps_are_capped_and_the_patch_is_idempotent():
    before = association_module.time
    try:
        tune_pynetdicom_reactor(0.0002)
        tune_pynetdicom_reactor(0.0002)
        clock = association_module.time
        assert isinstance(clock, _ReactorClock) and clock._time is time
        slept: list[float] = []

        class FakeTime:
            sleep = staticmethod(slept.append)
            monotonic = staticmethod(lambda: 42.0)

        capped = _ReactorClock(FakeTime(), 0.0002)
        capped.sleep(0.001)
        capped.sleep(0.0001)
        assert slept == [0.0002, 0.0001]
        assert capped.monotonic() == 42.0  # everything else is the wrapped module
    finally:
        association_module.time = before

"""GC pause bookkeeping: hand-fed callbacks on a fake clock, and one real collection."""

from __future__ import annotations

import gc
import time

import pytest

from habc_policy.core.gc_pauses import GcPauses


def test_pauses_are_summed_from_their_callbacks() -> None:
    t = [0.0]
    pauses = GcPauses(clock=lambda: t[0])
    for start, stop in ((1.0, 1.05), (2.0, 2.2), (3.0, 3.01)):
        t[0] = start
        pauses._callback("start", {})
        t[0] = stop
        pauses._callback("stop", {})
    assert pauses.pause_s_since(0.0) == pytest.approx(0.05 + 0.2 + 0.01)
    assert pauses.pause_s_since(1.5) == pytest.approx(0.2 + 0.01)
    # A window that starts inside a pause counts only its part of it: 2.1..2.2.
    assert pauses.pause_s_since(2.1) == pytest.approx(0.1 + 0.01)
    assert pauses.pause_s_since(5.0) == 0.0
    # A stop without a start (installed mid-collection) records nothing.
    pauses._callback("stop", {})
    assert pauses.pause_s_since(0.0) == pytest.approx(0.26)


def test_a_real_collection_is_recorded_and_uninstall_stops_it() -> None:
    pauses = GcPauses().install()
    try:
        before = time.monotonic()
        gc.collect()
        assert pauses.pause_s_since(before) > 0.0
        n = len(pauses._pauses)
    finally:
        pauses.uninstall()
    gc.collect()
    assert len(pauses._pauses) == n

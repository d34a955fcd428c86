"""Garbage-collection pauses of this process, for latency diagnostics.

CPython's cyclic collector holds the interpreter while it runs, so every Python thread of the
process (the policy server's heartbeat, its inference loop, the executor) stops for that long.
:class:`GcPauses` records each collection's wall time through ``gc.callbacks``, so a thread
that finds itself late can say how much of the delay was collection::

    pauses = GcPauses().install()
    ...
    late_by_gc = pauses.pause_s_since(time.monotonic() - 0.2)
    pauses.uninstall()
"""

from __future__ import annotations

import gc
import time
from collections import deque
from typing import Any


class GcPauses:
    """The last ``keep`` collections as ``(end, duration)`` in ``time.monotonic()`` seconds."""

    def __init__(self, keep: int = 256, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._start: float | None = None
        self._pauses: deque[tuple[float, float]] = deque(maxlen=keep)

    def install(self) -> GcPauses:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        now = self._clock()
        if phase == "start":
            self._start = now
        elif phase == "stop" and self._start is not None:
            self._pauses.append((now, now - self._start))
            self._start = None

    def pause_s_since(self, t: float) -> float:
        """Seconds of collection that ended after ``t`` (clipped to start no earlier)."""
        return sum(min(d, end - t) for end, d in list(self._pauses) if end > t)

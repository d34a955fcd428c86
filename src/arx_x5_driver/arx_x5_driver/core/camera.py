"""Frozen-camera detection: a frame whose sequence number or content stops changing is stale.

A RealSense that hangs keeps returning its last frame; re-stamped on publication it would look
new to every reader. :class:`FrameWatch` sees through that: each camera frame comes with the
backend's frame sequence number (``None`` when the backend has none) and the image itself. A
camera is **stale** when, for longer than ``stale_after_s``, either

- its sequence number has not advanced, or
- (``check_content``) its pixels have not changed at all.

A real sensor's noise changes a few pixels in every frame, so bit-identical consecutive images
mean a frozen pipeline; a static simulated scene renders identical images legitimately, so the
sim driver checks sequence numbers only. Pure: no ROS, no SDK.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def frame_digest(image: npt.NDArray[np.uint8]) -> bytes:
    """A 16-byte digest of the image's pixels (blake2b), cheap enough for every frame."""
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()


@dataclass
class FrameWatch:
    """Staleness of one camera (see the module docstring).

    Attributes:
        stale_after_s: how long the sequence or content may stay unchanged (s).
        check_content: also treat unchanged pixels as frozen (real cameras).
    """

    stale_after_s: float
    check_content: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.stale_after_s) and self.stale_after_s > 0):
            raise ValueError(f"stale_after_s must be > 0, got {self.stale_after_s}")
        self._seq: int | None = None
        self._digest: bytes | None = None
        self._seq_changed_s = -math.inf
        self._content_changed_s = -math.inf
        self.reason = ""

    def update(self, seq: int | None, image: npt.NDArray[np.uint8], now_s: float) -> str:
        """Record the frame read at ``now_s``; return why the camera is stale (``""`` if fresh).

        The first frame of a camera is fresh. A backend without sequence numbers (``seq is
        None``) counts every read as a new sequence.
        """
        if seq is None or seq != self._seq:
            self._seq_changed_s = now_s
        self._seq = seq
        if self.check_content:
            digest = frame_digest(image)
            if digest != self._digest:
                self._content_changed_s = now_s
            self._digest = digest
        else:
            self._content_changed_s = now_s
        reasons = []
        if now_s - self._seq_changed_s > self.stale_after_s:
            reasons.append(f"frame sequence stuck at {seq} for {now_s - self._seq_changed_s:.2f} s")
        if now_s - self._content_changed_s > self.stale_after_s:
            reasons.append(f"identical image content for {now_s - self._content_changed_s:.2f} s")
        self.reason = "; ".join(reasons)
        return self.reason

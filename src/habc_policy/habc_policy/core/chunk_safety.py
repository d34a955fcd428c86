"""The chunk-level safety step: a policy row checked against what the arm last executed.

Before a policy row reaches the authority state machine (and so the driver), it is bounded
per dimension against the last executed action ``a_{t−1}`` (and the one before, ``a_{t−2}``):

1. **jump**: a row farther than ``J`` from ``a_{t−1}`` in any dimension is no continuation of
   the motion (a corrupt or mis-stamped chunk): it is refused and the arm holds
   (``chunk_jump``) until the next chunk (the arbiter drops the refused one, so no seam
   blends from it); ``|r − a_{t−1}| ≤ J``. A new chunk is judged the same way on arrival, on
   its row for that tick as served (:meth:`ChunkSafety.admits`): one too far is dropped and
   the running chunk runs on, before any seam could blend the arm towards it;
2. **velocity**: the step is clamped, ``Δ = clip(r − a_{t−1}, −V·Δt, V·Δt)``;
3. **acceleration**: the change of the step is clamped,
   ``Δ ← clip(Δ, Δ_{t−1} − A·Δt², Δ_{t−1} + A·Δt²)`` with ``Δ_{t−1} = a_{t−1} − a_{t−2}``,
   then the velocity bound again (velocity wins), and ``a_t = a_{t−1} + Δ``.

Only the dimensions of arms the policy drives (``mask``: arms in ``POLICY`` mode) are bounded:
a human-driven arm's row is not used, and the hand-back ramp blends from the operator's last
action, so its steps are small by construction. A clamped row is executed but is not the
policy's choice: the arbiter sets
``ExecutedCommand.clamped`` and the learner neither labels nor imitates that step (as for a
driver clamp). Every clamp and refusal is counted per limit (``counts``, on ``/diagnostics``).
The driver's own safety layer stays the last check. Pure numpy, ROS-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LIMIT_JUMP = "jump"
LIMIT_VELOCITY = "velocity"
LIMIT_ACCELERATION = "acceleration"
HOLD_CHUNK_JUMP = "chunk_jump"


def _per_dim(name: str, values: Sequence[float], n: int) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) == 1:
        out = out * n
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries, expected 1 or {n}")
    if not all(math.isfinite(v) and v > 0 for v in out):
        raise ValueError(f"{name} must be finite and > 0 everywhere, got {out}")
    return out


@dataclass(frozen=True)
class ChunkSafetyConfig:
    """Limits per action dimension (one value applies to every dimension).

    Attributes:
        max_jump: ``J`` (rad; grippers in opening units): farther rows are refused.
        max_velocity: ``V`` (rad/s; grippers 1/s).
        max_acceleration: ``A`` (rad/s²; grippers 1/s²).
        period_s: ``Δt``, the control period.
    """

    action_dim: int
    max_jump: tuple[float, ...]
    max_velocity: tuple[float, ...]
    max_acceleration: tuple[float, ...]
    period_s: float

    def __post_init__(self) -> None:
        if self.action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {self.action_dim}")
        for name in ("max_jump", "max_velocity", "max_acceleration"):
            object.__setattr__(self, name, _per_dim(name, getattr(self, name), self.action_dim))
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ValueError(f"period_s must be > 0, got {self.period_s}")


@dataclass(frozen=True)
class SafeRow:
    """The outcome for one row: the action to run (``None``: refused, hold), and which limits
    changed or refused it."""

    action: np.ndarray | None
    limits: tuple[str, ...] = ()

    @property
    def clamped(self) -> bool:
        return self.action is not None and bool(self.limits)


class ChunkSafety:
    """See the module docstring. Call :meth:`check` on a policy row, then :meth:`executed`
    with whatever the tick executed (policy, human or hold)."""

    def __init__(self, config: ChunkSafetyConfig) -> None:
        self.config = config
        c = config
        self._jump = np.asarray(c.max_jump)
        self._vel_step = np.asarray(c.max_velocity) * c.period_s
        self._acc_step = np.asarray(c.max_acceleration) * c.period_s**2
        self._last: np.ndarray | None = None
        self._prev: np.ndarray | None = None
        #: The last refusal (jump limit): ``(dimension, |r − a_{t−1}|)`` of the farthest
        #: dimension, for the log and the refusal report.
        self.last_refusal: tuple[int, float] | None = None
        self.counts = {
            LIMIT_JUMP: 0,
            LIMIT_VELOCITY: 0,
            LIMIT_ACCELERATION: 0,
            "rows": 0,
            "chunks": 0,
            "dropped_chunks": 0,
        }

    def reset(self, last_action: np.ndarray | None = None) -> None:
        """A new episode: ``last_action`` (e.g. the measured position) seeds ``a_{t−1}``."""
        self._prev = None
        self._last = None if last_action is None else np.asarray(last_action, np.float64).copy()

    def executed(self, action: np.ndarray) -> None:
        """The action the tick executed (any controller): the next check's ``a_{t−1}``."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape == (self.config.action_dim,) and np.all(np.isfinite(a)):
            self._prev, self._last = self._last, a.copy()

    def admits(self, row: np.ndarray, mask: np.ndarray | None = None) -> bool:
        """Whether a new chunk's first row to run lies within the jump limit of the last
        executed action (masked dimensions). Judged on the chunk as served, before any seam
        blends it: a blend must not walk the arm towards a corrupt chunk. Counts ``chunks``
        and ``dropped_chunks``."""
        r = np.asarray(row, dtype=np.float64).reshape(-1)
        d = self.config.action_dim
        on = np.ones(d, bool) if mask is None else np.asarray(mask, dtype=bool).reshape(d)
        self.counts["chunks"] += 1
        if self._last is None or r.shape != (d,) or not on.any():
            return True
        if np.any(np.abs(r - self._last)[on] > self._jump[on]):
            self.counts["dropped_chunks"] += 1
            self._note_refusal(np.where(on, np.abs(r - self._last), 0.0))
            return False
        return True

    def _note_refusal(self, distance: np.ndarray) -> None:
        dim = int(np.argmax(distance / self._jump))
        self.last_refusal = (dim, float(distance[dim]))

    def check(self, row: np.ndarray, mask: np.ndarray | None = None) -> SafeRow:
        """Bound ``row`` against the last executed action (unchanged when none is known), in
        the dimensions where ``mask`` is true (all when ``None``)."""
        r = np.asarray(row, dtype=np.float64)
        d = self.config.action_dim
        if r.shape != (d,):
            raise ValueError(f"row has shape {r.shape}, expected ({d},)")
        on = np.ones(d, bool) if mask is None else np.asarray(mask, dtype=bool).reshape(d)
        last = self._last
        if last is None or not on.any() or not np.all(np.isfinite(r)):
            return SafeRow(r.astype(np.float32))
        self.counts["rows"] += 1
        jump = np.where(on, self._jump, np.inf)
        vel = np.where(on, self._vel_step, np.inf)
        acc_step = np.where(on, self._acc_step, np.inf)
        step = r - last
        if np.any(np.abs(step) > jump):
            self.counts[LIMIT_JUMP] += 1
            self._note_refusal(np.where(on, np.abs(step), 0.0))
            return SafeRow(None, (LIMIT_JUMP,))
        limits: list[str] = []
        clamped = np.clip(step, -vel, vel)
        if np.any(clamped != step):
            limits.append(LIMIT_VELOCITY)
        if self._prev is not None:
            before = last - self._prev
            acc = np.clip(clamped, before - acc_step, before + acc_step)
            acc = np.clip(acc, -vel, vel)
            if np.any(acc != clamped):
                limits.append(LIMIT_ACCELERATION)
            clamped = acc
        if not limits:
            return SafeRow(r.astype(np.float32))
        for name in limits:
            self.counts[name] += 1
        return SafeRow((last + clamped).astype(np.float32), tuple(limits))

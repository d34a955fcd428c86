"""Action-chunk scheduling: which row of which chunk runs at a control tick.

A chunk computed from the observation stamped ``t_obs`` holds one row per control tick after
that observation: row 0 for the first tick after it, row ``h`` for the tick after ``h`` full
periods have passed (exactly how the policy was trained: row 0 is the action taken on the
observation itself). By the time the chunk reaches the arbiter, inference latency has passed,
so rows already overdue are skipped (latency compensation):

    h(t) = max(0, ceil((t - t_obs) / period - tolerance) - 1)

with a tolerance (a quarter period) for tick jitter, so a tick that comes a little late does
not drop a row.

Only the first ``execute_rows`` rows of a chunk are ever executed (25 of 50 by default); a
tick whose ``h`` lies past them finds the chunk *stale*, and the arm holds until a newer chunk
comes. Pure and ROS-free: the arbiter node feeds it message contents and a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chunk:
    """One action chunk as the arbiter sees it.

    Attributes:
        actions: ``[H, d]`` float32 actions, row ``h`` for time ``stamp_s + h * period_s``.
        stamp_s: time of the observation the chunk was computed from (seconds, control clock).
        period_s: seconds between rows.
        checkpoint_id: id of the producing checkpoint.
        seq: chunk sequence number (strictly increasing per policy server run).
    """

    actions: np.ndarray
    stamp_s: float
    period_s: float
    checkpoint_id: str
    seq: int

    def __post_init__(self) -> None:
        if self.actions.ndim != 2 or self.actions.shape[0] < 1 or self.actions.shape[1] < 1:
            raise ValueError(f"actions must be [H, d] with H, d >= 1, got {self.actions.shape}")
        if not np.all(np.isfinite(self.actions)):
            raise ValueError(f"chunk {self.seq} holds non-finite actions")
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ValueError(f"period_s must be > 0, got {self.period_s}")
        if not math.isfinite(self.stamp_s):
            raise ValueError(f"stamp_s must be finite, got {self.stamp_s}")

    @classmethod
    def from_flat(
        cls,
        flat: np.ndarray,
        horizon: int,
        action_dim: int,
        stamp_s: float,
        period_s: float,
        checkpoint_id: str,
        seq: int,
    ) -> Chunk:
        """Build from a row-major ``H*d`` vector (``habc_msgs/ActionChunk.actions``)."""
        flat = np.asarray(flat, dtype=np.float32)
        if flat.size != horizon * action_dim:
            raise ValueError(
                f"chunk {seq}: {flat.size} values, expected horizon*action_dim = "
                f"{horizon}*{action_dim} = {horizon * action_dim}"
            )
        return cls(flat.reshape(horizon, action_dim), stamp_s, period_s, checkpoint_id, seq)

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])


#: Fraction of a period a tick may come late without skipping a row.
ROW_TOLERANCE = 0.25


def row_at(stamp_s: float, period_s: float, now_s: float) -> int:
    """``h(t) = max(0, ceil((t - t_obs) / period - tolerance) - 1)``: the row of the tick at
    ``t`` (row 0 for the first tick after the observation; never below 0)."""
    return max(0, math.ceil((now_s - stamp_s) / period_s - ROW_TOLERANCE) - 1)


@dataclass(frozen=True)
class ScheduledRow:
    """The row picked for a tick."""

    action: np.ndarray  # [d]
    checkpoint_id: str
    seq: int
    row: int


class ChunkScheduler:
    """Holds the newest valid chunk and picks the row for each control tick.

    Args:
        action_dim: expected ``d``; chunks of another width are rejected.
        execute_rows: rows of each chunk that may run (e.g. 25 of 50); past them the chunk is
            stale.
    """

    def __init__(self, action_dim: int, execute_rows: int) -> None:
        if action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        if execute_rows < 1:
            raise ValueError(f"execute_rows must be >= 1, got {execute_rows}")
        self.action_dim = action_dim
        self.execute_rows = execute_rows
        self._chunk: Chunk | None = None

    @property
    def chunk(self) -> Chunk | None:
        return self._chunk

    def offer(self, chunk: Chunk) -> str | None:
        """Take ``chunk`` if it is newer than the held one. Returns why not, or ``None``."""
        if chunk.action_dim != self.action_dim:
            return f"chunk {chunk.seq}: action_dim {chunk.action_dim} != {self.action_dim}"
        if chunk.horizon < self.execute_rows:
            return f"chunk {chunk.seq}: horizon {chunk.horizon} < execute_rows {self.execute_rows}"
        held = self._chunk
        if held is not None and (chunk.stamp_s, chunk.seq) <= (held.stamp_s, held.seq):
            return f"chunk {chunk.seq} is not newer than chunk {held.seq}"
        self._chunk = chunk
        return None

    def clear(self) -> None:
        """Forget the held chunk (e.g. after the policy server restarted or a hand-back)."""
        self._chunk = None

    def select(self, now_s: float) -> ScheduledRow | None:
        """The row to execute at ``now_s``, or ``None`` when no chunk is fresh (arm holds)."""
        chunk = self._chunk
        if chunk is None:
            return None
        row = row_at(chunk.stamp_s, chunk.period_s, now_s)
        if row >= self.execute_rows:
            return None
        return ScheduledRow(chunk.actions[row].copy(), chunk.checkpoint_id, chunk.seq, row)

    def rows_left(self, now_s: float) -> int:
        """Executable rows left in the held chunk at ``now_s`` (0 when none)."""
        chunk = self._chunk
        if chunk is None:
            return 0
        return max(0, self.execute_rows - row_at(chunk.stamp_s, chunk.period_s, now_s))


def inference_trigger_row(
    execute_rows: int, period_s: float, latency_s: float, margin_rows: int = 2
) -> int:
    """Row of the current chunk at which the policy server starts computing the next one.

    The next chunk must arrive before the current one runs out: start
    ``ceil(latency / period) + margin`` rows before ``execute_rows`` (never before row 0).
    """
    if period_s <= 0:
        raise ValueError(f"period_s must be > 0, got {period_s}")
    if latency_s < 0:
        raise ValueError(f"latency_s must be >= 0, got {latency_s}")
    lead = math.ceil(latency_s / period_s) + margin_rows
    return max(0, execute_rows - lead)

"""Action-chunk scheduling: which row of which chunk runs at a control tick.

A chunk computed from the observation stamped ``t_obs`` holds one row per control tick after
that observation: row 0 for the first tick after it, row ``h`` for the tick after ``h`` full
periods have passed (exactly how the policy was trained: row 0 is the action taken on the
observation itself). By the time the chunk reaches the arbiter, inference latency has passed,
so rows already overdue are skipped (latency compensation):

    h(t) = max(0, ceil((t - t_obs) / period - tolerance) - 1)

with a tolerance (a quarter period) for tick jitter, so a tick that comes a little late does
not drop a row.

Only the first ``execute_rows`` rows of a chunk are executed (25 of 50 by default) while the
next chunk is on time. When it is late, the running chunk runs on for at most
``overrun_rows`` more rows (10 by default: 0.2 s at 50 Hz; never past its horizon), and each
such tick is flagged (:attr:`ScheduledRow.overrun`) and counted: a late chunk costs open-loop
time instead of a stop-and-go hold. A tick whose ``h`` lies past ``execute_rows +
overrun_rows`` finds the chunk *stale*, and the arm holds until a newer chunk comes. Measured
through the sim graph with a learner training beside it (50 episodes, ``rtc``): every
``policy_stale`` hold was a chunk 5-6 ticks late (11 hold ticks in two episodes), inside the
10-row overrun; with it, the same benchmark held on no ``policy_stale`` tick.

Pure and ROS-free: the arbiter node feeds it message contents and a clock; the in-process
rollouts (``habc_sim.core.rollouts``) feed it the simulated clock, so both paths execute chunks
the same way.

**Seam modes** (how a new chunk takes over from the one running, :data:`SEAM_MODES`):

- ``switch``: the newest chunk's row, at once (the seam may jump);
- ``ensemble``: ACT temporal ensembling, the weighted mean of every held chunk's row for this
  tick (:func:`temporal_ensemble`);
- ``rtc``: real-time-chunking's soft prefix mask (:func:`rtc_prefix_weights`): the new
  chunk's first rows are inpainted from the rows of the running chunk still to execute
  (:func:`rtc_inpaint`). openpi / LeRobot apply this mask as guidance while the flow is
  integrated; here it is applied to the sampled chunk (output-space inpainting), so it works
  with any policy backend, remote ones included.

**Episode start** (:meth:`ChunkScheduler.begin_episode`): chunks from observations before the
episode started are refused, and the first chunk of the episode runs from its row 0 at the first
tick that uses it: the arm held still while the server computed it, so none of its rows is
overdue, and the episode's clock starts at that tick.

**Request timing** (:class:`RequestTimer`): the policy server starts the next chunk
``ceil((q99(inference) + q99(transport)) / period) + margin`` rows before the running one runs
out; the margin grows by a row after every late chunk and relaxes after a run of timely ones.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

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
    overrun: bool = False  # past execute_rows: the next chunk is late


SEAM_SWITCH = "switch"
SEAM_ENSEMBLE = "ensemble"
SEAM_RTC = "rtc"
SEAM_MODES = (SEAM_SWITCH, SEAM_ENSEMBLE, SEAM_RTC)
#: The arbiter's and the in-process rollouts' default: through the sim graph with a learner
#: training beside it (bench/bench_chunks.py, 50 episodes per mode) ``rtc`` made seams as smooth
#: as the inside of a chunk (jump ratio 1.03, jerk 1.00) and matched in-process success
#: (76 % vs 76 %); ``switch``: 4.2 / 2.3 and 38 % vs 64 %; ``ensemble``: 1.9 / 1.2, 62 % vs 84 %.
DEFAULT_SEAM = SEAM_RTC
#: Rows a chunk may run past ``execute_rows`` while the next one is late (module docstring).
DEFAULT_OVERRUN_ROWS = 10


def ensemble_weights(n: int, decay: float) -> np.ndarray:
    """ACT's temporal-ensembling weights ``w_i = exp(−m·i)``, ``i = 0`` the oldest chunk."""
    if n < 1:
        raise ValueError(f"need at least one row to ensemble, got {n}")
    if not (math.isfinite(decay) and decay >= 0):
        raise ValueError(f"ensemble decay m must be >= 0, got {decay}")
    return np.exp(-decay * np.arange(n, dtype=np.float64))


def temporal_ensemble(rows: np.ndarray, decay: float) -> np.ndarray:
    """``a_t = Σ_i w_i·A_i[t] / Σ_i w_i`` over the rows ``[n, d]`` every held chunk has for
    tick ``t`` (oldest first), with :func:`ensemble_weights`."""
    rows = np.asarray(rows, dtype=np.float64)
    w = ensemble_weights(rows.shape[0], decay)
    return (w[:, None] * rows).sum(axis=0) / w.sum()


def rtc_prefix_weights(horizon: int, delay_rows: int, overlap_rows: int) -> np.ndarray:
    """RTC's soft mask over the new chunk's rows ``j`` (Black et al. 2025, eq. 5):

        W_j = 1                              j < d           (due before the chunk arrived)
        W_j = c_j·(e^{c_j} − 1)/(e − 1)      d ≤ j < H'      c_j = (H' − j)/(H' − d + 1)
        W_j = 0                              j ≥ H'

    with ``d`` the rows overdue on arrival and ``H'`` the rows the running chunk still has for
    the new chunk's ticks.
    """
    if horizon < 1 or delay_rows < 0 or overlap_rows < 0:
        raise ValueError(
            f"need horizon >= 1, delay_rows >= 0, overlap_rows >= 0; got {horizon}, "
            f"{delay_rows}, {overlap_rows}"
        )
    w = np.zeros(horizon, dtype=np.float64)
    h_prime = min(overlap_rows, horizon)
    d = min(delay_rows, h_prime)
    w[:d] = 1.0
    j = np.arange(d, h_prime, dtype=np.float64)
    c = (h_prime - j) / (h_prime - d + 1)
    w[d:h_prime] = c * np.expm1(c) / (math.e - 1.0)
    return w


def rtc_inpaint(new: np.ndarray, pending: np.ndarray, delay_rows: int) -> np.ndarray:
    """``A'_j = W_j·P_j + (1 − W_j)·A_j``: the new chunk ``A`` [H, d] with its first rows
    inpainted from ``P`` [H', d], the running chunk's rows for the same ticks
    (:func:`rtc_prefix_weights`)."""
    new = np.asarray(new, dtype=np.float64)
    pending = np.asarray(pending, dtype=np.float64).reshape(-1, new.shape[1])
    w = rtc_prefix_weights(new.shape[0], delay_rows, pending.shape[0])
    out = new.copy()
    n = min(pending.shape[0], new.shape[0])
    out[:n] = w[:n, None] * pending[:n] + (1.0 - w[:n, None]) * new[:n]
    return out


def _offset_rows(newer: Chunk, older: Chunk) -> int:
    """Rows between two chunks' observations: ``newer`` row ``j`` runs at ``older`` row
    ``j + o`` (same period)."""
    return round((newer.stamp_s - older.stamp_s) / older.period_s)


def _overwrite(older: Chunk, newer: Chunk, dims: np.ndarray) -> Chunk:
    """``older`` with its rows on ``dims`` replaced by ``newer``'s for the ticks both cover."""
    offset = _offset_rows(newer, older)
    if offset < 0 or offset >= older.horizon or not math.isclose(older.period_s, newer.period_s):
        return older
    n = min(older.horizon - offset, newer.horizon)
    actions = older.actions.copy()
    actions[offset : offset + n, dims] = newer.actions[:n, dims]
    return replace(older, actions=actions)


class ChunkScheduler:
    """Holds the newest valid chunk and picks the row for each control tick.

    Args:
        action_dim: expected ``d``; chunks of another width are rejected.
        execute_rows: rows of each chunk that run while the next one is on time (e.g. 25 of
            50); past them and the overrun rows the chunk is stale.
        seam: one of :data:`SEAM_MODES` (see the module docstring).
        ensemble_decay: ``m`` of :func:`ensemble_weights` (``seam="ensemble"``; ACT: 0.01).
        overrun_rows: rows past ``execute_rows`` the running chunk may run while the next
            one is late (never past its horizon); 0: stale right after ``execute_rows``.
    """

    def __init__(
        self,
        action_dim: int,
        execute_rows: int,
        seam: str = SEAM_SWITCH,
        ensemble_decay: float = 0.01,
        overrun_rows: int = DEFAULT_OVERRUN_ROWS,
    ) -> None:
        if action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        if execute_rows < 1:
            raise ValueError(f"execute_rows must be >= 1, got {execute_rows}")
        if overrun_rows < 0:
            raise ValueError(f"overrun_rows must be >= 0, got {overrun_rows}")
        if seam not in SEAM_MODES:
            raise ValueError(f"seam must be one of {SEAM_MODES}, got {seam!r}")
        ensemble_weights(1, ensemble_decay)  # validates the decay
        self.action_dim = action_dim
        self.execute_rows = execute_rows
        self.overrun_rows = overrun_rows
        self.seam = seam
        self.ensemble_decay = ensemble_decay
        self._chunks: list[Chunk] = []  # oldest first; the newest is the one that runs
        self._min_stamp = -math.inf
        self._anchor_first = False

    @property
    def chunk(self) -> Chunk | None:
        return self._chunks[-1] if self._chunks else None

    def offer(
        self, chunk: Chunk, now_s: float | None = None, fresh_dims: np.ndarray | None = None
    ) -> str | None:
        """Take ``chunk`` (received at ``now_s``) if it is newer than the held one. Returns why
        not, or ``None``.

        ``fresh_dims`` (bool ``[d]``): dimensions whose held rows the policy does not execute
        (an arm under the operator's control, or ramping back from it). The held chunks' plan
        for them is not what the arm does, so the new chunk is not inpainted (``rtc``) or
        averaged (``ensemble``) toward it there: the new chunk's rows replace the held ones on
        those dimensions, for every tick they share."""
        if chunk.action_dim != self.action_dim:
            return f"chunk {chunk.seq}: action_dim {chunk.action_dim} != {self.action_dim}"
        if chunk.horizon < self.execute_rows:
            return f"chunk {chunk.seq}: horizon {chunk.horizon} < execute_rows {self.execute_rows}"
        if chunk.stamp_s < self._min_stamp:
            return (
                f"chunk {chunk.seq} is from an observation {self._min_stamp - chunk.stamp_s:.3f} "
                "s before the episode started"
            )
        held = self.chunk
        if held is not None and (chunk.stamp_s, chunk.seq) <= (held.stamp_s, held.seq):
            return f"chunk {chunk.seq} is not newer than chunk {held.seq}"
        fresh = None
        if fresh_dims is not None:
            fresh = np.asarray(fresh_dims, dtype=bool).reshape(-1)
            if fresh.shape[0] != self.action_dim:
                raise ValueError(f"fresh_dims has {fresh.shape[0]} entries, need {self.action_dim}")
            fresh = fresh if fresh.any() else None
        if (
            self.seam == SEAM_RTC
            and held is not None
            and math.isclose(held.period_s, chunk.period_s)
            and not self._anchor_first
        ):
            offset = _offset_rows(chunk, held)
            pending = held.actions[max(0, offset) :]
            if offset >= 0 and pending.shape[0] > 0:
                delay = 0 if now_s is None else row_at(chunk.stamp_s, chunk.period_s, now_s)
                if fresh is not None:
                    n = min(pending.shape[0], chunk.horizon)
                    pending = pending[:n].copy()
                    pending[:, fresh] = chunk.actions[:n, fresh]
                inpainted = rtc_inpaint(chunk.actions, pending, delay).astype(np.float32)
                chunk = replace(chunk, actions=inpainted)
        if fresh is not None and self.seam == SEAM_ENSEMBLE:
            self._chunks = [_overwrite(older, chunk, fresh) for older in self._chunks]
        self._chunks.append(chunk)
        if self.seam != SEAM_ENSEMBLE:
            self._chunks = self._chunks[-1:]
        return None

    def clear(self) -> None:
        """Forget the held chunks (e.g. after the policy server restarted or a hand-back)."""
        self._chunks = []

    def begin_episode(self, start_s: float) -> None:
        """A new episode started at ``start_s``: forget the held chunks, refuse chunks from
        older observations, and run the next chunk from its row 0 at the first tick that uses
        it (the episode's clock starts there)."""
        self.clear()
        self._min_stamp = start_s
        self._anchor_first = True

    def _anchored(self, now_s: float) -> None:
        """Re-stamp the episode's first chunk so its row 0 runs at the tick at ``now_s``:
        ``t_obs' = now − period / 2`` (row_at gives 0 now, 1 a period later)."""
        if self._anchor_first and self._chunks:
            first = self._chunks[-1]
            self._chunks[-1] = replace(first, stamp_s=now_s - 0.5 * first.period_s)
            self._anchor_first = False

    def select(self, now_s: float) -> ScheduledRow | None:
        """The row to execute at ``now_s``, or ``None`` when no chunk is fresh (arm holds)."""
        self._anchored(now_s)
        chunk = self.chunk
        if chunk is None:
            return None
        row = row_at(chunk.stamp_s, chunk.period_s, now_s)
        if row >= min(self.execute_rows + self.overrun_rows, chunk.horizon):
            return None
        action = chunk.actions[row].copy()
        if self.seam == SEAM_ENSEMBLE:
            live, rows = [], []
            for held in self._chunks:
                h = row_at(held.stamp_s, held.period_s, now_s)
                if h < held.horizon:
                    live.append(held)
                    rows.append(held.actions[h])
            self._chunks = live  # chunks with no row left for any later tick are dropped
            action = temporal_ensemble(np.stack(rows), self.ensemble_decay).astype(np.float32)
        return ScheduledRow(
            action, chunk.checkpoint_id, chunk.seq, row, overrun=row >= self.execute_rows
        )

    def first_row(self, chunk: Chunk, now_s: float) -> np.ndarray:
        """The row of ``chunk`` (as served) that would run first if offered at ``now_s``: row 0
        for an episode's first chunk, else its latency-compensated row (the last one when all
        are overdue)."""
        if self._anchor_first:
            return chunk.actions[0]
        return chunk.actions[min(row_at(chunk.stamp_s, chunk.period_s, now_s), chunk.horizon - 1)]

    def rows_left(self, now_s: float) -> int:
        """Executable rows left in the held chunk at ``now_s`` (0 when none)."""
        chunk = self.chunk
        if chunk is None:
            return 0
        if self._anchor_first:
            return self.execute_rows
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


class RequestTimer:
    """When the policy server starts computing the next chunk, from what it measured.

        lead = ceil((q(L_inf) + q(L_tr)) / Δt) + margin,   trigger row = max(0, E − lead)

    ``q`` is the ``quantile`` (0.99) of the last ``window`` inference latencies ``L_inf`` (from
    starting a chunk to publishing it) and transport latencies ``L_tr`` (observation stamp to its
    receipt: the same DDS path a chunk takes back), ``E`` the executable rows. The margin adapts:
    a chunk that reached the arbiter after the running one's last executable row
    (:meth:`late`) adds a row (up to ``max_margin_rows``); ``relax_after`` timely chunks in a row
    take one back (never below ``margin_rows``). Before any measurement the latency is
    ``initial_latency_s``.
    """

    def __init__(
        self,
        execute_rows: int,
        period_s: float,
        margin_rows: int = 2,
        max_margin_rows: int = 10,
        quantile: float = 0.99,
        window: int = 100,
        relax_after: int = 20,
        initial_latency_s: float = 0.1,
    ) -> None:
        if execute_rows < 1 or not (math.isfinite(period_s) and period_s > 0):
            raise ValueError(
                f"need execute_rows >= 1 and period_s > 0, got {execute_rows}, {period_s}"
            )
        if not 0 <= margin_rows <= max_margin_rows:
            raise ValueError(
                f"need 0 <= margin_rows <= max_margin_rows, got {margin_rows}, {max_margin_rows}"
            )
        if not 0 < quantile <= 1 or window < 1 or relax_after < 1:
            raise ValueError("need 0 < quantile <= 1, window >= 1, relax_after >= 1")
        self.execute_rows = execute_rows
        self.period_s = period_s
        self.min_margin = margin_rows
        self.max_margin = max_margin_rows
        self.margin = margin_rows
        self.quantile = quantile
        self.relax_after = relax_after
        self.initial_latency_s = initial_latency_s
        self._inference: deque[float] = deque(maxlen=window)
        self._transport: deque[float] = deque(maxlen=window)
        self._timely = 0
        self.late_chunks = 0

    def _q(self, values: deque[float], default: float) -> float:
        return float(np.quantile(np.asarray(values), self.quantile)) if values else default

    def add_inference(self, latency_s: float) -> None:
        if math.isfinite(latency_s) and latency_s >= 0:
            self._inference.append(latency_s)

    def add_transport(self, latency_s: float) -> None:
        if math.isfinite(latency_s):
            self._transport.append(max(0.0, latency_s))

    @property
    def latency_s(self) -> float:
        """``q(L_inf) + q(L_tr)``."""
        return self._q(self._inference, self.initial_latency_s) + self._q(self._transport, 0.0)

    def lead_rows(self) -> int:
        return math.ceil(self.latency_s / self.period_s - 1e-9) + self.margin

    def trigger_row(self) -> int:
        return max(0, self.execute_rows - self.lead_rows())

    def deadline_s(self, running_stamp_s: float) -> float:
        """Latest arrival of the next chunk: the running chunk's last executable row is due at
        ``t_obs + E·Δt``."""
        return running_stamp_s + self.execute_rows * self.period_s

    def late(self, published_s: float, running_stamp_s: float) -> bool:
        """Record whether the chunk published at ``published_s`` (arriving ``q(L_tr)`` later)
        missed :meth:`deadline_s` of the one running, and adapt the margin. Returns it."""
        arrival = published_s + self._q(self._transport, 0.0)
        late = arrival > self.deadline_s(running_stamp_s)
        if late:
            self.late_chunks += 1
            self.margin = min(self.max_margin, self.margin + 1)
            self._timely = 0
        else:
            self._timely += 1
            if self._timely >= self.relax_after and self.margin > self.min_margin:
                self.margin -= 1
                self._timely = 0
        return late

"""Chunk step selection: latency compensation, staleness, ordering, bad chunks."""

from __future__ import annotations

import numpy as np
import pytest

from habc_policy.core.chunking import Chunk, ChunkScheduler, inference_trigger_row, row_at

PERIOD = 0.02


def chunk(stamp: float, seq: int, horizon: int = 50, dim: int = 2) -> Chunk:
    # Row h holds [h, seq] so a test can read back which row of which chunk ran.
    actions = np.stack([np.arange(horizon), np.full(horizon, seq)], axis=1)[:, :dim]
    return Chunk(actions.astype(np.float32), stamp, PERIOD, f"ckpt-{seq}", seq)


def test_row_at_skips_overdue_rows() -> None:
    # Row h is the tick after h full periods: ceil(elapsed / period - 0.25) - 1.
    assert row_at(10.0, PERIOD, 10.0) == 0  # a chunk never runs early
    assert row_at(10.0, PERIOD, 10.02) == 0  # the first tick after the observation: row 0
    assert row_at(10.0, PERIOD, 10.024) == 0  # that tick 4 ms late (1.2 periods): still row 0
    assert row_at(10.0, PERIOD, 10.026) == 1  # 1.3 periods: a row is overdue
    assert row_at(10.0, PERIOD, 10.04) == 1  # the second tick
    assert row_at(10.0, PERIOD, 10.069) == 3  # 3.45 periods -> ceil(3.2) - 1
    assert row_at(10.0, PERIOD, 10.086) == 4  # 4.3 periods -> ceil(4.05) - 1
    assert row_at(10.0, PERIOD, 9.5) == 0


def test_latency_compensated_selection_and_staleness() -> None:
    s = ChunkScheduler(action_dim=2, execute_rows=25)
    assert s.select(0.0) is None  # nothing yet: hold
    assert s.offer(chunk(stamp=1.00, seq=0)) is None
    # Computed from the observation at t = 1.00, arriving 71 ms later: rows 0..2 are overdue.
    first = s.select(1.071)
    assert first is not None and (first.row, first.seq) == (3, 0)
    assert s.select(1.06).row == 2
    assert s.select(1.50).row == 24  # last executable row
    assert s.rows_left(1.50) == 1
    assert s.select(1.51) is None  # row 25 of 25 executable: stale -> hold
    assert s.rows_left(1.51) == 0


def test_newer_chunk_replaces_older_and_out_of_order_is_refused() -> None:
    s = ChunkScheduler(action_dim=2, execute_rows=25)
    assert s.offer(chunk(1.00, seq=0)) is None
    assert s.offer(chunk(1.30, seq=1)) is None
    row = s.select(1.40)
    assert (row.seq, row.row, row.checkpoint_id) == (1, 4, "ckpt-1")
    assert row.action.tolist() == [4.0, 1.0]
    why = s.offer(chunk(1.20, seq=2))  # computed from an older observation
    assert why is not None and "not newer" in why
    assert s.select(1.40).seq == 1


def test_bad_chunks_are_refused() -> None:
    s = ChunkScheduler(action_dim=2, execute_rows=25)
    assert "action_dim" in s.offer(chunk(1.0, 0, dim=1))
    assert "horizon" in s.offer(chunk(1.0, 0, horizon=10))
    bad = np.zeros((50, 2), np.float32)
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        Chunk(bad, 1.0, PERIOD, "c", 3)
    with pytest.raises(ValueError, match="expected horizon"):
        Chunk.from_flat(np.zeros(99), 50, 2, 1.0, PERIOD, "c", 0)
    flat = np.arange(100, dtype=np.float32)
    c = Chunk.from_flat(flat, 50, 2, 1.0, PERIOD, "c", 0)
    assert c.actions[3].tolist() == [6.0, 7.0]  # row-major


def test_inference_trigger_row() -> None:
    # 25 rows, 20 ms period, 90 ms inference: lead = ceil(4.5) + 2 = 7 rows -> start at row 18.
    assert inference_trigger_row(25, 0.02, 0.09) == 18
    assert inference_trigger_row(25, 0.02, 1.0) == 0

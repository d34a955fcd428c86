"""Chunk step selection: latency compensation, staleness, ordering, bad chunks; the episode's
first chunk, request timing under injected latency, and the seam modes on hand-computed
chunks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from habc_policy.core.chunking import (
    Chunk,
    ChunkScheduler,
    RequestTimer,
    inference_trigger_row,
    row_at,
    rtc_inpaint,
    rtc_prefix_weights,
    temporal_ensemble,
)

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
    assert s.select(1.50).row == 24  # last row while the next chunk is on time
    assert not s.select(1.50).overrun
    assert s.rows_left(1.50) == 1
    # The next chunk is late: rows 25..34 (10 overrun rows) run on, flagged; row 35 is stale.
    late = s.select(1.51)
    assert late is not None and (late.row, late.overrun) == (25, True)
    assert s.rows_left(1.51) == 0  # the request timing still aims at execute_rows
    assert s.select(1.70).row == 34
    assert s.select(1.71) is None  # stale -> hold
    # No overrun: stale right after execute_rows.
    s0 = ChunkScheduler(action_dim=2, execute_rows=25, overrun_rows=0)
    s0.offer(chunk(stamp=1.00, seq=0))
    assert s0.select(1.50).row == 24 and s0.select(1.51) is None
    # Never past the chunk's horizon (30 rows: 25 + 5 at most).
    s30 = ChunkScheduler(action_dim=2, execute_rows=25)
    s30.offer(chunk(stamp=1.00, seq=0, horizon=30))
    assert s30.select(1.60).row == 29 and s30.select(1.61) is None
    with pytest.raises(ValueError, match="overrun_rows"):
        ChunkScheduler(action_dim=2, execute_rows=25, overrun_rows=-1)


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


def test_first_chunk_of_an_episode_runs_from_row_0_at_the_first_tick() -> None:
    s = ChunkScheduler(action_dim=2, execute_rows=25)
    assert s.offer(chunk(9.00, seq=0)) is None  # the previous episode's chunk
    s.begin_episode(10.0)
    assert s.chunk is None  # forgotten
    why = s.offer(chunk(9.99, seq=1))  # computed from an observation before the start
    assert why is not None and "before the episode started" in why
    assert s.select(10.02) is None  # no chunk yet: the episode's clock has not started
    # Computed from the observation at 10.01, it arrives 80 ms later: rows 0..3 would be
    # overdue, but the arm held still meanwhile, so the first tick runs row 0.
    assert s.offer(chunk(10.01, seq=2), now_s=10.09) is None
    assert s.rows_left(10.09) == 25
    first = s.select(10.10)
    assert (first.seq, first.row) == (2, 0)
    assert first.action.tolist() == [0.0, 2.0]
    assert s.select(10.12).row == 1
    assert s.select(10.58).row == 24  # 24 periods after the first tick: the last row
    assert s.select(10.60).overrun  # then the overrun rows (the next chunk is late)
    # A later chunk of the same episode is latency-compensated as usual.
    assert s.offer(chunk(10.40, seq=3), now_s=10.47) is None
    assert s.select(10.47).row == 3  # 3.5 periods after its observation: ceil(3.25) - 1


def test_request_timer_leads_by_the_p99_latency_plus_transport_and_adapts() -> None:
    t = RequestTimer(
        execute_rows=25, period_s=PERIOD, margin_rows=2, max_margin_rows=4, relax_after=3
    )
    # Nothing measured: 0.1 s assumed -> lead ceil(5) + 2 = 7 rows -> start at row 18.
    assert (t.lead_rows(), t.trigger_row()) == (7, 18)
    for latency in [0.05] * 9 + [0.15]:  # injected: one slow chunk in ten
        t.add_inference(latency)
    for latency in [0.004] * 10:
        t.add_transport(latency)
    # q99 of the inference latencies: 0.05 + 0.91 * (0.15 - 0.05) = 0.141 s; + 0.004 s transport
    # = 0.145 s = 7.25 rows -> 8 rows + margin 2 = 10 -> start at row 15.
    assert t.latency_s == pytest.approx(0.145)
    assert (t.lead_rows(), t.trigger_row()) == (10, 15)
    # The running chunk (observation at 1.0) has its last executable row due at 1.5 s.
    assert t.deadline_s(1.0) == pytest.approx(1.5)
    assert t.late(1.497, 1.0)  # arrives 1.501 s (+ 4 ms transport): late, one more row
    assert (t.margin, t.trigger_row(), t.late_chunks) == (3, 14, 1)
    for _ in range(5):
        t.late(1.6, 1.0)
    assert t.margin == 4  # never past max_margin_rows
    for _ in range(3):
        assert not t.late(1.49, 1.0)
    assert t.margin == 3  # three timely chunks in a row take one back
    for _ in range(6):
        t.late(1.49, 1.0)
    assert t.margin == 2  # ... never below margin_rows
    t.add_inference(2.0)  # slower than the whole chunk: start right away
    assert t.trigger_row() == 0


def test_requests_timed_by_the_timer_never_leave_a_tick_without_a_row() -> None:
    """Server and arbiter on one simulated clock: the server starts each chunk at the timer's
    trigger row from the newest observation; inference takes an injected latency (60 ms, a slow
    180 ms one in eight, as under the learner's load) that the timer learns on arrival. The
    server has served before the episode (its window holds such latencies): no tick of the
    episode goes without a row, no chunk is late."""
    rng = np.random.default_rng(0)

    def latency() -> float:
        return 0.18 if rng.random() < 1 / 8 else 0.06

    timer = RequestTimer(execute_rows=25, period_s=PERIOD, margin_rows=2)
    for _ in range(40):
        timer.add_inference(latency())
    s = ChunkScheduler(action_dim=2, execute_rows=25)
    s.begin_episode(0.0)
    seq, first = 0, latency()
    in_flight = (0.005 + first, chunk(0.005, seq), first)
    ticks = holds = 0
    for k in range(2000):
        now = PERIOD * (k + 1)
        if in_flight is not None and in_flight[0] <= now:
            arrival, new, took = in_flight
            running = s.chunk
            assert s.offer(new, now_s=arrival) is None
            timer.add_inference(took)
            if running is not None:
                timer.late(arrival, running.stamp_s)
            in_flight = None
        row = s.select(now)
        if ticks or row is not None:  # the episode's clock runs from the first row
            ticks += 1
            holds += row is None
        due = s.chunk is not None and now >= s.chunk.stamp_s + timer.trigger_row() * PERIOD
        if in_flight is None and due:
            took = latency()
            seq += 1
            in_flight = (now + took, chunk(now - 0.005, seq), took)
    assert ticks > 1900 and seq > 60  # the chunks did roll over
    assert holds == 0 and timer.late_chunks == 0
    # The same latencies with the lead from a mean latency (no p99, no transport) do hold.
    assert inference_trigger_row(25, PERIOD, 0.075, margin_rows=0) > timer.trigger_row()


def test_temporal_ensemble_weights_the_oldest_chunk_most() -> None:
    # ACT: w_i = exp(-m i), i = 0 the oldest; m = ln 2 -> weights 1, 1/2, 1/4.
    rows = np.array([[4.0, 0.0], [2.0, 1.0], [1.0, 8.0]])
    expected = (rows[0] + 0.5 * rows[1] + 0.25 * rows[2]) / 1.75
    assert temporal_ensemble(rows, math.log(2)) == pytest.approx(expected)
    assert temporal_ensemble(rows[:1], 0.01) == pytest.approx(rows[0])


def test_ensemble_seam_averages_every_chunk_covering_the_tick() -> None:
    s = ChunkScheduler(
        action_dim=2, execute_rows=5, seam="ensemble", ensemble_decay=math.log(2), overrun_rows=0
    )
    assert s.offer(chunk(1.00, seq=0, horizon=6)) is None
    assert s.offer(chunk(1.04, seq=1, horizon=6)) is None
    # At 1.10 chunk 0 is at row 4 ([4, 0]), chunk 1 at row 2 ([2, 1]): weights 1 and 1/2.
    row = s.select(1.10)
    assert (row.seq, row.row) == (1, 2)
    assert row.action == pytest.approx([(4 + 0.5 * 2) / 1.5, 0.5 / 1.5])
    # At 1.14 chunk 0 has no row 6 (horizon 6): only chunk 1's row 4 is left.
    assert s.select(1.14).action.tolist() == [4.0, 1.0]
    assert s.select(1.16) is None  # chunk 1 past its 5 executable rows: stale


def test_rtc_prefix_weights_by_hand() -> None:
    # d = 1 overdue row, H' = 4 rows of the running chunk left: W_0 = 1, then
    # c_j = (4 - j) / 4 -> c (e^c - 1) / (e - 1), then 0.
    w = rtc_prefix_weights(horizon=6, delay_rows=1, overlap_rows=4)
    assert w == pytest.approx([1.0, 0.487551, 0.188770, 0.041324, 0.0, 0.0], abs=1e-6)
    assert rtc_prefix_weights(4, 6, 3).tolist() == [1.0, 1.0, 1.0, 0.0]  # all overdue: frozen
    assert rtc_prefix_weights(3, 0, 0).tolist() == [0.0, 0.0, 0.0]  # nothing to inpaint from


def test_rtc_seam_inpaints_the_new_chunk_from_the_rows_still_to_run() -> None:
    s = ChunkScheduler(action_dim=2, execute_rows=4, seam="rtc")
    assert s.offer(chunk(1.00, seq=0, horizon=6)) is None
    # Chunk 1 is 2 rows younger (its row j runs at chunk 0's row j + 2) and arrives at 1.08,
    # one row overdue: its rows 0..3 are inpainted from chunk 0's rows 2..5.
    assert s.offer(chunk(1.04, seq=1, horizon=6), now_s=1.08) is None
    w = [1.0, 0.487551, 0.188770, 0.041324]
    col0 = [w[j] * (j + 2) + (1 - w[j]) * j for j in range(4)] + [4.0, 5.0]
    col1 = [1 - w[j] for j in range(4)] + [1.0, 1.0]
    assert s.chunk.actions[:, 0] == pytest.approx(col0, abs=1e-5)
    assert s.chunk.actions[:, 1] == pytest.approx(col1, abs=1e-5)
    row = s.select(1.08)
    assert (row.seq, row.row) == (1, 1)
    assert row.action == pytest.approx([1.975102, 0.512449], abs=1e-5)
    direct = rtc_inpaint(chunk(0, 1, horizon=6).actions, chunk(0, 0, horizon=6).actions[2:], 1)
    assert direct == pytest.approx(s.chunk.actions, abs=1e-6)


def test_rtc_does_not_inpaint_the_dims_of_an_arm_the_operator_drives() -> None:
    # As above, but dimension 1 belongs to an arm under the operator's control: chunk 0's
    # plan for it never ran, so chunk 1 keeps its own rows there (W = 0 on that column).
    s = ChunkScheduler(action_dim=2, execute_rows=4, seam="rtc")
    assert s.offer(chunk(1.00, seq=0, horizon=6)) is None
    taken = np.array([False, True])
    assert s.offer(chunk(1.04, seq=1, horizon=6), now_s=1.08, fresh_dims=taken) is None
    w = [1.0, 0.487551, 0.188770, 0.041324]
    col0 = [w[j] * (j + 2) + (1 - w[j]) * j for j in range(4)] + [4.0, 5.0]
    assert s.chunk.actions[:, 0] == pytest.approx(col0, abs=1e-5)
    assert s.chunk.actions[:, 1].tolist() == [1.0] * 6  # chunk 1's own rows
    # No dimension taken: the same as no mask at all.
    s2 = ChunkScheduler(action_dim=2, execute_rows=4, seam="rtc")
    s2.offer(chunk(1.00, seq=0, horizon=6))
    s2.offer(chunk(1.04, seq=1, horizon=6), now_s=1.08, fresh_dims=np.zeros(2, dtype=bool))
    assert s2.chunk.actions[:, 1] == pytest.approx([1 - x for x in w] + [1.0, 1.0], abs=1e-5)
    with pytest.raises(ValueError, match="fresh_dims has 3 entries"):
        s2.offer(chunk(1.06, seq=2, horizon=6), fresh_dims=np.ones(3, dtype=bool))


def test_ensemble_takes_only_the_newest_chunk_on_the_dims_of_an_arm_the_operator_drives() -> None:
    s = ChunkScheduler(
        action_dim=2, execute_rows=5, seam="ensemble", ensemble_decay=math.log(2), overrun_rows=0
    )
    assert s.offer(chunk(1.00, seq=0, horizon=6)) is None
    assert s.offer(chunk(1.04, seq=1, horizon=6), fresh_dims=np.array([False, True])) is None
    # At 1.10: dimension 0 averages chunk 0's row 4 and chunk 1's row 2 (weights 1, 1/2);
    # dimension 1 is chunk 1's value (1) from both, as chunk 0's plan there was overwritten.
    row = s.select(1.10)
    assert row.action == pytest.approx([(4 + 0.5 * 2) / 1.5, 1.0])


def test_switch_seam_takes_the_new_chunk_as_it_is_and_bad_modes_are_refused() -> None:
    s = ChunkScheduler(action_dim=2, execute_rows=4)
    assert s.offer(chunk(1.00, seq=0, horizon=6)) is None
    assert s.offer(chunk(1.04, seq=1, horizon=6), now_s=1.08) is None
    assert s.select(1.08).action.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="seam must be one of"):
        ChunkScheduler(action_dim=2, execute_rows=4, seam="blend")

"""The chunk-level safety step on hand-computed rows: jump refusal, velocity and acceleration
clamps against the last executed actions, counts."""

from __future__ import annotations

import numpy as np
import pytest

from habc_policy.core.chunk_safety import (
    LIMIT_ACCELERATION,
    LIMIT_JUMP,
    LIMIT_VELOCITY,
    ChunkSafety,
    ChunkSafetyConfig,
)


def guard() -> ChunkSafety:
    # Δt = 0.02 s: per tick at most V·Δt = [0.02, 0.2] and a step change A·Δt² = [0.02, 0.4].
    return ChunkSafety(
        ChunkSafetyConfig(
            action_dim=2,
            max_jump=[0.5],
            max_velocity=[1.0, 10.0],
            max_acceleration=[50.0, 1000.0],
            period_s=0.02,
        )
    )


def test_rows_are_bounded_by_hand() -> None:
    g = guard()
    g.reset(np.array([0.0, 0.0]))
    # Step [0.01, 0.1]: inside every limit (no step before it: no acceleration check).
    ok = g.check(np.array([0.01, 0.1]))
    assert ok.action.tolist() == pytest.approx([0.01, 0.1]) and not ok.clamped
    g.executed(ok.action)
    # Step [0.04, 0.05]: dim 0 over 0.02 per tick -> 0.02; the step change from [0.01, 0.1]
    # stays within [0.02, 0.4].
    fast = g.check(np.array([0.05, 0.15]))
    assert fast.limits == (LIMIT_VELOCITY,) and fast.clamped
    assert fast.action == pytest.approx([0.03, 0.15])
    g.executed(fast.action)
    # Step [-0.01, 0]: the last step was [0.02, 0.05], so dim 0 may change by 0.02 at most:
    # to 0.0 (the arm stops, it does not reverse within one tick).
    sharp = g.check(np.array([0.02, 0.15]))
    assert sharp.limits == (LIMIT_ACCELERATION,)
    assert sharp.action == pytest.approx([0.03, 0.15], abs=1e-9)
    # 0.57 rad away in dim 0 (> 0.5): no continuation of the motion, refused.
    jump = g.check(np.array([0.6, 0.15]))
    assert jump.action is None and jump.limits == (LIMIT_JUMP,) and not jump.clamped
    assert g.last_refusal == (0, pytest.approx(0.57))  # which dimension, and how far
    assert g.counts == {
        LIMIT_JUMP: 1,
        LIMIT_VELOCITY: 1,
        LIMIT_ACCELERATION: 1,
        "rows": 4,
        "chunks": 0,
        "dropped_chunks": 0,
    }


def test_velocity_wins_over_acceleration_and_holds_reset_the_motion() -> None:
    g = guard()
    g.reset(np.array([0.0, 0.0]))
    g.executed(np.array([0.0, 0.0]))
    g.executed(np.array([0.0, 0.3]))  # a human step of 0.3 in dim 1 (over the 0.2 limit)
    # Wanted +0.3 again; acceleration allows [−0.1, 0.7], velocity 0.2: velocity wins.
    row = g.check(np.array([0.0, 0.6]))
    assert row.action == pytest.approx([0.0, 0.5]) and row.limits == (LIMIT_VELOCITY,)


def test_unknown_position_and_bad_config() -> None:
    g = guard()
    row = g.check(np.array([3.0, 3.0]))  # nothing executed yet: nothing to bound against
    assert row.action.tolist() == [3.0, 3.0] and not row.clamped
    with pytest.raises(ValueError, match="row has shape"):
        g.check(np.zeros(3))
    with pytest.raises(ValueError, match="max_velocity has 3 entries"):
        ChunkSafetyConfig(2, [1.0], [1.0, 1.0, 1.0], [1.0], 0.02)
    with pytest.raises(ValueError, match="max_jump must be finite and > 0"):
        ChunkSafetyConfig(2, [0.0], [1.0], [1.0], 0.02)


def test_only_the_policy_arms_dimensions_are_bounded() -> None:
    from habc_policy.core.authority import ArbiterConfig, AuthorityArbiter, JoyState

    arbiter = AuthorityArbiter(ArbiterConfig(arm_slices=((0, 1), (1, 2))))
    assert arbiter.policy_dims().tolist() == [True, True]
    # The deadman (4) with the first arm's takeover button (6): arm 0 is the operator's.
    arbiter.step(
        0.0,
        joy=JoyState(0.0, [0, 0, 0, 0, 1, 0, 1, 0]),
        teleop=None,
        policy_row=None,
        estop=False,
        measured_position=np.zeros(2),
    )
    mask = arbiter.policy_dims()
    assert mask.tolist() == [False, True]
    g = guard()
    g.reset(np.array([0.0, 0.0]))
    # Arm 0's 0.9 rad is not the policy's to bound; arm 1's 0.3 step is clamped to 0.2.
    row = g.check(np.array([0.9, 0.3]), mask)
    assert row.action == pytest.approx([0.9, 0.2]) and row.limits == (LIMIT_VELOCITY,)
    assert g.check(np.array([0.9, 0.3]), np.zeros(2, bool)).action.tolist() == pytest.approx(
        [0.9, 0.3]
    )


def test_a_new_chunk_too_far_from_the_arm_is_not_admitted() -> None:
    from habc_policy.core.chunking import Chunk, ChunkScheduler

    g = guard()
    assert g.admits(np.array([9.0, 9.0]))  # nothing executed yet
    g.executed(np.array([0.0, 0.0]))
    s = ChunkScheduler(action_dim=2, execute_rows=4)
    rows = np.stack([np.linspace(0.2, 0.8, 6), np.zeros(6)], axis=1).astype(np.float32)
    chunk = Chunk(rows, 1.00, 0.02, "c", 0)
    # Offered at 1.06 its row 2 (0.44) would run first: within the 0.5 jump limit.
    assert s.first_row(chunk, 1.06)[0] == pytest.approx(0.44)
    assert g.admits(s.first_row(chunk, 1.06))
    # At 1.10 its row 4 (0.68) would: too far from 0.0, the chunk is not admitted.
    assert not g.admits(s.first_row(chunk, 1.10))
    assert g.last_refusal == (0, pytest.approx(0.68))
    # Only the policy's dimensions count.
    assert g.admits(s.first_row(chunk, 1.10), np.array([False, True]))
    assert g.counts["chunks"] == 4 and g.counts["dropped_chunks"] == 1
    # An episode's first chunk runs from row 0 (0.2): admitted.
    s.begin_episode(0.5)
    assert s.first_row(chunk, 1.10)[0] == pytest.approx(0.2)

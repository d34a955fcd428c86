"""The driver's pure safety layer: limits, workspace box, velocity, hold on silence, e-stop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from arx_x5_driver.core.safety import (
    REASON_BAD_SHAPE,
    REASON_ESTOP,
    REASON_FK_FAILED,
    REASON_JOINT_LIMIT,
    REASON_NO_COMMAND,
    REASON_NON_FINITE,
    REASON_VELOCITY,
    REASON_WORKSPACE,
    PersistentLatch,
    SafetyConfig,
    SafetyLayer,
    WorkspaceBox,
    per_joint_velocity,
    uniform_velocity,
)

ARMS = (("left", 0, 3), ("right", 3, 6))
NAMES = ("l0", "l1", "lg", "r0", "r1", "rg")
PERIOD = 0.02


def planar_fk(action: np.ndarray) -> dict[str, np.ndarray]:
    """Toy FK: each arm's end effector at (j0, j1, 0) + its base offset."""
    return {
        "left": np.array([action[0] - 1.0, action[1], 0.0]),
        "right": np.array([action[3] + 1.0, action[4], 0.0]),
    }


def make(
    velocity_mode: str = "clamp", workspace: bool = True, vmax: float = 5.0, fk=planar_fk
) -> SafetyLayer:
    boxes = (
        {
            "left": WorkspaceBox((-2.0, -0.5, -1.0), (0.0, 0.5, 1.0)),
            "right": WorkspaceBox((0.0, -0.5, -1.0), (2.0, 0.5, 1.0)),
        }
        if workspace
        else {}
    )
    config = SafetyConfig(
        action_names=NAMES,
        arm_slices=ARMS,
        low=(-1.0, -1.0, 0.0, -1.0, -1.0, 0.0),
        high=(1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
        max_velocity=uniform_velocity(ARMS, joint=vmax, gripper=10.0),
        control_period_s=PERIOD,
        velocity_mode=velocity_mode,
        workspace=boxes,
    )
    layer = SafetyLayer(config, fk if workspace else None)
    layer.start(np.zeros(6), now_s=0.0)
    return layer


def test_in_limit_command_is_executed() -> None:
    s = make()
    a = np.array([0.05, -0.05, 0.1, 0.02, 0.0, 0.2])
    v = s.command(a, 0.02)
    assert v.accepted and v.reason == ""
    np.testing.assert_allclose(v.target, a)
    np.testing.assert_allclose(s.target, a)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_is_rejected_and_holds(bad: float) -> None:
    s = make()
    s.command(np.full(6, 0.05), 0.02)
    a = np.full(6, 0.05)
    a[4] = bad
    v = s.command(a, 0.04)
    assert v.hold and v.reason == REASON_NON_FINITE and "r1" in v.detail
    np.testing.assert_allclose(v.target, np.full(6, 0.05))
    assert s.counts["rejected"] == 1 and "non_finite" in s.last_rejection


def test_wrong_shape_is_rejected() -> None:
    s = make()
    v = s.command(np.zeros(5), 0.02)
    assert v.hold and v.reason == REASON_BAD_SHAPE
    np.testing.assert_allclose(v.target, np.zeros(6))


def test_out_of_joint_limit_is_rejected_not_clamped() -> None:
    s = make()
    v = s.command(np.array([0.0, 0.0, 1.05, 0.0, 0.0, 0.0]), 0.02)
    assert v.hold and v.reason == REASON_JOINT_LIMIT and "lg=1.0500" in v.detail
    np.testing.assert_allclose(v.target, np.zeros(6))


def test_workspace_box_violation_is_rejected() -> None:
    s = make(vmax=100.0)
    # left end effector at x = 0.5 - 1.0 = -0.5: inside; right at x = -0.5 + 1 = 0.5: inside
    assert s.command(np.array([0.5, 0.0, 0.0, -0.5, 0.0, 0.0]), 0.02).accepted
    # left at x = 0.9 - 1 = -0.1 inside, but y = 0.6 > 0.5 is outside its box
    v = s.command(np.array([0.9, 0.6, 0.0, -0.5, 0.0, 0.0]), 0.04)
    assert v.hold and v.reason == REASON_WORKSPACE and "left" in v.detail
    np.testing.assert_allclose(v.target, [0.5, 0.0, 0.0, -0.5, 0.0, 0.0])


def test_fk_failure_holds() -> None:
    def broken(action: np.ndarray) -> dict[str, np.ndarray]:
        raise RuntimeError("solver down")

    s = make(fk=broken)
    v = s.command(np.full(6, 0.01), 0.02)
    assert v.hold and v.reason == REASON_FK_FAILED and "solver down" in v.detail


def test_workspace_needs_fk() -> None:
    config = make().config
    with pytest.raises(ValueError, match="forward kinematics"):
        SafetyLayer(config, None)


def test_velocity_clamp_limits_every_step() -> None:
    s = make(vmax=5.0)  # 0.1 rad per 20 ms tick
    target = np.array([0.5, -0.5, 0.0, 0.0, 0.0, 1.0])
    prev = s.target
    for k in range(1, 8):
        v = s.command(target, k * PERIOD)
        assert v.accepted
        step = np.abs(v.target - prev)
        assert np.all(step[[0, 1, 3, 4]] <= 0.1 + 1e-12)
        assert step[5] <= 0.2 + 1e-12  # gripper: 10 /s
        prev = v.target
    np.testing.assert_allclose(s.target, target)  # reached after enough ticks
    assert s.counts["clamped"] >= 4


def test_velocity_reject_mode_holds() -> None:
    s = make(velocity_mode="reject", vmax=5.0)
    v = s.command(np.array([0.5, 0.0, 0.0, 0.0, 0.0, 0.0]), PERIOD)
    assert v.hold and v.reason == REASON_VELOCITY
    np.testing.assert_allclose(v.target, np.zeros(6))


def test_clamped_target_is_checked_against_the_box() -> None:
    s = make(vmax=50.0)  # 1 rad per tick
    # Request y = 0.9 (outside); the clamp does not bring it inside: rejected, not moved.
    v = s.command(np.array([0.0, 0.9, 0.0, 0.0, 0.0, 0.0]), PERIOD)
    assert v.hold and v.reason == REASON_WORKSPACE


def test_hold_after_two_silent_ticks() -> None:
    s = make()
    s.command(np.full(6, 0.05), 1.0)
    assert s.tick(1.0 + PERIOD) is None  # one tick without a command: still streaming
    v = s.tick(1.0 + 2 * PERIOD)
    assert v is not None and v.hold and v.reason == REASON_NO_COMMAND
    np.testing.assert_allclose(v.target, np.full(6, 0.05))
    # every further silent tick holds the same target
    v2 = s.tick(1.0 + 3 * PERIOD)
    assert v2 is not None and np.array_equal(v2.target, v.target)
    # a command resumes
    assert s.command(np.full(6, 0.06), 1.0 + 4 * PERIOD).accepted
    assert s.tick(1.0 + 4.5 * PERIOD) is None


def test_estop_latches_until_reset() -> None:
    s = make()
    s.command(np.full(6, 0.05), 0.02)
    s.estop("button")
    assert s.estop_latched
    for k in range(3, 10):
        v = s.command(np.full(6, 0.06), k * PERIOD)
        assert v.hold and v.reason == REASON_ESTOP
        np.testing.assert_allclose(v.target, np.full(6, 0.05))
    v = s.tick(20 * PERIOD)
    assert v is not None and v.reason == REASON_ESTOP
    s.estop("again")  # a second latch keeps the first reason
    assert s.estop_reason == "button"
    assert s.reset_estop() is True
    assert not s.estop_latched
    assert s.command(np.full(6, 0.06), 21 * PERIOD).accepted
    assert s.reset_estop() is False


def test_start_rejects_non_finite_and_holds_exactly_where_measured() -> None:
    s = make()
    with pytest.raises(ValueError, match="not finite"):
        s.start(np.array([0.0, math.nan, 0, 0, 0, 0]), 0.0)
    # Outside the limits: the hold target is still the measurement (clipping it would move
    # the arm on activation), and the silent-tick hold sends exactly that.
    measured = np.array([2.0, 0.0, 0.5, 0.0, 0.0, -1.0])
    s.start(measured, 0.0)
    np.testing.assert_array_equal(s.target, measured)
    v = s.tick(2 * PERIOD)
    assert v is not None and v.hold
    np.testing.assert_array_equal(v.target, measured)


def test_command_before_start_raises() -> None:
    config = make(workspace=False).config
    s = SafetyLayer(config)
    with pytest.raises(RuntimeError, match="start"):
        s.command(np.zeros(6), 0.0)
    assert s.tick(0.0) is None


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("max_velocity", (0.0,) * 6, "max_velocity"),
        ("velocity_mode", "ignore", "velocity_mode"),
        ("hold_after_ticks", 0, "hold_after_ticks"),
        ("low", (2.0,) * 6, "empty"),
        ("workspace", {"middle": WorkspaceBox((0, 0, 0), (1, 1, 1))}, "unknown arms"),
    ],
)
def test_config_validation_names_the_bad_value(field: str, value: object, match: str) -> None:
    import dataclasses

    config = make(workspace=False).config
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(config, **{field: value})


def test_workspace_box_validation() -> None:
    with pytest.raises(ValueError, match="below"):
        WorkspaceBox((0.0, 0.0, 1.0), (1.0, 1.0, 0.5))
    box = WorkspaceBox((0, 0, 0), (1, 1, 1))
    assert box.contains([0.5, 0.5, 0.5])
    assert not box.contains([0.5, 0.5, math.nan])
    assert not box.contains([0.5, 0.5])


def test_per_joint_velocity_is_the_x5_layout() -> None:
    from arx_x5_driver.core.config import X5_JOINT_VELOCITY_MAX

    arms = (("left", 0, 7), ("right", 7, 14))
    v = per_joint_velocity(arms, X5_JOINT_VELOCITY_MAX, 1.0)
    assert v == (5.0, 5.0, 5.5, 5.5, 5.0, 5.0, 1.0) * 2
    with pytest.raises(ValueError, match="6 joint velocity limits for arm 'left' with 5"):
        per_joint_velocity((("left", 0, 6),), X5_JOINT_VELOCITY_MAX, 1.0)


def test_x5_limits_reject_a_step_of_one_tick_at_5_5_rad_s() -> None:
    """At 50 Hz the X5's limits allow 0.1 rad (0.11 on joints 3, 4) per tick; more holds."""
    from arx_x5_driver.core.config import X5_JOINT_VELOCITY_MAX

    arms = (("left", 0, 7),)
    names = (*tuple(f"j{i}" for i in range(6)), "g")
    config = SafetyConfig(
        action_names=names,
        arm_slices=arms,
        low=(-3.0,) * 6 + (0.0,),
        high=(3.0,) * 6 + (1.0,),
        max_velocity=per_joint_velocity(arms, X5_JOINT_VELOCITY_MAX, 1.0),
        control_period_s=0.02,
        velocity_mode="reject",
    )
    s = SafetyLayer(config)
    s.start(np.zeros(7), 0.0)
    ok = np.array([0.1, -0.1, 0.11, -0.11, 0.1, 0.1, 0.02])
    assert s.command(ok, 0.02).accepted
    too_fast = ok.copy()
    too_fast[0] += 0.1 + 1e-6
    v = s.command(too_fast, 0.04)
    assert v.hold and v.reason == REASON_VELOCITY and "j0" in v.detail
    np.testing.assert_array_equal(v.target, ok)


def test_persistent_latch_survives_a_new_instance(tmp_path) -> None:
    path = tmp_path / "run" / "estop.latch"
    latch = PersistentLatch(path)
    assert latch.load() == ""
    latch.set("estop topic")
    assert PersistentLatch(path).load() == "estop topic"  # a restarted driver reads it
    assert not list(path.parent.glob("*.tmp"))  # written atomically, nothing left behind
    PersistentLatch(path).clear()
    assert PersistentLatch(path).load() == "" and not path.exists()
    path.write_text("")  # an empty (e.g. truncated) file still means latched
    assert PersistentLatch(path).load()
    assert PersistentLatch("").load() == ""  # memory only

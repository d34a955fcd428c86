"""The joystick end-effector jog: DLS steps move the end effector along the stick."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from habc_policy.core.jog import EndEffectorJog, JogConfig, dls_step, position_jacobian

L1, L2 = 0.3, 0.25


def planar_fk(q: np.ndarray) -> np.ndarray:
    """A 3-joint arm: yaw q0, then a planar 2-link arm (q1, q2) in the vertical plane."""
    r = L1 * np.cos(q[1]) + L2 * np.cos(q[1] + q[2])
    z = L1 * np.sin(q[1]) + L2 * np.sin(q[1] + q[2])
    return np.array([r * np.cos(q[0]), r * np.sin(q[0]), z])


def make() -> EndEffectorJog:
    cfg = JogConfig(
        arm_slices=((0, 4), (4, 8)),
        low=(-3.0, -3.0, -3.0, 0.0) * 2,
        high=(3.0, 3.0, 3.0, 1.0) * 2,
        linear_speed=0.1,
        gripper_speed=1.0,
        control_period_s=0.02,
    )
    return EndEffectorJog(cfg, {0: planar_fk, 1: planar_fk})


START = np.array([0.0, 0.3, -0.8, 0.5, 0.2, 0.4, -0.9, 0.5])


def test_jacobian_matches_analytic_direction() -> None:
    q = np.array([0.0, 0.3, -0.8])
    jac = position_jacobian(planar_fk, q)
    dq = np.array([1e-4, -2e-4, 3e-4])
    np.testing.assert_allclose(jac @ dq, planar_fk(q + dq) - planar_fk(q), atol=1e-7)


def test_stick_moves_only_the_jogged_arm_along_the_stick() -> None:
    jog = make()
    jog.reset(START)
    p0_left, p0_right = planar_fk(START[0:3]), planar_fk(START[4:7])
    for _ in range(25):  # 0.5 s at full -x (toward the base): 5 cm
        a = jog.step([True, False], [-1.0, 0.0, 0.0], gripper=-1.0)
    moved = planar_fk(a[0:3]) - p0_left
    assert moved[0] == pytest.approx(-0.05, abs=0.002)
    assert abs(moved[1]) < 0.005 and abs(moved[2]) < 0.005
    np.testing.assert_allclose(a[4:8], START[4:8])  # the other arm never moves
    np.testing.assert_allclose(planar_fk(a[4:7]), p0_right)
    assert a[3] == pytest.approx(0.0)  # gripper closed at 1 /s from 0.5 over 0.5 s


def test_reference_does_not_wind_up_at_a_joint_limit() -> None:
    cfg = make().config
    low = (-0.2, -3.0, -3.0, 0.0) * 2  # yaw limited to +-0.2 rad
    high = (0.2, 3.0, 3.0, 1.0) * 2
    jog = EndEffectorJog(dataclasses.replace(cfg, low=low, high=high), {0: planar_fk, 1: planar_fk})
    jog.reset(START)
    for _ in range(100):  # 2 s at +y: the yaw limit stops the arm after ~10 cm
        a = jog.step([True, False], [0.0, 1.0, 0.0])
    assert a[0] == pytest.approx(0.2)
    y_far = planar_fk(a[0:3])[1]
    for _ in range(2):  # reverse: back after at most one tick of lead (no 2 s of wind-up)
        a = jog.step([True, False], [0.0, -1.0, 0.0])
    assert planar_fk(a[0:3])[1] == pytest.approx(y_far - 0.002, abs=5e-4)


def test_released_stick_holds_and_deadzone() -> None:
    jog = make()
    jog.reset(START)
    a = jog.step([True, True], [0.01, -0.02, 0.0], gripper=0.03)
    np.testing.assert_allclose(a, START)


def test_requires_reset_and_validates() -> None:
    jog = make()
    with pytest.raises(RuntimeError, match="reset"):
        jog.step([True, True], [0, 0, 0])
    with pytest.raises(ValueError, match="finite"):
        jog.reset(np.full(8, np.nan))
    with pytest.raises(ValueError, match="forward kinematics"):
        EndEffectorJog(make().config, {0: planar_fk})
    with pytest.raises(ValueError, match="linear_speed"):
        JogConfig(arm_slices=((0, 4),), low=(0,) * 4, high=(1,) * 4, linear_speed=0.0)


def test_dls_step_is_damped_near_singularity() -> None:
    jac = np.array([[1.0, 0.0], [0.0, 1e-6], [0.0, 0.0]])
    dq = dls_step(jac, np.array([0.0, 0.01, 0.0]), damping=0.02)
    assert abs(dq[1]) < 0.01  # no blow-up along the singular direction

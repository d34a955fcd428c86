"""The simulated ALOHA backend: seeding, limits, rendering, failure handling."""

from __future__ import annotations

import numpy as np
import pytest

from arx_x5_driver.core.config import SimAlohaConfig
from arx_x5_driver.core.factory import make_backend, make_config
from arx_x5_driver.core.robot import ArmBackend
from arx_x5_driver.core.sim_aloha import SimAlohaBackend


def _rollout(robot: ArmBackend, seed: int, steps: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Fixed smooth joint commands; returns the joint and object trajectories."""
    obs = robot.reset(seed)
    start = obs.joint_positions.copy()
    qs, es = [obs.joint_positions], [obs.env_state]
    for t in range(steps):
        a = start.copy()
        a[0] += 0.3 * np.sin(t / 10)
        a[8] -= 0.2 * np.sin(t / 15)
        robot.command(a)
        obs = robot.observe()
        qs.append(obs.joint_positions)
        es.append(obs.env_state)
    return np.array(qs), np.array(es)


def test_configs_validate_with_did_you_mean() -> None:
    with pytest.raises(ValueError, match="did you mean 'transfer_cube'"):
        SimAlohaConfig(task="transfer_cub")
    with pytest.raises(ValueError, match="camera"):
        SimAlohaConfig(cameras=("top", "bottom"))
    with pytest.raises(ValueError, match="image_size"):
        SimAlohaConfig(image_size=(0, 10))
    with pytest.raises(ValueError, match="did you mean 'sim'"):
        make_config("sin")
    with pytest.raises(ValueError, match="fields"):
        make_config("sim", tsk="insertion")


@pytest.mark.sim
def test_same_seed_same_episode(transfer_robot: SimAlohaBackend) -> None:
    q1, e1 = _rollout(transfer_robot, seed=5)
    q2, e2 = _rollout(transfer_robot, seed=5)
    np.testing.assert_array_equal(q1, q2)
    np.testing.assert_array_equal(e1, e2)
    _, e3 = _rollout(transfer_robot, seed=6, steps=1)
    assert not np.allclose(e1[0, :3], e3[0, :3]), "another seed must move the cube"


@pytest.mark.sim
def test_spec_and_observation_layout(insertion_robot: SimAlohaBackend) -> None:
    spec = insertion_robot.spec
    assert spec.action_dim == 14
    assert spec.arm_slices == (("left", 0, 7), ("right", 7, 14))
    low, high = insertion_robot.joint_limits
    assert low[6] == 0.0 and high[6] == 1.0 and low[1] == pytest.approx(-1.85005)
    obs = insertion_robot.reset(3)
    assert obs.joint_positions.shape == (14,) and obs.joint_velocities.shape == (14,)
    assert obs.env_state is not None and obs.env_state.shape == (14,)  # peg + socket poses
    assert obs.images == {}
    assert insertion_robot.status().step == 0 and not insertion_robot.status().done


@pytest.mark.sim
def test_cameras_render_only_what_is_asked() -> None:
    cams = ("top", "left_wrist", "right_wrist")
    with make_backend("sim", task="transfer_cube", cameras=cams, image_size=(48, 64)) as robot:
        obs = robot.reset(0)
        assert set(obs.images) == set(cams)
        for img in obs.images.values():
            assert img.shape == (48, 64, 3) and img.dtype == np.uint8
            assert img.std() > 5, "a rendered image has structure, not a flat colour"
        assert not np.array_equal(obs.images["top"], obs.images["left_wrist"])
        big = robot.render("top", 480, 640)  # type: ignore[attr-defined]
        assert big.shape == (480, 640, 3) and big.dtype == np.uint8


@pytest.mark.sim
def test_nan_rejected_and_limits_clamped(transfer_robot: SimAlohaBackend) -> None:
    obs = transfer_robot.reset(1)
    bad = obs.joint_positions.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*left_forearm_roll"):
        transfer_robot.command(bad)
    assert transfer_robot.status().step == 0, "a refused command must not step the sim"
    with pytest.raises(ValueError, match="shape"):
        transfer_robot.command(np.zeros(13))
    far = obs.joint_positions.copy()
    far[1] = -5.0  # left shoulder beyond its -1.85 rad limit
    for _ in range(40):
        transfer_robot.command(far)
    q = transfer_robot.observe().joint_positions
    assert q[1] > -1.86, "the clamped command keeps the joint inside its range"
    with SimAlohaBackend(SimAlohaConfig(out_of_limits="raise")) as strict:
        o = strict.reset(0)
        a = o.joint_positions.copy()
        a[6] = 1.5
        with pytest.raises(ValueError, match=r"left_gripper=1\.5"):
            strict.command(a)


@pytest.mark.sim
def test_physics_error_is_a_failure_not_a_crash(
    transfer_robot: SimAlohaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dm_control.rl.control import PhysicsError

    obs = transfer_robot.reset(2)
    env = transfer_robot._env

    def diverge(action: np.ndarray) -> None:
        raise PhysicsError("Physics state is invalid. Warning(s) raised: mjWARN_BADQACC")

    monkeypatch.setattr(env, "step", diverge)
    transfer_robot.command(obs.joint_positions)
    status = transfer_robot.status()
    assert status.done and status.failure == "physics_error" and status.success is False
    with pytest.raises(RuntimeError, match="physics_error"):
        transfer_robot.command(obs.joint_positions)
    monkeypatch.undo()
    transfer_robot.reset(2)
    assert not transfer_robot.status().done


@pytest.mark.sim
def test_episode_limit() -> None:
    with SimAlohaBackend(SimAlohaConfig(max_steps=5)) as robot:
        obs = robot.reset(0)
        for _ in range(5):
            robot.command(obs.joint_positions)
        status = robot.status()
        assert status.done and status.failure == "timeout" and status.step == 5


def test_jog_kinematics_of_the_sim_are_its_fingertips(transfer_robot: SimAlohaBackend) -> None:
    """The jog's ``sim_aloha`` kinematics give the fingertip positions the simulated robot
    itself reports for the same joint angles (both arms, in the world frame)."""
    from arx_x5_driver.core.kinematics import jog_kinematics

    kin = jog_kinematics("sim_aloha", task="transfer_cube")
    action = np.array([0.1, -0.4, 0.5, 0.2, 0.3, -0.1, 0.5, -0.2, -0.3, 0.4, 0.0, 0.2, 0.1, 0.5])
    tips = transfer_robot.end_effector_positions(action)
    np.testing.assert_allclose(kin.fk[0](action[0:6]), tips["left"], atol=1e-6)
    np.testing.assert_allclose(kin.fk[1](action[7:13]), tips["right"], atol=1e-6)
    assert kin.joint_low is None  # the jog keeps its configured limits

"""Meta-World MT1 behind the same interface: 4-dim action, shipped expert policies."""

from __future__ import annotations

import numpy as np
import pytest

from arx_x5_driver.core.config import MetaWorldConfig
from arx_x5_driver.core.factory import make_backend
from habc_sim.core.expert import MetaWorldExpert
from habc_sim.core.operator import ScriptedOperator


@pytest.mark.sim
def test_metaworld_task_runs_with_its_expert() -> None:
    with make_backend(
        "metaworld", task="assembly-v3", cameras=("corner",), image_size=(32, 48)
    ) as robot:
        assert robot.action_dim == 4 and robot.arm_slices == (("arm", 0, 4),)
        expert = MetaWorldExpert("assembly-v3")
        successes = 0
        for seed in (0, 1):
            obs = robot.reset(seed)
            expert.reset(obs, seed)
            assert obs.env_state is not None and obs.env_state.shape == (39,)
            assert obs.images["corner"].shape == (32, 48, 3)
            while not robot.status().done:
                robot.command(expert.act(obs))
                obs = robot.observe()
            successes += bool(robot.status().success)
        assert successes == 2
        first = robot.reset(7).env_state
        again = robot.reset(7).env_state
        other = robot.reset(57).env_state
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)


@pytest.mark.sim
def test_metaworld_hold_position_is_in_the_command_space() -> None:
    # The arbiter's hold target: zero end-effector deltas and the last gripper command (open
    # after a reset), not the 9 measured joint positions.
    with make_backend("metaworld", task="reach-v3") as robot:
        robot.reset(3)
        np.testing.assert_array_equal(robot.hold_position(), [0.0, 0.0, 0.0, -1.0])
        before = robot.observe().env_state
        robot.command(robot.hold_position())
        assert before is not None
        np.testing.assert_allclose(robot.observe().env_state[:3], before[:3], atol=2e-3)
        robot.command([0.5, 0.0, 0.0, 0.7])
        np.testing.assert_array_equal(robot.hold_position(), [0.0, 0.0, 0.0, 0.7])
        robot.reset(4)
        assert robot.hold_position()[3] == -1.0


@pytest.mark.sim
def test_metaworld_operator_takes_over_a_stalled_policy() -> None:
    with make_backend("metaworld", task="reach-v3") as robot:
        operator = ScriptedOperator.for_backend("metaworld", "reach-v3")
        obs = robot.reset(3)
        operator.reset(obs, seed=3)
        operator.model.will_intervene = True  # this episode's operator intervenes
        while not robot.status().done:
            takeover, mask, action = operator.step(obs)
            assert len(mask) == 1
            robot.command(action if takeover else np.zeros(4))  # a policy that never moves
            obs = robot.observe()
        assert operator.takeover_step is not None and operator.reason == "stall"
        assert robot.status().success


def _astray(robot, expert, seed: int):
    """The expert with heavy action noise for 120 steps: a policy gone astray mid-task."""
    obs = robot.reset(seed=seed)
    expert.reset(obs, seed)
    rng = np.random.default_rng(seed)
    for _ in range(120):
        robot.command(np.clip(expert.act(obs) + rng.normal(0, 0.8, 4), -1, 1))
        obs = robot.observe()
    return obs


def test_metaworld_recovery_retreats_before_the_shipped_policy() -> None:
    """From where a failing policy left the arm, the shipped assembly policy alone recovers
    almost never (1 of 20 measured); retreating up with the gripper open first, almost always
    (18 of 20). Six scenes here: the retreat must win clearly."""
    wins = {0: 0, 15: 0}
    with make_backend("metaworld", task="assembly-v3") as robot:
        for retreat in wins:
            expert = MetaWorldExpert("assembly-v3", retreat_steps=retreat, nut_recovery=False)
            for seed in range(6):
                obs = _astray(robot, expert, seed)
                if robot.status().done:
                    continue
                expert.replan(obs)
                while not robot.status().done:
                    robot.command(expert.act(obs))
                    obs = robot.observe()
                wins[retreat] += bool(robot.status().success)
    assert wins[15] >= 4 and wins[15] >= wins[0] + 3, wins
    with pytest.raises(ValueError, match="retreat_steps"):
        MetaWorldExpert("assembly-v3", retreat_steps=-1)


def test_metaworld_config_names_the_task() -> None:
    with pytest.raises(ValueError, match="did you mean 'assembly-v3'"):
        MetaWorldConfig(task="asembly-v3")
    with pytest.raises(ValueError, match="no Meta-World expert"):
        MetaWorldExpert("reach-v2")


def _axis_angle(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """Unit quaternion ``[w, x, y, z]`` of a rotation about ``axis``."""
    half = np.radians(degrees) / 2.0
    return np.concatenate([[np.cos(half)], np.sin(half) * np.asarray(axis, dtype=np.float64)])


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Quaternion product ``a * b`` (rotate by ``b``, then by ``a``)."""
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )


def _place_nut(robot, xy: tuple[float, float], turn: np.ndarray, expert=None):
    """A fresh episode (pose 7,000,001; ``expert`` reset on it) with assembly-v3's nut put at
    ``xy``, turned by ``turn`` from its spawn pose, as a policy might have left it, and
    settled (the arm holds still)."""
    obs = robot.reset(7_000_001)
    if expert is not None:
        expert.reset(obs, 0)
    env = robot._env  # the Meta-World environment: its nut has the free joint at qpos[9:16]
    qpos, qvel = env.data.qpos.copy(), env.data.qvel.copy()
    spawn = qpos[12:16].copy()
    qpos[9:12] = [xy[0], xy[1], 0.03]
    qpos[12:16] = _compose(turn, spawn)
    qvel[9:15] = 0.0
    env.set_state(qpos, qvel)
    for _ in range(15):
        robot.command(robot.hold_position())
    return robot.observe()


@pytest.mark.sim
def test_the_nut_ring_centre_is_read_from_the_handle_in_any_pose() -> None:
    """Meta-World observes the nut's handle end and orientation; the ring's centre, which
    must go over the peg, follows from them in every pose (turned, flipped, on its edge)."""
    from habc_sim.core.expert import nut_ring_centre

    turns = [
        _axis_angle((0, 0, 1), 40),
        _axis_angle((1, 0, 0), 180),
        _compose(_axis_angle((0, 0, 1), 30), _axis_angle((1, 0, 0), 90)),
    ]
    with make_backend("metaworld", task="assembly-v3") as robot:
        for turn in turns:
            obs = _place_nut(robot, (0.0, 0.65), turn)
            centre = robot._env.data.site("RoundNut").xpos
            np.testing.assert_allclose(nut_ring_centre(obs.env_state), centre, atol=1e-9)
            # (the handle end is 13 cm from the ring: not a position that happens to match)
            assert np.linalg.norm(obs.env_state[4:7] - centre) > 0.12


@pytest.mark.sim
def test_a_turned_or_flipped_nut_is_assembled_by_the_pose_aware_controller() -> None:
    """The shipped assembly policy grips at a fixed offset from the handle's end and closes on
    nothing when a policy left the nut turned; it then presses down there to the end of the
    episode. The operator's nut controller grips where the nut's pose puts the handle (first
    sweeping a handle that lies along the fingers' closing axis sideways) and steers the
    ring's centre over the peg."""
    scenes = [
        _axis_angle((0, 0, 1), 40),
        _axis_angle((0, 0, 1), -50),
        _compose(_axis_angle((0, 0, 1), 30), _axis_angle((1, 0, 0), 180)),  # upside down
        _axis_angle((0, 0, 1), 90),  # the handle along y: the fingers cannot pinch it
    ]
    # More handles near the fingers' closing axis (55-90° from x), upside down or not: the
    # nut controller alone (the shipped policy fails the first four already).
    along_y = [_axis_angle((0, 0, 1), a) for a in (55, 65, 75, -60, -70)] + [
        _compose(_axis_angle((0, 0, 1), a), _axis_angle((1, 0, 0), 180)) for a in (60, 75, 90)
    ]
    wins = {False: 0, True: 0}
    with make_backend("metaworld", task="assembly-v3") as robot:
        for nut_recovery in wins:
            for turn in scenes:
                expert = MetaWorldExpert("assembly-v3", nut_recovery=nut_recovery)
                obs = _place_nut(robot, (0.0, 0.65), turn, expert)
                assert expert.scene_recoverable(obs.env_state) == (True, "")
                expert.replan(obs)
                assert expert.phase == ("nut:rise" if nut_recovery else "policy")
                phases = set()
                while not robot.status().done:
                    robot.command(expert.act(obs))
                    phases.add(expert.phase)
                    obs = robot.observe()
                wins[nut_recovery] += bool(robot.status().success)
                if nut_recovery:  # only the handle along y is swept
                    assert ("nut:push" in phases) == (turn is scenes[-1]), phases
    assert wins == {False: 0, True: 4}
    solved = []
    with make_backend("metaworld", task="assembly-v3") as robot:
        for turn in along_y:
            expert = MetaWorldExpert("assembly-v3")
            obs = _place_nut(robot, (0.0, 0.65), turn, expert)
            expert.replan(obs)
            while not robot.status().done:
                robot.command(expert.act(obs))
                obs = robot.observe()
            solved.append(bool(robot.status().success))
    assert solved == [True] * len(along_y), solved


@pytest.mark.sim
def test_the_operator_declines_a_nut_it_cannot_reach_or_one_on_its_edge() -> None:
    with make_backend("metaworld", task="assembly-v3") as robot:
        expert = MetaWorldExpert("assembly-v3")
        obs = _place_nut(robot, (0.0, 0.65), _axis_angle((0, 0, 1), 20), expert)
        assert expert.scene_recoverable(obs.env_state) == (True, "")
        edge = _compose(_axis_angle((0, 0, 1), 30), _axis_angle((1, 0, 0), 90))
        obs = _place_nut(robot, (0.0, 0.65), edge, expert)
        assert expert.scene_recoverable(obs.env_state) == (False, "the nut stands on its edge")
        # The ring at the table's far side, the handle pointing away from the robot.
        obs = _place_nut(robot, (0.0, 0.90), _axis_angle((0, 0, 1), 90), expert)
        assert obs.env_state[5] > 0.95
        why = "the nut lies beyond the arm's reach"
        assert expert.scene_recoverable(obs.env_state) == (False, why)
        # The shipped policy alone (the nut controller off) has no such judgement.
        assert MetaWorldExpert("assembly-v3", nut_recovery=False).scene_recoverable(
            obs.env_state
        ) == (True, "")
        # The handle along y at the far side: the sweep that would turn it cannot get down
        # to the table there.
        obs = _place_nut(robot, (-0.15, 0.74), _axis_angle((0, 0, 1), 90), expert)
        why = "the nut's handle lies along the fingers, beyond the reach of a push"
        assert expert.scene_recoverable(obs.env_state) == (False, why)


def test_the_nut_counts_as_held_anywhere_along_its_handle() -> None:
    """A policy may hold the handle far from where the shipped policy grips it: the nut is
    held when the closed gripper is within 6 cm of the handle, anywhere along its 9 cm, and
    the ring is off the table."""
    from habc_sim.core.expert import nut_held, nut_ring_centre

    env = np.zeros(39)
    env[7:11] = [np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5)]  # as spawned: the ring 13 cm along -x
    env[4:7] = [0.13, 0.6, 0.10]  # the handle's end, lifted
    np.testing.assert_allclose(nut_ring_centre(env), [0.0, 0.6, 0.10], atol=1e-12)
    held = {}
    for name, hand, grip in (
        ("at the shipped grip", [0.11, 0.6, 0.145], 0.45),
        ("8 cm in from the end", [0.05, 0.6, 0.145], 0.45),
        ("beyond the handle, over the ring", [-0.02, 0.6, 0.145], 0.45),
        ("gripper open", [0.11, 0.6, 0.145], 1.0),
        ("closed on nothing", [0.11, 0.6, 0.145], 0.30),
    ):
        env[0:3], env[3] = hand, grip
        held[name] = nut_held(env)
    assert held == {
        "at the shipped grip": True,
        "8 cm in from the end": True,
        "beyond the handle, over the ring": False,
        "gripper open": False,
        "closed on nothing": False,
    }
    env[0:3], env[3] = [0.11, 0.6, 0.065], 0.45
    env[6] = 0.02  # the nut on the table: gripped, not held lifted
    assert not nut_held(env)


@pytest.mark.sim
def test_a_shipped_grip_that_closed_on_nothing_hands_over_to_the_nut_controller() -> None:
    """From the spawn pose a takeover runs the shipped policy (after its retreat). When its
    fingers close on nothing it presses down there for the rest of the episode; after 15
    steps reading "closed on nothing" the nut controller takes over. A demonstration (a
    takeover at step 0) keeps the shipped policy whatever happens."""
    from dataclasses import replace

    from habc_sim.core.expert import NUT_EMPTY_STEPS

    with make_backend("metaworld", task="assembly-v3") as robot:
        start = robot.reset(7_000_001)
    phases = {}
    for step in (0, 120):
        expert = MetaWorldExpert("assembly-v3")
        expert.reset(start, 0)
        obs = replace(start, step=step)
        expert.replan(obs)
        env = np.asarray(obs.env_state).copy()
        env[3] = 0.30  # the fingers closed on nothing
        seen = []
        for k in range(NUT_EMPTY_STEPS + 1):
            expert.act(replace(obs, env_state=env, step=step + k))
            seen.append(expert.phase)
        phases[step] = seen
    assert set(phases[0]) == {"policy"}
    assert phases[120][: NUT_EMPTY_STEPS - 1] == ["policy"] * (NUT_EMPTY_STEPS - 1)
    assert phases[120][-1].startswith("nut:")


@pytest.mark.sim
def test_the_hand_gets_down_to_the_table_only_within_its_reach() -> None:
    """``HAND_REACH``: the nut controller grips a handle on the table with the hand at about
    0.064 m. Within 0.85 m of the robot's base the hand gets down there; at 0.89 m it stops
    more than 1.5 cm higher, so a nut that far away is declined."""
    from habc_sim.core.expert import HAND_REACH

    lowest = {}
    with make_backend("metaworld", task="assembly-v3") as robot:
        for r in (HAND_REACH, 0.89):
            robot.reset(7_000_001)
            env = robot._env  # the nut out of the way, at the table's side
            qpos, qvel = env.data.qpos.copy(), env.data.qvel.copy()
            qpos[9:12] = [0.3, 0.5, 0.03]
            env.set_state(qpos, qvel)
            x = 0.2
            goal = np.array([x, np.sqrt(r * r - x * x), 0.15])
            for k in range(150):
                hand = robot.observe().env_state[0:3]
                if k == 60:
                    goal[2] = 0.0  # then straight down, as far as the arm goes
                robot.command(np.r_[np.clip((goal - hand) * 10, -1, 1), -1.0])
            lowest[r] = float(robot.observe().env_state[2])
    assert lowest[HAND_REACH] < 0.066, lowest
    assert lowest[0.89] > 0.08, lowest

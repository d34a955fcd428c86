"""The scripted operator: takeover from perturbed mid-episode states, and its decision logic."""

from __future__ import annotations

import numpy as np
import pytest

from arx_x5_driver.core.sim_aloha import SimAlohaBackend
from habc_sim.core.expert import AlohaExpert, ExpertConfig, SceneState, scene_recoverable
from habc_sim.core.operator import (
    Milestone,
    OperatorConfig,
    RolloutMonitor,
    ScriptedOperator,
    Signals,
    TakeoverModel,
    mask_to_array,
    segment_distance,
)


def perturb(robot: SimAlohaBackend, seed: int, steps: int = 100) -> None:
    """Random-walk joint targets and random grippers from reset: a policy gone astray."""
    rng = np.random.default_rng(1000 + seed)
    obs = robot.reset(seed)
    q = obs.joint_positions.copy()
    low, high = robot.joint_limits
    for _ in range(steps):
        q = np.clip(q + rng.normal(0.0, 0.03, 14), low, high)
        a = q.copy()
        a[[6, 13]] = rng.uniform(0.0, 1.0, 2)
        robot.command(a)
        assert not robot.status().done


@pytest.mark.sim
@pytest.mark.parametrize(("task", "needed"), [("transfer_cube", 4), ("insertion", 3)])
def test_takeover_from_perturbed_state_completes_the_task(
    task: str, needed: int, transfer_robot: SimAlohaBackend, insertion_robot: SimAlohaBackend
) -> None:
    robot = transfer_robot if task == "transfer_cube" else insertion_robot
    operator = ScriptedOperator.for_backend("sim", task)
    successes = 0
    for seed in range(5):
        perturb(robot, seed)
        obs = robot.observe()
        operator.reset(obs, seed)
        operator.take_over_now(obs)
        while not robot.status().done:
            takeover, mask, action = operator.step(obs)
            assert takeover and mask == (True, True) and action is not None
            robot.command(action)
            obs = robot.observe()
        successes += bool(robot.status().success)
    assert successes >= needed, f"{task}: takeover finished {successes}/5 perturbed episodes"


@pytest.mark.sim
def test_operator_watches_a_failing_policy_and_takes_over(
    transfer_robot: SimAlohaBackend,
) -> None:
    """A poor policy (the expert with 3 cm waypoint errors): the operator detects the failure
    itself (stall / drop), takes over, and finishes; with rate 0 it never intervenes. (The
    operator of earlier runs, ``release=False``: the takeover holds to the end.)"""
    results = {}
    for rate in (1.0, 0.0):
        operator = ScriptedOperator.for_backend(
            "sim", "transfer_cube", OperatorConfig(intervention_rate=rate, release=False)
        )
        policy = AlohaExpert("transfer_cube", ExpertConfig(noise_std=0.03))
        takeovers = successes = 0
        for seed in range(3):
            obs = transfer_robot.reset(seed)
            operator.reset(obs, seed)
            policy.reset(obs, seed + 100)
            while not transfer_robot.status().done:
                takeover, _, action = operator.step(obs)
                transfer_robot.command(action if takeover else policy.act(obs))
                obs = transfer_robot.observe()
            takeovers += operator.takeover_step is not None
            successes += bool(transfer_robot.status().success)
            if rate == 1.0 and operator.takeover_step is not None:
                assert operator.reason in ("stall", "drop", "collision")
                assert operator.takeover_step > OperatorConfig().grace_steps
        results[rate] = (takeovers, successes)
    assert results[1.0][0] == 3 and results[1.0][1] >= 2, results
    assert results[0.0][0] == 0, results


@pytest.mark.sim
def test_monitor_stays_quiet_while_the_expert_succeeds(
    insertion_robot: SimAlohaBackend,
) -> None:
    expert = AlohaExpert("insertion")
    monitor = RolloutMonitor(OperatorConfig(), expert)
    for seed in range(2):
        obs = insertion_robot.reset(seed)
        expert.reset(obs, seed)
        monitor.reset()
        while not insertion_robot.status().done:
            signals = monitor.update(obs)
            assert not (signals.stall or signals.drop or signals.collision), (seed, signals)
            insertion_robot.command(expert.act(obs))
            obs = insertion_robot.observe()
        assert insertion_robot.status().success


def _signals(stall: bool = False, drop: bool = False, collision: bool = False) -> Signals:
    return Signals(stall=stall, drop=drop, collision=collision, progress=0.0)


def test_takeover_model_reacts_after_delay_and_holds() -> None:
    model = TakeoverModel(OperatorConfig(intervention_rate=1.0, reaction_steps=3))
    model.reset(seed=0)
    assert model.will_intervene
    assert not model.update(_signals()).takeover
    decisions = [model.update(_signals(drop=True)).takeover for _ in range(3)]
    assert decisions == [False, False, False]
    assert model.update(_signals()).takeover, "takes over after the reaction delay"
    assert model.update(_signals()).takeover, "and keeps control until reset"
    assert model.reason == "drop"
    model.reset()
    assert model.state == "watching"


def test_takeover_model_declines_a_scene_it_cannot_recover() -> None:
    model = TakeoverModel(OperatorConfig(intervention_rate=1.0, reaction_steps=2))
    model.reset(seed=0)
    lost = Signals(False, True, False, 0.0, recoverable=False, unrecoverable_why="cube is gone")
    assert [model.update(lost).takeover for _ in range(4)] == [False] * 4
    assert model.state == "declined"
    assert model.reason == "unrecoverable: cube is gone"
    # recoverable again later: a declined episode stays declined
    assert not model.update(_signals(stall=True)).takeover
    # lost only while the operator is still reacting: it takes over once it is recoverable
    model.reset(seed=0)
    model.update(lost)
    assert [model.update(_signals()).takeover for _ in range(3)] == [False, True, True]


def _scene(cube: tuple[float, float, float]) -> SceneState:
    arm = {"left": np.zeros(3), "right": np.zeros(3)}
    return SceneState(
        q={"left": np.zeros(6), "right": np.zeros(6)},
        grip={"left": 1.0, "right": 1.0},
        site_pos=arm,
        site_rot={"left": np.eye(3), "right": np.eye(3)},
        objects={"cube": (np.array(cube), np.eye(3))},
    )


def test_scene_recoverable_checks_table_and_workspace() -> None:
    assert scene_recoverable(_scene((0.1, 0.5, 0.0125))) == (True, "")
    ok, why = scene_recoverable(_scene((-0.5, 0.5, 0.0125)))
    assert not ok and why == "cube is out of reach at (x, y) = (-0.50, 0.50) m"
    ok, why = scene_recoverable(_scene((0.1, 0.5, -0.3)))
    assert not ok and "off the table" in why
    ok, _ = scene_recoverable(_scene((0.0, 0.9, 0.0125)))
    assert not ok


@pytest.mark.sim
def test_expert_ik_caps_the_waist() -> None:
    expert = AlohaExpert("transfer_cube")
    ik = expert.ik["left"]
    # a point behind the left arm's base (x = -0.469): reaching it needs the waist near ±π
    sol = ik.solve(np.zeros(6), np.array([-0.8, 0.45, 0.1]), np.eye(3))
    assert abs(sol.q[0]) <= expert.config.waist_cap + 1e-9
    with pytest.raises(ValueError, match="waist_cap"):
        ExpertConfig(waist_cap=4.0)


def test_takeover_model_declines_at_rate_zero_and_rate_is_a_fraction() -> None:
    model = TakeoverModel(OperatorConfig(intervention_rate=0.0))
    model.reset(seed=1)
    for _ in range(10):
        assert not model.update(_signals(stall=True)).takeover
    assert model.state == "declined"
    half = TakeoverModel(OperatorConfig(intervention_rate=0.5))
    draws = []
    for seed in range(400):
        half.reset(seed)
        draws.append(half.will_intervene)
    assert 0.4 < np.mean(draws) < 0.6


def test_operator_config_validates() -> None:
    with pytest.raises(ValueError, match="intervention_rate"):
        OperatorConfig(intervention_rate=1.5)
    with pytest.raises(ValueError, match="signal must be one of"):
        OperatorConfig(signals=("stall", "boredom"))


def test_geometry_helpers() -> None:
    a0, a1 = np.array([0.0, 0, 0]), np.array([1.0, 0, 0])
    b0, b1 = np.array([0.5, 1, 0]), np.array([0.5, 2, 0])
    assert segment_distance(a0, a1, b0, b1) == pytest.approx(1.0)
    assert segment_distance(a0, a1, np.array([0.5, -1, 0]), np.array([0.5, 1, 0])) == 0.0
    mask = mask_to_array((True, False), (("left", 0, 7), ("right", 7, 14)))
    assert mask[:7].all() and not mask[7:].any()


# Hand-back --------------------------------------------------------------------------------
def _at(level: int, done: tuple[bool, bool] = (False, False), **kw) -> Signals:
    return Signals(False, False, False, 0.0, milestone=Milestone(level, done), **kw)


def _release_config(**kw) -> OperatorConfig:
    base = dict(
        intervention_rate=1.0,
        reaction_steps=0,
        release_confirm_steps=3,
        min_control_steps=5,
        min_suffix_steps=50,
    )
    return OperatorConfig(**{**base, **kw})


def test_full_takeover_hands_back_after_the_next_milestone() -> None:
    model = TakeoverModel(_release_config(min_control_steps=8))
    model.reset(seed=0, horizon=400)
    stall = Signals(True, False, False, 0.0, milestone=Milestone(0, (False, False)))
    assert model.update(stall).takeover and model.mask == (True, True)
    # Control steps 1..3 at milestone 0; milestone 1 from control step 4 on. Back on track
    # holds 3 steps at control step 6, but the takeover must last 8: released at step 8.
    assert all(model.update(_at(0)).takeover for _ in range(3))
    assert [model.update(_at(1)).takeover for _ in range(4)] == [True] * 4
    assert not model.update(_at(1)).takeover, "released at control step 8"
    assert model.state == "watching" and model.releases == 1 and model.takeovers == 1
    # Watching again: a new failure is a second takeover.
    assert model.update(Signals(False, True, False, 0.0, milestone=Milestone(1, (True, True))))
    assert model.state == "in_control" and model.takeovers == 2


def test_no_hand_back_near_the_end_or_past_the_last_takeover() -> None:
    # 60 steps left when back on track, 50 needed: released; 40 left: kept to the end.
    for horizon, released in ((70, True), (50, False)):
        model = TakeoverModel(_release_config(min_control_steps=0, release_confirm_steps=1))
        model.reset(seed=0, horizon=horizon)
        model.update(Signals(True, False, False, 0.0, milestone=Milestone(0, (False, False))))
        for _ in range(8):
            model.update(_at(0))
        assert (not model.update(_at(1)).takeover) is released, horizon
    # The last allowed takeover holds to the end.
    model = TakeoverModel(_release_config(max_takeovers=1, min_control_steps=0))
    model.reset(seed=0, horizon=400)
    model.update(Signals(True, False, False, 0.0, milestone=Milestone(0, (False, False))))
    assert all(model.update(_at(2)).takeover for _ in range(20))
    # So does an operator told not to release, and a task without a milestone.
    for cfg, sig in ((_release_config(release=False), _at(2)), (_release_config(), _signals())):
        model = TakeoverModel(cfg)
        model.reset(seed=0)
        model.update(Signals(True, False, False, 0.0, milestone=Milestone(0, (False, False))))
        assert all(model.update(sig).takeover for _ in range(20))


def test_one_arm_takeover_takes_the_arm_at_fault_and_hands_it_back() -> None:
    model = TakeoverModel(_release_config(min_control_steps=0, release_confirm_steps=2))
    model.reset(seed=0, horizon=400)
    # The left arm holds its object, the right does not: only the right is taken.
    first = Signals(True, False, False, 0.0, milestone=Milestone(0, (True, False)))
    assert model.update(first).takeover and model.mask == (False, True)
    assert model.update(_at(0, (True, False))).takeover
    assert model.update(_at(0, (True, True))).takeover
    assert not model.update(_at(0, (True, True))).takeover, "the right arm did its part"
    # A collision is both arms' business; so is a scene where neither arm has done its part.
    for signals in (
        Signals(False, False, True, 0.0, milestone=Milestone(0, (True, False))),
        Signals(True, False, False, 0.0, milestone=Milestone(0, (False, False))),
    ):
        model.reset(seed=0, horizon=400)
        model.update(signals)
        assert model.mask == (True, True)
    # one_arm=False: always both.
    model = TakeoverModel(_release_config(one_arm=False))
    model.reset(seed=0)
    model.update(first)
    assert model.mask == (True, True)


def test_one_arm_takeover_hands_back_at_the_grasp() -> None:
    """``pick_handback="grasp"``: the right arm's takeover ends once the operator closed its
    gripper around the object, before the lift (``arm_done`` still False); ``"lift"`` waits
    for ``arm_done``; and an arm that already held its object when the takeover began is
    corrected to the lift."""

    def sig(
        done: tuple[bool, bool],
        grasped: tuple[bool, bool],
        stall: bool = False,
        task_pick: str = "grasp",
    ) -> Signals:
        m = Milestone(0, done, 1, grasped, pick_handback=task_pick)
        return Signals(stall, False, False, 0.0, milestone=m)

    # ("auto": the task's, Milestone.pick_handback: transfer-cube grasp, insertion lift)
    cases = [("grasp", "lift", 4), ("lift", "grasp", 6), ("auto", "grasp", 4), ("auto", "lift", 6)]
    for pick, task_pick, released_at in cases:
        model = TakeoverModel(
            _release_config(min_control_steps=0, release_confirm_steps=2, pick_handback=pick)
        )
        model.reset(seed=0, horizon=400)
        assert model.update(sig((True, False), (False, False), True, task_pick)).takeover
        assert model.mask == (False, True)
        # Control steps 1-2 approach, 3-4 grasped on the table, 5- lifted (arm_done); the
        # condition must hold 2 steps: released at 4 (grasp) or 6 (lift).
        trace = [sig((True, False), (False, False), task_pick=task_pick)] * 2
        trace += [sig((True, False), (False, True), task_pick=task_pick)] * 2
        trace += [sig((True, True), (False, True), task_pick=task_pick)] * 3
        takeover = [model.update(s).takeover for s in trace]
        assert takeover.index(False) + 1 == released_at, (pick, task_pick, takeover)
    # The right gripper already held the cube on the table when the operator took over (a
    # stalled lift): a grasp is no progress, the lift is.
    model = TakeoverModel(_release_config(min_control_steps=0, release_confirm_steps=2))
    model.reset(seed=0, horizon=400)
    assert model.update(sig((True, False), (False, True), stall=True)).takeover
    assert model.mask == (False, True)
    assert all(model.update(sig((True, False), (False, True))).takeover for _ in range(10))
    assert model.update(sig((True, True), (False, True))).takeover
    assert not model.update(sig((True, True), (False, True))).takeover
    with pytest.raises(ValueError, match="pick_handback"):
        OperatorConfig(pick_handback="touch")


def test_grasps_is_the_gripper_closed_around_the_object() -> None:
    from habc_sim.core.expert import CUBE_HALF, PEG_HALF
    from habc_sim.core.operator import grasps

    cube = {"cube": (np.array([0.1, 0.5, 0.02]), np.eye(3))}
    closed, open_ = {"left": 1.0, "right": 0.3}, {"left": 1.0, "right": 0.9}
    far = np.array([-0.3, 0.5, 0.3])

    def at(site: list[float], objects: dict = cube, grip: dict = closed) -> SceneState:
        return _hold_scene(objects, grip, {"left": far, "right": np.array(site)})

    # 1 cm along x, 0 across, fingertips 0.5 cm above the centre (top at +2 cm): a grasp.
    assert grasps(at([0.11, 0.5, 0.025]), "right", "cube", CUBE_HALF)
    assert not grasps(at([0.11, 0.5, 0.025], grip=open_), "right", "cube", CUBE_HALF)
    assert not grasps(at([0.1, 0.52, 0.025]), "right", "cube", CUBE_HALF), "2 cm across"
    assert not grasps(at([0.12, 0.5, 0.025]), "right", "cube", CUBE_HALF), "2 cm along"
    assert not grasps(at([0.1, 0.5, 0.045]), "right", "cube", CUBE_HALF), "above the top"
    # The cube turned 90 degrees about z: its x axis is world y.
    turned = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    rotated = {"cube": (np.array([0.1, 0.5, 0.02]), turned)}
    assert grasps(at([0.1, 0.51, 0.025], rotated), "right", "cube", CUBE_HALF)
    # A peg (half length 6 cm) is grasped anywhere within 6 - 1.5 = 4.5 cm of its centre.
    peg = {"peg": (np.array([0.1, 0.5, 0.01]), np.eye(3))}
    assert grasps(at([0.14, 0.505, 0.012], peg), "right", "peg", PEG_HALF)
    assert not grasps(at([0.15, 0.5, 0.012], peg), "right", "peg", PEG_HALF)
    # aloha_milestone reports it per arm.
    from habc_sim.core.operator import aloha_milestone

    m = aloha_milestone("transfer_cube", at([0.11, 0.5, 0.025]))
    assert m.arm_grasped == (False, True) and m.arm_done == (True, False) and m.level == 0


def test_a_takeover_that_holds_to_the_end_takes_every_arm() -> None:
    # Measured bug (transfer-cube, 100 episodes): a last takeover of the picking arm alone held
    # to the end while the policy kept the receiving arm, so the expert's handover could never
    # happen and 16 % of takeover episodes timed out. Here: the left arm did its part, the right
    # did not, which would be a one-arm takeover of the right arm.
    right_at_fault = Signals(True, False, False, 0.0, milestone=Milestone(0, (True, False)))
    # The second of max_takeovers=2 holds to the end: both arms, though one is at fault.
    model = TakeoverModel(_release_config(max_takeovers=2, min_control_steps=0))
    model.reset(seed=0, horizon=400)
    assert model.update(right_at_fault).takeover and model.mask == (False, True)
    for _ in range(3):
        model.update(_at(0, (True, True)))
    assert model.state == "watching" and model.releases == 1
    assert model.update(right_at_fault).takeover and model.mask == (True, True)
    # So does every takeover of an operator told not to release.
    model = TakeoverModel(_release_config(release=False))
    model.reset(seed=0, horizon=400)
    assert model.update(right_at_fault).takeover and model.mask == (True, True)
    # A one-arm takeover whose arm is back on track with too few steps left to hand back:
    # the operator keeps control and widens it to every arm (60 steps left at the takeover,
    # the right arm done 12 steps later: 48 < 50 left).
    model = TakeoverModel(_release_config(min_control_steps=0, release_confirm_steps=1))
    model.reset(seed=0, horizon=60)
    assert model.update(right_at_fault).takeover and model.mask == (False, True)
    for _ in range(10):
        assert model.update(_at(0, (True, False))).takeover and model.mask == (False, True)
    assert model.update(_at(0, (True, True))).takeover, "too late to hand back"
    assert model.mask == (True, True)


def _hold_scene(task_objects: dict, grip: dict, sites: dict) -> SceneState:
    return SceneState(
        q={"left": np.zeros(6), "right": np.zeros(6)},
        grip=grip,
        site_pos=sites,
        site_rot={"left": np.eye(3), "right": np.eye(3)},
        objects=task_objects,
    )


def test_milestones_of_the_aloha_tasks() -> None:
    from habc_sim.core.operator import aloha_milestone

    open_ = {"left": 1.0, "right": 1.0}
    far = {"left": np.array([-0.3, 0.5, 0.3]), "right": np.array([0.3, 0.5, 0.3])}
    # Cube on the table at x = 0.1: the right arm picks, the left only waits.
    cube = {"cube": (np.array([0.1, 0.5, 0.02]), np.eye(3))}
    assert aloha_milestone("transfer_cube", _hold_scene(cube, open_, far)) == Milestone(
        0, (True, False), 2, (False, False)
    )
    # Held by the right gripper 6 cm above rest (0.02 + 0.06 > 0.02 + 0.05): milestone 1.
    lifted = {"cube": (np.array([0.1, 0.5, 0.08]), np.eye(3))}
    at_right = {**far, "right": np.array([0.1, 0.5, 0.09])}
    grip_r = {"left": 1.0, "right": 0.3}
    assert aloha_milestone("transfer_cube", _hold_scene(lifted, grip_r, at_right)).level == 1
    # 4 cm above rest is not clear of the table yet.
    low = {"cube": (np.array([0.1, 0.5, 0.06]), np.eye(3))}
    assert aloha_milestone("transfer_cube", _hold_scene(low, grip_r, at_right)).level == 0
    # ... unless "clear" is 3 cm (OperatorConfig.lift_clear): 0.06 > 0.02 + 0.03.
    assert aloha_milestone("transfer_cube", _hold_scene(low, grip_r, at_right), 0.03).level == 1
    # Held by the right at the meeting point (0, 0.5, 0.22), 3 cm off: milestone 2, where a
    # full takeover hands back.
    met = {"cube": (np.array([0.03, 0.5, 0.22]), np.eye(3))}
    at_meet = {**far, "right": np.array([0.03, 0.5, 0.23])}
    m = aloha_milestone("transfer_cube", _hold_scene(met, grip_r, at_meet))
    assert m.level == 2 and m.handback_level == 2
    # The left gripper closed on the cube: milestone 3.
    both = {"left": np.array([0.05, 0.5, 0.22]), "right": np.array([0.03, 0.5, 0.23])}
    grip_both = {"left": 0.4, "right": 0.3}
    assert aloha_milestone("transfer_cube", _hold_scene(met, grip_both, both)).level == 3
    # Insertion: each arm's part is its own object held 3 cm clear.
    objs = {
        "peg": (np.array([0.1, 0.5, 0.06]), np.eye(3)),
        "socket": (np.array([-0.1, 0.5, 0.02]), np.eye(3)),
    }
    sites = {"left": np.array([-0.3, 0.5, 0.3]), "right": np.array([0.1, 0.5, 0.07])}
    m = aloha_milestone("insertion", _hold_scene(objs, {"left": 1.0, "right": 0.3}, sites))
    assert m == Milestone(0, (False, True), 1, (False, False), pick_handback="lift")


@pytest.mark.sim
def test_insertion_takeover_regrasps_a_peg_a_policy_left_on_the_table(
    insertion_robot: SimAlohaBackend,
) -> None:
    """A measured takeover failure, replayed from the simulator state it started in
    (``data/insertion_peg_left_on_table.npz``: insertion, bench_operator seed 7,000,000, the
    SFT policy's step 206): the socket held up, the peg back on the table near the robot's
    centre line. Before the fix, the expert's grasp at 5 mm pressed the right finger links onto
    the table, friction held them open at 0.89, the close phase took that for "closed", and
    the arm lifted without the peg, in a loop, until the episode timed out."""
    from pathlib import Path

    import mujoco

    state = np.load(Path(__file__).parent / "data" / "insertion_peg_left_on_table.npz")
    insertion_robot.reset(0)
    physics = insertion_robot.physics
    model, data = physics.model.ptr, physics.data.ptr
    data.qpos[:], data.qvel[:], data.ctrl[:] = state["qpos"], state["qvel"], state["ctrl"]
    mujoco.mj_forward(model, data)
    obs = insertion_robot.observe()
    operator = ScriptedOperator.for_backend("sim", "insertion")
    operator.reset(obs, 0)
    operator.take_over_now(obs)
    while not insertion_robot.status().done:
        _, _, action = operator.step(obs)
        insertion_robot.command(action)
        obs = insertion_robot.observe()
    assert insertion_robot.status().success, operator.expert.phase


class _SceneScript(AlohaExpert):
    """An expert whose "measured" scene is the next one of a script (the monitor's input)."""

    def __init__(self, task: str, scenes: list[SceneState]) -> None:
        super().__init__(task)
        self.scenes = iter(scenes)

    def scene(self, obs: object) -> SceneState:  # (the observation is not used)
        return next(self.scenes)


def _cube_at(z: float, grip: float = 0.3) -> SceneState:
    site = {"left": np.array([-0.3, 0.5, 0.3]), "right": np.array([0.1, 0.5, z + 0.01])}
    cube = {"cube": (np.array([0.1, 0.5, z]), np.eye(3))}
    return _hold_scene(cube, {"left": 1.0, "right": grip}, site)


def test_a_drop_is_an_object_lifted_after_the_hand_back_coming_down() -> None:
    """The cube is lifted (6 cm), comes down: a drop. The operator re-grasps it on the table
    and hands back: the cube still on the table is no drop (the latch is re-armed at the
    hand-back); lifted again by the policy and down again: a drop."""
    config = OperatorConfig(grace_steps=0, signals=("drop",))
    table, up = 0.02, 0.08
    zs = [table, up, table, table, table, up, table]
    monitor = RolloutMonitor(config, _SceneScript("transfer_cube", [_cube_at(z) for z in zs]))
    drops = [monitor.update(None).drop for _ in zs[:3]]
    assert drops == [False, False, True]
    monitor.restart_watch()  # the hand-back, the cube re-grasped on the table
    drops = [monitor.update(None).drop for _ in zs[3:]]
    assert drops == [False, False, False, True]
    # Without the re-arm (the old latch) the hand-back's first tick read as a drop.
    old = RolloutMonitor(config, _SceneScript("transfer_cube", [_cube_at(z) for z in zs]))
    assert [old.update(None).drop for _ in zs[:4]] == [False, False, True, True]


def test_no_collision_signal_where_the_task_brings_the_grippers_together() -> None:
    """Insertion: palms 2 cm apart (closer than ``collision_distance``) fire the collision
    signal while the peg is still far from the socket, not once its tip is at the socket mouth
    (milestone 2, ``arms_meet``)."""
    from habc_sim.core.operator import aloha_milestone

    def scene(peg_x: float) -> SceneState:
        objs = {
            "peg": (np.array([peg_x, 0.5, 0.08]), np.eye(3)),
            "socket": (np.array([-0.05, 0.5, 0.08]), np.eye(3)),
        }
        sites = {"left": np.array([-0.05, 0.5, 0.09]), "right": np.array([peg_x, 0.5, 0.09])}
        return _hold_scene(objs, {"left": 0.6, "right": 0.3}, sites)

    far, mouth = scene(0.25), scene(0.06)  # the socket axis is +x: its mouth at x = 0.05
    assert aloha_milestone("insertion", far).level == 1
    assert aloha_milestone("insertion", mouth) == Milestone(
        2, (True, True), 1, (True, True), arms_meet=True, pick_handback="lift"
    )
    config = OperatorConfig(grace_steps=0, signals=("collision",))
    monitor = RolloutMonitor(config, _SceneScript("insertion", [far, mouth]))
    monitor._collision = lambda obs: True  # the palms' geometry: 2 cm apart, both times
    assert monitor.update(None).collision
    assert not monitor.update(None).collision


def test_the_stall_window_after_a_hand_back_lasts_until_the_policy_makes_progress() -> None:
    """``handback_stall_steps`` 3 with ``stall_steps`` 6: right after a hand-back a still scene
    is a stall after 3 steps; once the policy made progress (the cube rises 3 cm: the progress
    potential grows by 0.4 > ``progress_eps``), it is 6 again. Without the option, 6 throughout."""
    still = [_cube_at(0.02)] * 5 + [_cube_at(0.05)] + [_cube_at(0.05)] * 7

    def stalls(handback_stall_steps: int | None) -> list[bool]:
        config = OperatorConfig(
            grace_steps=0,
            signals=("stall",),
            stall_steps=6,
            handback_stall_steps=handback_stall_steps,
        )
        monitor = RolloutMonitor(config, _SceneScript("transfer_cube", still))
        monitor.restart_watch()  # the hand-back
        return [monitor.update(None).stall for _ in still]

    # Step 1 sets the baseline; no progress after it: a stall from step 4 (3 steps later).
    assert stalls(3)[:5] == [False, False, False, True, True]
    # Progress at step 6 restores the 6-step window: the next stall 6 steps later (step 12).
    assert stalls(3)[5:] == [False] * 6 + [True, True]
    # Without it, the 6-step window throughout: the progress at step 6 comes first.
    assert stalls(None) == [False] * 11 + [True, True]
    with pytest.raises(ValueError, match="handback_stall_steps"):
        OperatorConfig(handback_stall_steps=0)


def test_metaworld_milestone_takes_the_lift_clearance() -> None:
    """Hand within 6 cm of the object, the object 1.5 cm above where it started: not lifted
    clear at the default 2 cm (``METAWORLD_CLEAR``), lifted at ``lift_clear`` 1 cm."""
    from habc_sim.core.operator import metaworld_milestone

    env = np.zeros(39)
    env[0:3] = [0.0, 0.6, 0.10]  # hand
    env[3] = 0.45  # the gripper closed on the object (assembly-v3's handle: 0.41-0.54)
    env[4:7] = [0.0, 0.6, 0.065]  # object, started at z = 0.05
    assert metaworld_milestone(env, 0.05).level == 0
    assert metaworld_milestone(env, 0.05, 0.01) == Milestone(1, (True,))
    env[0:3] = [0.0, 0.5, 0.10]  # hand 10 cm away: not held, whatever the height
    assert metaworld_milestone(env, 0.05, 0.01).level == 0


def test_metaworld_milestone_needs_the_gripper_closed_on_the_object() -> None:
    """An object tipping up beside the hand is not held: with the gripper open (1.0) or closed
    on nothing (0.30) the operator must not hand back (a tipping nut did, before it had
    gripped anything)."""
    from habc_sim.core.operator import metaworld_milestone

    env = np.zeros(39)
    env[0:3] = [0.0, 0.6, 0.10]
    env[4:7] = [0.0, 0.6, 0.08]  # 3 cm above where it started
    levels = {}
    for grip in (1.0, 0.95, 0.5, 0.34, 0.30):
        env[3] = grip
        levels[grip] = metaworld_milestone(env, 0.05).level
    assert levels == {1.0: 0, 0.95: 0, 0.5: 1, 0.34: 1, 0.30: 0}


def test_assembly_milestone_holds_the_nut_anywhere_along_its_handle() -> None:
    """assembly-v3 reports the nut's handle end, not where a policy holds it: held 8 cm in
    from the end with the ring lifted on the peg's top and the handle's end down by the
    table, the nut is held lifted (level 1), though the generic rule says 0."""
    from habc_sim.core.operator import metaworld_milestone

    env = np.zeros(39)
    tilt = np.radians(25.0)  # the ring up, the handle's end down: a turn about the world y axis
    yaw90 = np.array([np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5)])  # the nut as spawned
    about_y = np.array([np.cos(tilt / 2), 0.0, np.sin(tilt / 2), 0.0])
    w1, x1, y1, z1 = about_y
    w2, x2, y2, z2 = yaw90
    env[7:11] = [
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ]
    env[4:7] = [0.13, 0.6, 0.03]  # the handle's end, 1 cm above where it started
    from habc_sim.core.expert import nut_ring_centre

    ring = nut_ring_centre(env)
    assert ring[2] > 0.08  # the ring 13 cm away along the tilted handle, up
    env[0:3] = env[4:7] + (ring - env[4:7]) * (0.08 / 0.13) + [0.0, 0.0, 0.045]  # 8 cm in
    env[3] = 0.5
    assert metaworld_milestone(env, 0.02).level == 0  # the generic rule: the end is low
    assert metaworld_milestone(env, 0.02, task="assembly-v3").level == 1
    env[3] = 1.0  # gripper open: not held
    assert metaworld_milestone(env, 0.02, task="assembly-v3").level == 0

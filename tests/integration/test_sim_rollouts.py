"""In-process rollouts on the simulated robot write episode bags the learner reads back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from habc_learner.core.bag_reader import read_episode
from habc_learner.core.episode import HUMAN, NONE, POLICY, Outcome
from habc_learner.core.labeling import LabelingConfig, Source, label_episode
from habc_policy.core.authority import DEFAULT_HANDBACK_TICKS
from habc_sim.core.rollouts import run_rollout

pytestmark = pytest.mark.sim

TASK = "transfer_cube"


@pytest.fixture(scope="module")
def robot():
    from arx_x5_driver.core.factory import make_backend

    with make_backend("sim", task=TASK) as backend:
        yield backend


def _operator(rate: float = 1.0, **config):
    from habc_sim.core.operator import OperatorConfig, ScriptedOperator

    return ScriptedOperator.for_backend(
        "sim", TASK, OperatorConfig(intervention_rate=rate, **config)
    )


class ConstantPolicy:
    """Stands in for a loaded policy: the same chunk whatever it sees (it will fail)."""

    checkpoint_id = "ckpt-const"
    learner_step = 777

    def __init__(self, action: np.ndarray, horizon: int = 50) -> None:
        self.chunk = np.tile(np.asarray(action, np.float32), (horizon, 1))
        self.calls = 0

    def sample_actions(self, proprio, prompt, images=None, seed=None):
        self.calls += 1
        return self.chunk


def _still_policy_with_operator(robot, episode_id: str, bag_path: Path | None = None):
    """Seed 5 with a policy that holds the reset pose and the operator watching (rate 1): it
    takes the picking (right) arm, corrects the grasp and hands it back."""
    obs = robot.reset(seed=5)
    return run_rollout(
        robot,
        seed=5,
        policy=ConstantPolicy(obs.joint_positions),
        operator=_operator(rate=1.0),
        episode_id=episode_id,
        task=TASK,
        prompt=robot.prompt,
        bag_path=bag_path,
    )


def test_demonstration_bag_reads_back_as_a_human_success(robot, tmp_path: Path) -> None:
    r = run_rollout(
        robot,
        seed=3,
        operator=_operator(),
        episode_id="demo-3",
        task=TASK,
        prompt=robot.prompt,
        bag_path=tmp_path / "demo-3",
        source="demo",
    )
    assert r.success and r.takeover_step == 0
    ep = read_episode(tmp_path / "demo-3")
    assert ep.is_demonstration and ep.outcome is Outcome.SUCCESS
    assert ep.length == r.steps and ep.success_step == r.success_step
    assert (ep.authority == HUMAN).all()
    # proprio = 14 joints + the privileged cube pose.
    assert ep.proprio_dim == 14 + 7
    assert (ep.learner_steps == -1).all()


def test_takeover_to_the_end_leaves_no_suffix(robot, tmp_path: Path) -> None:
    """The operator of earlier runs (``release=False``): a takeover of both arms that holds to
    the end of the episode."""
    obs = robot.reset(seed=5)
    policy = ConstantPolicy(obs.joint_positions)  # holds still: heading for failure
    r = run_rollout(
        robot,
        seed=5,
        policy=policy,
        operator=_operator(rate=1.0, release=False, one_arm=False),
        episode_id="ro-5",
        task=TASK,
        prompt=robot.prompt,
        bag_path=tmp_path / "ro-5",
    )
    assert r.takeover_step is not None and r.takeover_step > 0
    ep = read_episode(tmp_path / "ro-5")
    k = r.takeover_step
    assert (ep.authority[:k] == POLICY).all() and (ep.authority[k:] == HUMAN).all()
    assert (ep.learner_steps[:k] == 777).all() and (ep.checkpoint_ids[0] == "ckpt-const")
    assert policy.calls == -(-k // 25)  # one chunk per 25 executed policy steps
    # A takeover that runs to the end leaves no post-intervention policy suffix: the policy
    # windows before it stay unlabeled.
    labels = label_episode(ep, LabelingConfig())
    assert labels.suffix_start == ep.length
    assert not labels.is_labeled.any()
    # Windows with >= 10 human steps among their 50 are intervention windows: anchors from
    # k - 40 on, up to the last 9, whose windows the episode end cuts below 10 steps.
    T = ep.length
    assert (labels.source[max(k - 40, 0) : T - 9] == Source.INTERVENTION).all()
    assert (labels.source[T - 9 :] == Source.UNLABELED).all()
    assert (labels.source[: max(k - 40, 0)] == Source.UNLABELED).all()


def test_operator_corrects_one_arm_and_hands_back_through_the_ramp(robot, tmp_path: Path) -> None:
    """A policy that holds still: the operator takes the picking (right) arm only, closes its
    gripper on the cube, releases the deadman; the arbiter's state machine ramps that arm back
    over its default 10 ticks (tagged HANDBACK) while the left arm stays the policy's, and the
    policy drives again."""
    from habc_learner.core.episode import HANDBACK
    from habc_learner.core.labeling import segment_controllers

    r = _still_policy_with_operator(robot, "hb-5", bag_path=tmp_path / "hb-5")
    assert r.takeovers >= 1 and r.handbacks >= 1
    ep = read_episode(tmp_path / "hb-5")
    segs = segment_controllers(ep.authority)
    kinds = [s.controller for s in segs]
    assert kinds[:4] == [POLICY, HUMAN, HANDBACK, POLICY], kinds
    took, ramp = segs[1], segs[2]
    assert took.start == r.takeover_step
    assert (ep.authority[took.start : took.stop] == [POLICY, HUMAN]).all()  # right arm only
    assert ramp.length == DEFAULT_HANDBACK_TICKS == 10
    assert (ep.authority[ramp.start : ramp.stop] == [POLICY, HANDBACK]).all()
    # The ramp blends the operator's last right-arm action into the policy's (held) one.
    right = slice(7, 14)
    start, goal = ep.actions[ramp.start - 1, right], ep.actions[ramp.stop, right]
    n = DEFAULT_HANDBACK_TICKS
    for k in range(1, n + 1):
        want = (1 - k / n) * start + (k / n) * goal
        np.testing.assert_allclose(ep.actions[ramp.start + k - 1, right], want, atol=1e-5)
    labels = label_episode(ep, LabelingConfig())
    assert not labels.is_labeled[ramp.start : ramp.stop].any()


def test_a_new_chunk_is_not_blended_toward_the_old_plan_of_an_arm_the_operator_drives(
    robot, monkeypatch
) -> None:
    """The held chunk's rows for an arm the operator drives never ran: every chunk offered
    while the right arm is the operator's (or ramps back) is offered with the right arm's
    dimensions as ``fresh_dims`` (the scheduler then keeps the new chunk's own rows there),
    with every dimension while both arms ramp back, and with none while the policy drives both
    arms."""
    from habc_policy.core import chunking

    offered: list[np.ndarray] = []
    original = chunking.ChunkScheduler.offer

    def spy(self, chunk, now_s=None, fresh_dims=None):
        offered.append(np.zeros(14, bool) if fresh_dims is None else np.asarray(fresh_dims))
        return original(self, chunk, now_s, fresh_dims)

    monkeypatch.setattr(chunking.ChunkScheduler, "offer", spy)
    r = _still_policy_with_operator(robot, "fresh-5")
    assert r.takeovers >= 1 and r.handbacks >= 1
    right_only = np.r_[np.zeros(7, bool), np.ones(7, bool)]
    kinds = {tuple(f) for f in offered}
    assert tuple(np.zeros(14, bool)) in kinds  # the policy drove both arms
    assert tuple(right_only) in kinds  # the operator drove (or ramped back) the right arm
    # (every dimension: both arms ramping back after a full takeover of both)
    assert kinds <= {tuple(np.zeros(14, bool)), tuple(right_only), tuple(np.ones(14, bool))}


def test_non_finite_policy_output_never_reaches_the_robot(robot) -> None:
    obs = robot.reset(seed=1)
    bad = np.array(obs.joint_positions, np.float32)
    bad[3] = np.nan
    r = run_rollout(
        robot,
        seed=1,
        policy=ConstantPolicy(bad),
        episode_id="nan",
        task=TASK,
        prompt=robot.prompt,
    )
    assert not r.success and r.failure == "non_finite_action" and r.steps == 0
    assert robot.status().step == 0  # no command was executed


def test_chunk_safety_clamps_reach_the_bag_as_nobodys_steps(robot, tmp_path: Path) -> None:
    """The arbiter's chunk-level safety step in-process: a policy 0.2 rad away in one joint
    moves there at the 1 rad/s limit (0.02 rad per tick, 10 clamped steps); those steps are
    recorded clamped and read back as nobody's; then the policy runs unclamped."""
    from habc_policy.core.chunk_safety import ChunkSafetyConfig

    obs = robot.reset(seed=2)
    home = robot.hold_position().astype(np.float32)
    target = home.copy()
    target[0] += 0.2
    limits = ChunkSafetyConfig(
        action_dim=14,
        max_jump=[1.0],
        max_velocity=[1.0] + [30.0] * 13,
        max_acceleration=[1e4],
        period_s=robot.spec.control_period,
    )
    r = run_rollout(
        robot,
        seed=2,
        policy=ConstantPolicy(target),
        episode_id="clamped",
        task=TASK,
        prompt=robot.prompt,
        bag_path=tmp_path / "clamped",
        seam="rtc",
        chunk_safety=limits,
    )
    assert obs is not None and r.clamped_steps == 10 and r.hold_steps == 0
    ep = read_episode(tmp_path / "clamped", use_env_state=False)
    assert ep.actions[:10, 0] == pytest.approx(home[0] + 0.02 * np.arange(1, 11), abs=1e-5)
    assert ep.authority[:10].tolist() == [[NONE, NONE]] * 10
    assert (ep.authority[10:] == POLICY).all()
    assert ep.actions[10:, 0] == pytest.approx(target[0])


def test_a_refused_chunk_is_dropped_and_the_next_one_requested(robot, tmp_path: Path) -> None:
    """A policy 1.5 rad off in one joint (past the 1 rad jump limit): every chunk is dropped
    on arrival, the arm holds at the reset pose, and the next tick asks for a new chunk. Every
    hold is the refusal's (``chunk_jump``), not a late policy's (``policy_stale``)."""
    from rosbags.rosbag2 import Reader

    from habc_common import bag_format as bf
    from habc_policy.core.chunk_safety import ChunkSafetyConfig

    robot.reset(seed=5)
    home = robot.hold_position().astype(np.float32)
    far = home.copy()
    far[0] += 1.5
    policy = ConstantPolicy(far)
    limits = ChunkSafetyConfig(14, [1.0], [30.0], [1250.0], robot.spec.control_period)
    r = run_rollout(
        robot,
        seed=5,
        policy=policy,
        episode_id="refused",
        task=TASK,
        prompt=robot.prompt,
        chunk_safety=limits,
        bag_path=tmp_path / "refused",
    )
    assert r.hold_steps == r.steps and policy.calls == r.steps
    np.testing.assert_allclose(robot.hold_position()[0], home[0], atol=0.02)
    store = bf.typestore()
    with Reader(tmp_path / "refused") as reader:
        conns = [c for c in reader.connections if c.topic == bf.TOPIC_EXECUTED_COMMAND]
        reasons = {
            store.deserialize_cdr(raw, c.msgtype).hold_reason
            for c, _t, raw in reader.messages(conns)
        }
    assert reasons <= {"chunk_jump", bf.HOLD_EPISODE_OVER} and "chunk_jump" in reasons, reasons


def test_in_process_rollout_on_the_graphs_chunk_schedule(robot, tmp_path: Path) -> None:
    """latency_rows = 2, lead_rows = 16: the first chunk runs at once from row 0 (the graph's
    arbiter waits for it); the next is requested with 16 rows left (step 9), from that step's
    observation, and takes over 2 ticks later at its row 2 (the overdue rows skipped); then every
    9 steps."""
    from rosbags.rosbag2 import Reader

    from habc_common import bag_format as bf

    robot.reset(seed=4)
    policy = ConstantPolicy(robot.hold_position())
    r = run_rollout(
        robot,
        seed=4,
        policy=policy,
        episode_id="timed",
        task=TASK,
        prompt=robot.prompt,
        bag_path=tmp_path / "timed",
        latency_rows=2,
        lead_rows=16,
    )
    store = bf.typestore()
    with Reader(tmp_path / "timed") as reader:
        conns = [c for c in reader.connections if c.topic == bf.TOPIC_EXECUTED_COMMAND]
        cmds = [store.deserialize_cdr(raw, c.msgtype) for c, _t, raw in reader.messages(conns)]
    seq_row = [(int(m.chunk_seq), int(m.chunk_row)) for m in cmds[:30]]
    assert seq_row[:11] == [(0, h) for h in range(11)]
    assert seq_row[11:20] == [(1, h) for h in range(2, 11)]
    assert seq_row[20:29] == [(2, h) for h in range(2, 11)]
    assert r.hold_steps == 0
    assert policy.calls == (r.steps - 1) // 9 + 1  # requests at steps 0, 9, 18, ...


def test_main_job_evaluates_on_50_poses_by_default() -> None:
    from habc_learner.main_job import StageResult, _parse

    assert _parse([]).eval_episodes == 50
    # 31 of 50: p̂ = 0.62, Wilson 95 % interval [0.482, 0.741]
    stage = StageResult("SFT", "c", 0, 31 / 50, 100.0, 50)
    assert stage.successes == 31 and stage.rate_text() == "62 % [48, 74]"


@pytest.mark.slow
def test_main_job_runs_end_to_end_and_resumes(tmp_path: Path, capsys) -> None:
    from habc_learner.main_job import main

    args = [
        "--out",
        str(tmp_path / "run"),
        "--demos",
        "3",
        "--sft-steps",
        "8",
        "--rounds",
        "1",
        "--rollouts",
        "2",
        "--round-steps",
        "4",
        "--eval-episodes",
        "2",
        "--batch-size",
        "32",
        "--threads",
        "1",
    ]
    assert main(args) == 0
    stages = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [s["stage"] for s in stages] == ["SFT", "habc r1"]
    assert stages[0]["learner_step"] == 8 and stages[1]["learner_step"] == 12
    assert stages[0]["checkpoint_id"] != stages[1]["checkpoint_id"]
    assert stages[0]["successes"] == round(2 * stages[0]["success_rate"])
    assert "(2 held-out object poses, 95 % Wilson interval)" in capsys.readouterr().out
    assert (tmp_path / "run" / "summary.png").stat().st_size > 1000
    bags = sorted(p.name for p in (tmp_path / "run" / "bags" / "round_01").iterdir())
    assert len(bags) == 2
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "bags").rglob("*.mcap")}
    # Run again: every bag is reused, training resumes at the step it reached.
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    again = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert again[1]["learner_step"] == 12

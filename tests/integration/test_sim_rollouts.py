"""In-process rollouts on the simulated robot write episode bags the learner reads back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from habc_learner.core.bag_reader import read_episode
from habc_learner.core.episode import HUMAN, POLICY, Outcome
from habc_learner.core.labeling import LabelingConfig, Source, label_episode
from habc_learner.sim_rollouts import run_rollout

pytestmark = pytest.mark.sim

TASK = "transfer_cube"


@pytest.fixture(scope="module")
def robot():
    from arx_x5_driver.core.factory import make_backend

    with make_backend("sim", task=TASK) as backend:
        yield backend


def _operator(rate: float = 1.0):
    from arx_x5_driver.core.operator import OperatorConfig, ScriptedOperator

    return ScriptedOperator.for_backend("sim", TASK, OperatorConfig(intervention_rate=rate))


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


def test_policy_rollout_with_takeover_tags_authority_and_labels_the_suffix_only(
    robot, tmp_path: Path
) -> None:
    obs = robot.reset(seed=5)
    policy = ConstantPolicy(obs.joint_positions)  # holds still: heading for failure
    r = run_rollout(
        robot,
        seed=5,
        policy=policy,
        operator=_operator(rate=1.0),
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


@pytest.mark.slow
def test_main_job_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
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
    assert (tmp_path / "run" / "summary.png").stat().st_size > 1000
    bags = sorted(p.name for p in (tmp_path / "run" / "bags" / "round_01").iterdir())
    assert len(bags) == 2
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "bags").rglob("*.mcap")}
    # Run again: every bag is reused, training resumes at the step it reached.
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    again = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert again[1]["learner_step"] == 12

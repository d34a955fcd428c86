"""The whole sim graph under habc-launch: episodes with takeovers are recorded with their
authority tags and outcomes, the learner trains on them, the policy server reloads the result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from habc_learner.core import bag_format as bf
from habc_learner.core.bag_reader import read_episode
from habc_learner.core.episode import HUMAN, NONE, POLICY

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]


def test_sim_graph_records_learns_and_hot_swaps(ros_env: dict[str, str], tmp_path: Path) -> None:
    from habc_learner.bringup_job import main

    out = tmp_path / "run"
    args = [
        "--out",
        str(out),
        "--demos",
        "4",
        "--sft-steps",
        "200",
        "--rounds",
        "1",
        "--episodes",
        "2",
        "--round-steps",
        "5",
        "--eval-episodes",
        "2",
        "--batch-size",
        "32",
        "--intervention-rate",
        "1.0",
    ]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    first, final = report["rounds"][0], report["rounds"][-1]
    # The learner's round produced a checkpoint the policy server now serves (hot swap).
    assert first["episodes"] == 2 and final["checkpoint_id"] != first["checkpoint_id"]
    assert final["learner_step"] == first["learner_step"] + 5
    state = json.loads((out / "learner" / "learner_state.json").read_text())
    assert state["rounds"] == 1 and len(state["consumed"]) == 4 + 2

    bags = sorted((out / "bags" / "rollouts").iterdir())
    assert len(bags) == 2
    took = 0
    for bag in bags:
        custom = bf.read_custom_data(bag)
        assert custom[bf.KEY_COMPLETE] == "true" and custom[bf.KEY_MARKED_BY] == "operator"
        ep = read_episode(bag)
        assert ep.outcome.value == custom[bf.KEY_OUTCOME] in ("success", "failure")
        # Steps are the arbiter's ticks of this episode only: 0..T-1 by construction of the
        # reader, within the simulator's 400-step limit plus the few ticks until the mark.
        assert 0 < ep.length <= 400 + 10
        human = (ep.authority == HUMAN).any(axis=1)
        if human.any():
            took += 1
            k = int(np.flatnonzero(human)[0])
            # The operator keeps authority from its takeover to the end; before it the policy
            # (or a hold while the first chunk came) was in control.
            assert human[k:].all()
            assert np.isin(ep.authority[:k], (POLICY, NONE)).all()
            assert (ep.learner_steps[:k][(ep.authority[:k] == POLICY).any(axis=1)] >= 0).all()
    assert took >= 1, "the scripted operator (rate 1.0) took over in no episode"
    assert (out / "report.png").stat().st_size > 1000
    assert "| r1 |" in (out / "report.md").read_text()

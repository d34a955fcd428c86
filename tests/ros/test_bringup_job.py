"""The whole sim graph under habc-launch: episodes with takeovers are recorded with their
authority tags and outcomes, the learner trains on them, the policy server reloads the result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from habc_common import bag_format as bf
from habc_learner.core.bag_reader import read_episode
from habc_learner.core.episode import HANDBACK, HUMAN, NONE, POLICY

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
    took = handbacks = 0
    for bag in bags:
        custom = bf.read_custom_data(bag)
        assert custom[bf.KEY_COMPLETE] == "true" and custom[bf.KEY_MARKED_BY] == "operator"
        ep = read_episode(bag)
        assert ep.outcome.value == custom[bf.KEY_OUTCOME] in ("success", "failure")
        # Steps are the ticks of this episode the driver executed: within the sim's limit.
        assert 0 < ep.length <= 400
        human = (ep.authority == HUMAN).any(axis=1)
        if human.any():
            took += 1
            k = int(np.flatnonzero(human)[0])
            # Before the first takeover the policy (or a hold while the first chunk came) was
            # in control; after it, every tag is one of the four, and every hand-back ramp
            # follows a takeover.
            assert np.isin(ep.authority[:k], (POLICY, NONE)).all()
            assert (ep.learner_steps[:k][(ep.authority[:k] == POLICY).any(axis=1)] >= 0).all()
            assert np.isin(ep.authority, (NONE, POLICY, HUMAN, HANDBACK)).all()
            ramp = (ep.authority == HANDBACK).any(axis=1)
            if ramp.any():
                assert int(np.flatnonzero(ramp)[0]) > k
            handbacks += int(ramp.any())
        # The reader dropped the arbiter's ticks after the episode's end (until the mark).
        assert ep.length <= int(custom[bf.KEY_NUM_STEPS])
    assert took >= 1, "the scripted operator (rate 1.0) took over in no episode"
    assert (out / "report.png").stat().st_size > 1000
    assert "| r1 |" in (out / "report.md").read_text()

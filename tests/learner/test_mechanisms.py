"""The three mechanism experiments, scaled down: the right answer is known by construction
(:mod:`habc_learner.core.mechanisms`), the tests assert its direction. The larger run is
``bench/bench_mechanisms.py``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from habc_learner.core import mechanisms as M
from habc_learner.core.episode import HUMAN, Outcome
from habc_learner.core.labeling import LabelingConfig, Source, label_episode

SMALL = dataclasses.replace(
    M.MechanismConfig(), episodes=40, train_steps=300, warmup_steps=100, samples=100
)


def test_point_world_episodes_are_what_they_claim() -> None:
    cfg = M.MechanismConfig(n=5, detour=2, mistake=3, episodes=6)
    eff = M.efficiency_episodes(dataclasses.replace(cfg, noise=0.0))
    assert [e.length for e in eff[:2]] == [5, 9]
    for e in eff:  # both paths end one step short of the goal and move onto it last
        np.testing.assert_allclose(e.proprio[-1] + e.actions[-1], [0.5, 0.0], atol=1e-6)
    episodes, mistakes = M.credit_episodes(cfg)
    assert mistakes == [1, 4]
    m = episodes[1]
    assert m.outcome is Outcome.SUCCESS and (m.authority[:3] != HUMAN).all()
    assert (m.authority[3:] == HUMAN).all() and (m.actions[:3, 0] < 0).all()
    assert episodes[2].outcome is Outcome.FAILURE
    labels = label_episode(m, LabelingConfig(horizon=4, min_human_steps=2))
    # Intervention-aware: the mistake's first window (steps 0-3, one human step) is unlabeled,
    # the next ones (>= 2 human steps of 4) are intervention windows, which imitate only their
    # human steps.
    assert list(labels.source[:3]) == [Source.UNLABELED, Source.INTERVENTION, Source.INTERVENTION]


def test_viability_habc_chooses_the_viable_behaviour_more_often_than_uniform_bc() -> None:
    res = M.run_viability(SMALL, ("uniform_bc", "habc"))
    uniform, habc = res["uniform_bc"], res["habc"]
    assert uniform["w_start_viable"] == pytest.approx(1.0)
    assert uniform["w_start_nonviable"] == pytest.approx(1.0)
    # The gate weighs the viable start windows above the non-viable ones ...
    assert habc["w_start_viable"] > 1.2 * habc["w_start_nonviable"], res
    # ... and the actor picks the viable behaviour more often.
    assert habc["viable_share"] > uniform["viable_share"], res


def test_efficiency_habc_is_more_direct_and_shorter_than_habc_v() -> None:
    res = M.run_efficiency(SMALL, ("habc_v", "habc"))
    v, habc = res["habc_v"], res["habc"]
    # All rollouts succeed: p_v ≈ 1, A_v ≈ 0, so HABC-V cannot tell the paths apart.
    assert abs(v["w_start_direct"] - v["w_start_detour"]) < 0.2
    assert habc["w_start_direct"] > 1.5 and habc["w_start_detour"] < 0.5
    assert habc["direct_share"] > v["direct_share"] + 0.2, res
    assert habc["success"] > 0.5
    assert habc["mean_success_length"] < v["mean_success_length"], res


def test_credit_naive_labelling_imitates_the_mistake_and_aware_does_not() -> None:
    res = M.run_credit(SMALL, ("uniform_bc+naive", "uniform_bc", "habc"))
    naive, aware, habc = res["uniform_bc+naive"], res["uniform_bc"], res["habc"]
    assert naive["w_mistake"] == pytest.approx(1.0)
    assert aware["w_mistake"] == 0.0 and habc["w_mistake"] == 0.0
    assert naive["repeat_share"] > 0.2, res
    assert aware["repeat_share"] < naive["repeat_share"] / 4, res
    assert habc["repeat_share"] < naive["repeat_share"] / 4, res

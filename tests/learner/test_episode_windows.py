"""Episode validation, synthetic generators, windows (padding, next state, Recap returns)."""

from __future__ import annotations

import numpy as np
import pytest

from habc_learner.core.episode import (
    HUMAN,
    NONE,
    POLICY,
    SCENARIOS,
    Episode,
    Outcome,
    scenario_episode,
    synthetic_episode,
)
from habc_learner.core.labeling import Source
from habc_learner.core.windows import WindowConfig, discounted_returns, episode_windows, make_window


def _arrays(length: int = 5, d: int = 4, arms: int = 1) -> dict:
    return dict(
        episode_id="e",
        task_id="t",
        prompt="p",
        timestamps=np.arange(length) * 0.1,
        proprio=np.zeros((length, 3)),
        actions=np.zeros((length, d)),
        authority=np.ones((length, arms), dtype=np.uint8),
        checkpoint_ids=np.array(["k"] * length, dtype=object),
        learner_steps=np.zeros(length, dtype=np.int64),
        outcome="success",
        arm_slices=((0, d),) if arms == 1 else ((0, d // 2), (d // 2, d)),
    )


def test_authority_codes_match_executed_command_msg() -> None:
    assert (NONE, POLICY, HUMAN) == (0, 1, 2)


def test_episode_accepts_metaworld_shapes_and_defaults_success_step() -> None:
    ep = Episode(**_arrays())
    assert ep.length == 5 and ep.action_dim == 4 and ep.n_arms == 1
    assert ep.success_step == 4
    assert ep.authority.dtype == np.uint8


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"proprio": np.zeros((4, 3))}, "proprio must be"),
        ({"actions": np.zeros((5,))}, "actions must be"),
        ({"authority": np.full((5, 1), 7, dtype=np.uint8)}, r"authority values \[7\]"),
        ({"authority": np.ones((5, 2), dtype=np.uint8)}, "n_arms=1"),
        ({"arm_slices": ((0, 3),)}, "cover 3 dims"),
        ({"arm_slices": ((1, 4),)}, "contiguous"),
        ({"outcome": "won"}, "'won' is not one of"),
        ({"success_step": 9}, "success_step=9"),
        ({"timestamps": np.array([0.0, 0.2, 0.1, 0.3, 0.4])}, "non-decreasing"),
        ({"learner_steps": np.zeros(3)}, "learner_steps must be"),
        ({"images": {"top": np.zeros((5, 8, 8, 3))}}, "callable loader"),
    ],
)
def test_episode_validation_names_the_bad_value(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Episode(**{**_arrays(), **change})


def test_failure_with_success_step_rejected() -> None:
    with pytest.raises(ValueError, match="success_step=2 given for outcome 'failure'"):
        Episode(**{**_arrays(), "outcome": "failure", "success_step": 2})


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenarios_are_deterministic_from_seed(scenario: str) -> None:
    a = scenario_episode(scenario, seed=3, length=80)
    b = scenario_episode(scenario, seed=3, length=80)
    c = scenario_episode(scenario, seed=4, length=80)
    assert np.array_equal(a.actions, b.actions) and np.array_equal(a.authority, b.authority)
    assert not np.array_equal(a.actions, c.actions)


def test_images_are_loaded_lazily() -> None:
    calls: list[np.ndarray] = []
    ep = scenario_episode("autonomous_success", length=60, cameras=("top",), image_size=(16, 16))
    loader = ep.images["top"]
    ep.images["top"] = lambda steps: calls.append(steps) or loader(steps)
    assert calls == []
    imgs = ep.load_images("top", np.array([0, 5]))
    assert imgs.shape == (2, 16, 16, 3) and imgs.dtype == np.uint8
    assert len(calls) == 1


def test_window_padding_and_next_state() -> None:
    ep = synthetic_episode([("policy", 60)], "success", arm_slices=((0, 4),))
    cfg = WindowConfig(horizon=50)
    w = make_window(ep, 30, cfg)
    assert w.actions.shape == (50, 4)
    assert w.pad_mask[:30].sum() == 0 and w.pad_mask[30:].all()
    assert np.array_equal(w.actions[30:], np.repeat(ep.actions[-1:], 20, axis=0))
    assert w.next_index == 31 and w.has_next and w.source == Source.ROLLOUT_SUCCESS
    last = make_window(ep, 59, cfg)
    assert not last.has_next
    with pytest.raises(ValueError, match="anchor=60"):
        make_window(ep, 60, cfg)


def test_stride_and_success_step_clip_next_index() -> None:
    ep = synthetic_episode([("policy", 30)], "success", success_step=20, arm_slices=((0, 4),))
    table = episode_windows(ep, WindowConfig(horizon=10, min_human_steps=5, stride=3))
    assert table.next_index[:4].tolist() == [3, 4, 5, 6]
    assert table.next_index[18:22].tolist() == [20, 20, 23, 24]
    assert table.step_cost[18:20].tolist() == [2.0, 1.0]
    assert table.success_done[19:21].tolist() == [False, True]
    assert table.steps_to_go[[0, 20, 25]].tolist() == [20.0, 0.0, 0.0]


def test_recap_rewards_and_returns() -> None:
    assert discounted_returns(np.array([-1.0, -1.0, -100.0]), 0.5).tolist() == [
        -26.5,
        -51.0,
        -100.0,
    ]
    fail = synthetic_episode([("policy", 4)], Outcome.FAILURE, arm_slices=((0, 2),))
    t = episode_windows(fail, WindowConfig(horizon=4, min_human_steps=2, gamma=0.5))
    assert t.recap_mc_return.tolist() == [
        -1.0 - 0.5 - 0.25 - 0.125 * 100,
        -1.5 - 0.25 * 100,
        -1.0 - 50.0,
        -100.0,
    ]
    assert t.recap_reward.tolist() == [-1.0, -1.0, -1.0, -100.0]
    ok = synthetic_episode([("policy", 4)], "success", arm_slices=((0, 2),))
    t = episode_windows(ok, WindowConfig(horizon=4, min_human_steps=2, gamma=0.5))
    assert t.recap_mc_return.tolist() == [-1.75, -1.5, -1.0, 0.0]
    unknown = synthetic_episode([("policy", 4)], "unknown", arm_slices=((0, 2),))
    assert np.isnan(
        episode_windows(unknown, WindowConfig(horizon=4, min_human_steps=2)).recap_mc_return
    ).all()


def test_window_producer_step_falls_back_to_episode_checkpoint_on_human_steps() -> None:
    ep = synthetic_episode(
        [("policy", 20), ("human", 20)], "success", learner_step=700, arm_slices=((0, 2),)
    )
    table = episode_windows(ep, WindowConfig(horizon=10, min_human_steps=5))
    assert (table.producer_step == 700).all()
    demo = synthetic_episode(
        [("human", 20)], "success", is_demonstration=True, arm_slices=((0, 2),)
    )
    assert (
        episode_windows(demo, WindowConfig(horizon=10, min_human_steps=5)).producer_step == -1
    ).all()

"""Which windows each iRe-VLA stage may sample, and the RL returns attached to them."""

from __future__ import annotations

import numpy as np
import pytest

from habc_learner.core.episode import POLICY, Outcome, synthetic_episode
from habc_learner.core.ire_vla import IreVlaConfig, stage_pools
from habc_learner.core.labeling import Source, post_intervention_suffix_start, step_controllers
from habc_policy.core.configuration_flow import FlowPolicyConfig

from .helpers import add_scenarios, make_config, make_store

GAMMA = 0.99


@pytest.fixture
def store(tmp_path, tiny_policy_config: FlowPolicyConfig, tiny_critic_config):
    # 200 steps: long enough for policy windows before a takeover that are not intervention
    # windows (they need fewer than 10 human steps among their 50).
    config = make_config(tmp_path, tiny_policy_config, tiny_critic_config)
    return make_store(config, length=200, per_scenario=1)


def _episode_of(store, rows: np.ndarray) -> list:
    episodes = store.episodes
    return [episodes[i] for i in store.table.episode_index[rows]]


def test_rl_pool_is_policy_windows_with_sparse_returns(store) -> None:
    pools = stage_pools(store, IreVlaConfig(gamma=GAMMA))
    table = store.table
    src = table.source[pools.rl_rows]
    assert set(np.unique(src)) == {
        Source.ROLLOUT_SUCCESS,
        Source.ROLLOUT_FAILURE,
        Source.UNLABELED,
    }
    # Never a demonstration or a human-controlled (intervention) window.
    assert not np.isin(src, [Source.DEMO, Source.INTERVENTION]).any()
    success = src == Source.ROLLOUT_SUCCESS
    steps = table.steps_to_go[pools.rl_rows]
    np.testing.assert_allclose(pools.rl_returns[success], GAMMA ** steps[success], rtol=1e-5)
    assert (pools.rl_returns[src == Source.ROLLOUT_FAILURE] == 0).all()
    # Unlabeled windows enter only as pre-takeover policy windows, with return 0.
    assert (pools.rl_takeover == (src == Source.UNLABELED)).all()
    assert (pools.rl_returns[pools.rl_takeover] == 0).all()
    for row, episode in zip(
        pools.rl_rows[pools.rl_takeover], _episode_of(store, pools.rl_rows[pools.rl_takeover])
    ):
        anchor = table.anchor[row]
        assert episode.human_steps.any() and episode.outcome.is_labeled
        assert anchor < post_intervention_suffix_start(episode.authority)
        assert step_controllers(episode.authority)[anchor] == POLICY


def test_takeover_windows_can_be_left_out(store) -> None:
    pools = stage_pools(store, IreVlaConfig(rl_takeover_as_failure=False))
    src = store.table.source[pools.rl_rows]
    assert set(np.unique(src)) == {Source.ROLLOUT_SUCCESS, Source.ROLLOUT_FAILURE}
    assert not pools.rl_takeover.any()


def test_rl_latest_keeps_only_the_newest_checkpoint(
    tmp_path, tiny_policy_config, tiny_critic_config
) -> None:
    config = make_config(tmp_path, tiny_policy_config, tiny_critic_config)
    scenarios = ("demo", "autonomous_success", "autonomous_failure")
    store = make_store(config, scenarios=scenarios, learner_step=100)
    add_scenarios(store, config, scenarios=scenarios[1:], learner_step=300, seed0=50)
    latest = stage_pools(store, IreVlaConfig(rl_data="latest"))
    every = stage_pools(store, IreVlaConfig(rl_data="all"))
    assert set(store.table.producer_step[latest.rl_rows]) == {300}
    assert set(store.table.producer_step[every.rl_rows]) == {100, 300}
    # The SL stage keeps every success, whatever checkpoint produced it.
    assert np.array_equal(latest.sl_rows, every.sl_rows)
    assert {100, 300} <= set(store.table.producer_step[latest.sl_rows])


def test_sl_pool_is_demos_and_successes_only(store) -> None:
    pools = stage_pools(store, IreVlaConfig())
    table = store.table
    src = table.source[pools.sl_rows]
    assert set(np.unique(src)) == {Source.DEMO, Source.ROLLOUT_SUCCESS}
    for episode in _episode_of(store, pools.sl_rows):
        assert episode.outcome is Outcome.SUCCESS
    # Every demo and every labeled success window is in it.
    expected = np.flatnonzero(np.isin(table.source, [Source.DEMO, Source.ROLLOUT_SUCCESS]))
    assert np.array_equal(pools.sl_rows, expected)


def test_sl_interventions_only_from_successful_episodes(store) -> None:
    pools = stage_pools(store, IreVlaConfig(sl_include_interventions=True))
    table = store.table
    src = table.source[pools.sl_rows]
    assert Source.INTERVENTION in set(np.unique(src))
    for episode in _episode_of(store, pools.sl_rows):
        assert episode.outcome is Outcome.SUCCESS
    failed_interventions = np.flatnonzero(
        (table.source == Source.INTERVENTION) & ~table.episode_success
    )
    assert failed_interventions.size > 0  # the store has some: the check above can fail
    assert not np.isin(failed_interventions, pools.sl_rows).any()


def test_failed_demonstration_is_not_sl_data(
    tmp_path, tiny_policy_config, tiny_critic_config
) -> None:
    config = make_config(tmp_path, tiny_policy_config, tiny_critic_config)
    store = make_store(config, scenarios=("demo",), per_scenario=1)
    store.add_episode(
        synthetic_episode(
            [("human", 80)], "failure", seed=9, episode_id="bad-demo", is_demonstration=True
        )
    )
    pools = stage_pools(store, IreVlaConfig())
    assert set(store.table.episode_index[pools.sl_rows]) == {0}
    assert pools.rl_rows.size == 0

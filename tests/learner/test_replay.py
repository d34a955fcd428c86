"""Replay store: stale cutoff, source mixing, batch contents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from habc_learner.core.episode import scenario_episode, synthetic_episode
from habc_learner.core.labeling import Source
from habc_learner.core.replay import ReplayConfig, ReplayStore, is_heldout_episode
from habc_learner.core.windows import WindowConfig


def _store(**kw) -> ReplayStore:
    return ReplayStore(ReplayConfig(**kw))


def test_stale_cutoff_drops_exactly_the_old_windows() -> None:
    store = _store(stale_cutoff=10_000)
    steps = {"a": 0, "b": 9_999, "c": 10_000, "d": 15_000, "e": 20_000}
    for name, step in steps.items():
        store.add_episode(
            synthetic_episode([("policy", 60)], "success", learner_step=step, episode_id=name)
        )
    # Intervention windows of an old rollout go stale too; demos never do.
    store.add_episode(
        synthetic_episode(
            [("policy", 20), ("human", 40)], "success", learner_step=0, episode_id="old-interv"
        )
    )
    store.add_episode(
        synthetic_episode([("human", 60)], "success", is_demonstration=True, episode_id="demo")
    )
    before = len(store)
    ep_ids = [e.episode_id for e in store.episodes]
    dropped = store.drop_stale(current_step=20_000)
    # 20000 - step > 10000 <=> step < 10000: episodes a, b and old-interv.
    assert dropped == 60 + 60 + 60
    assert len(store) == before - dropped
    kept = {ep_ids[i] for i in np.unique(store.table.episode_index)}
    assert kept == {"c", "d", "e", "demo"}
    assert store.drop_stale(current_step=20_000) == 0
    assert store.num_dropped == dropped
    # Exactly one step later, checkpoint "c" (10000) is stale as well.
    assert store.drop_stale(current_step=20_001) == 60


def test_stale_cutoff_can_spare_interventions() -> None:
    store = _store(stale_sources=("rollout_success", "rollout_failure", "unlabeled"))
    store.add_episode(synthetic_episode([("policy", 20), ("human", 40)], "success", learner_step=0))
    n_interv = len(store.source_indices("intervention"))
    store.drop_stale(50_000)
    assert len(store) == n_interv > 0
    with pytest.raises(ValueError, match="demo"):
        ReplayConfig(stale_sources=("demo",))


def _mixed_store() -> ReplayStore:
    store = _store()
    for i, sc in enumerate(
        ["demo", "autonomous_success", "autonomous_failure", "takeover_success"] * 3
    ):
        store.add_episode(scenario_episode(sc, seed=i, length=100))
    return store


def test_sampling_follows_mixing_ratios() -> None:
    store = _mixed_store()
    rng = np.random.default_rng(0)
    rows = store.sample_indices(20_000, {"demo": 0.5, "intervention": 0.5}, rng)
    src = store.table.source[rows]
    assert set(np.unique(src)) == {Source.DEMO, Source.INTERVENTION}
    assert abs((src == Source.DEMO).mean() - 0.5) < 0.02
    # Proportional: uniform over the union of the listed sources.
    rows = store.sample_indices(20_000, {"demo": 1, "rollout_failure": 1}, rng, proportional=True)
    counts = store.source_counts()
    expected = counts["demo"] / (counts["demo"] + counts["rollout_failure"])
    assert abs((store.table.source[rows] == Source.DEMO).mean() - expected) < 0.02
    # An empty source is skipped, the others renormalized.
    rows = store.sample_indices(100, {"demo": 1.0, "unlabeled": 0.0}, rng)
    assert (store.table.source[rows] == Source.DEMO).all()
    with pytest.raises(ValueError, match="no windows to sample"):
        _store().sample_indices(4, {"demo": 1.0}, rng)


def test_fixed_shares_pin_a_source_whatever_the_counts() -> None:
    store = _mixed_store()
    counts = store.source_counts()
    mix = {"demo": 1.0, "rollout_success": 1.0, "rollout_failure": 1.0, "intervention": 1.0}
    rng = np.random.default_rng(1)
    rows = store.sample_indices(40_000, mix, rng, proportional=True, fixed_shares={"demo": 0.5})
    src = store.table.source[rows]
    assert abs((src == Source.DEMO).mean() - 0.5) < 0.01
    # The other half is proportional to the online sources' window counts.
    online = counts["rollout_success"] + counts["rollout_failure"] + counts["intervention"]
    for name, s in (
        ("rollout_failure", Source.ROLLOUT_FAILURE),
        ("intervention", Source.INTERVENTION),
    ):
        assert abs((src == s).mean() - 0.5 * counts[name] / online) < 0.01
    # Without the pin, demos get their share of the union (not 0.5).
    free = store.sample_indices(40_000, mix, rng, proportional=True)
    union = sum(counts[k] for k in mix)
    assert abs((store.table.source[free] == Source.DEMO).mean() - counts["demo"] / union) < 0.01
    assert abs(counts["demo"] / union - 0.5) > 0.05
    # Only the pinned source has windows: it takes the whole batch.
    demo_only = _store()
    demo_only.add_episode(scenario_episode("demo", seed=0, length=100))
    rows = demo_only.sample_indices(64, mix, rng, proportional=True, fixed_shares={"demo": 0.5})
    assert (demo_only.table.source[rows] == Source.DEMO).all()
    with pytest.raises(ValueError, match="fixed_shares"):
        store.sample_indices(4, mix, rng, fixed_shares={"demo": 1.0})


def test_demohalf_variant_pins_half_of_habc_batches_to_demos() -> None:
    from habc_learner.core.methods import MethodConfig, get_method
    from habc_learner.protocol.config import ProtocolConfig, method_config

    method = method_config(ProtocolConfig(task="transfer_cube"), "habc+demohalf")
    assert method.fixed_shares == (("demo", 0.5),) and method.proportional
    assert get_method("habc").fixed_shares == ()
    # +nogate: g ≡ 1 all run long, even when the run sets a warmup for every method
    cfg = ProtocolConfig(task="transfer_cube", warmup_steps=100)
    assert method_config(cfg, "habc+nogate").warmup_steps == 10**12
    assert method_config(cfg, "habc").warmup_steps == 100
    with pytest.raises(ValueError, match="fixed share"):
        MethodConfig(
            name="x", description="", mixing=(("demo", 1.0),), fixed_shares=(("intervention", 0.5),)
        )


def test_sampling_is_seeded() -> None:
    store = _mixed_store()
    mix = {"demo": 1.0, "rollout_success": 1.0}
    a = store.sample_indices(64, mix, np.random.default_rng(7))
    b = store.sample_indices(64, mix, np.random.default_rng(7))
    assert np.array_equal(a, b)


def test_batch_tensors_shapes_and_masks() -> None:
    store = _mixed_store()
    rows = np.concatenate(
        [store.source_indices("intervention")[:3], store.source_indices("rollout_success")[-2:]]
    )
    batch = store.gather(rows)
    assert batch.actions.shape == (5, 50, 14) and batch.action_mask.shape == (5, 50, 14)
    assert batch.proprio.shape == (5, 15) and batch.prompt_tokens.dtype == torch.int64
    assert batch.images == {} and batch.source.tolist()[:3] == [Source.INTERVENTION] * 3
    # The last rollout-success window is anchored at the episode's last step: 49 padded rows.
    assert batch.pad_mask[-1].sum() == 49 and not batch.has_next[-1]
    assert not batch.action_mask[-1, 1:].any() and batch.action_mask[-1, 0].all()
    # Intervention windows only target human-controlled steps.
    ep_idx = int(store.table.episode_index[rows[0]])
    anchor = int(store.table.anchor[rows[0]])
    ep = store.episodes[ep_idx]
    steps = np.minimum(np.arange(anchor, anchor + 50), ep.length - 1)
    human = (ep.authority[steps] == 2).any(axis=1) & (np.arange(anchor, anchor + 50) < ep.length)
    assert np.array_equal(batch.action_mask[0].any(dim=1).numpy(), human)


def test_images_gathered_for_anchor_and_next_state() -> None:
    store = _store(cameras=("top", "wrist"))
    store.add_episode(
        scenario_episode(
            "autonomous_success", length=60, cameras=("top", "wrist"), image_size=(12, 12)
        )
    )
    batch = store.sample(8, {"rollout_success": 1.0}, np.random.default_rng(0))
    assert batch.images["top"].shape == (8, 12, 12, 3) and batch.images["top"].dtype == torch.uint8
    assert set(batch.next_images) == {"top", "wrist"}
    with pytest.raises(ValueError, match="lacks cameras"):
        store.add_episode(scenario_episode("autonomous_success", length=60, seed=1))


def test_store_rejects_mismatched_episodes() -> None:
    store = _store()
    store.add_episode(synthetic_episode([("policy", 60)], "success", episode_id="x"))
    with pytest.raises(ValueError, match="already in the store"):
        store.add_episode(synthetic_episode([("policy", 60)], "success", episode_id="x"))
    with pytest.raises(ValueError, match="action_dim"):
        store.add_episode(
            synthetic_episode([("policy", 60)], "success", arm_slices=((0, 4),), episode_id="y")
        )


def test_heldout_split_is_stable_and_excludes_demos() -> None:
    ids = [f"ep-{i}" for i in range(2000)]
    frac = np.mean([is_heldout_episode(i, 0.1) for i in ids])
    assert 0.07 < frac < 0.13
    store = ReplayStore(ReplayConfig(heldout_fraction=0.5, window=WindowConfig()))
    for i in range(10):
        store.add_episode(scenario_episode("autonomous_failure", seed=i, length=60))
    store.add_episode(scenario_episode("demo", seed=99, length=60))
    held = store.source_indices("rollout_failure", "heldout")
    train = store.source_indices("rollout_failure", "train")
    assert len(held) + len(train) == 600 and len(held) > 0 and len(train) > 0
    assert len(store.source_indices("demo", "heldout")) == 0

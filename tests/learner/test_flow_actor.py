"""Flow matching functions, the Euler sampler on analytic cases, and the actor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from habc_policy.core import flow_matching as fm
from habc_policy.core.configuration_flow import FlowPolicyConfig
from habc_policy.core.modeling_flow import FlowPolicy, tokenize_prompt
from habc_policy.core.normalize import Normalizer, compute_stats


def test_interpolation_and_target_velocity() -> None:
    a = torch.full((2, 3, 2), 2.0)
    eps = torch.full((2, 3, 2), -1.0)
    tau = torch.tensor([0.0, 0.25])
    x = fm.interpolate(a, eps, tau)
    assert torch.allclose(x[0], eps[0]) and torch.allclose(x[1], torch.full((3, 2), -0.25))
    assert torch.allclose(fm.target_velocity(a, eps), torch.full((2, 3, 2), 3.0))


def test_velocity_from_clean_chunk_is_exact_for_the_true_chunk() -> None:
    g = torch.Generator().manual_seed(0)
    a, eps = torch.randn(4, 5, 3, generator=g), torch.randn(4, 5, 3, generator=g)
    tau = torch.tensor([0.0, 0.3, 0.7, 0.95])
    v = fm.velocity_from_clean(a, fm.interpolate(a, eps, tau), tau, 0.05)
    assert torch.allclose(v, fm.target_velocity(a, eps), atol=1e-5)
    # 1 - τ is clamped at 0.05 near the data end.
    v_end = fm.velocity_from_clean(
        a[:1], fm.interpolate(a[:1], eps[:1], torch.tensor([0.99])), torch.tensor([0.99])
    )
    assert torch.allclose(v_end, 0.01 / 0.05 * fm.target_velocity(a[:1], eps[:1]), atol=1e-5)


def test_euler_sampler_constant_velocity_is_exact() -> None:
    noise = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(1))
    c = torch.linspace(-1, 1, 8).reshape(1, 4, 2)
    out = fm.euler_sample(lambda x, t: c.expand_as(x), noise, num_steps=10)
    assert torch.allclose(out, noise + c, atol=1e-6)
    # The straight path: v = A* − ε transports the noise exactly onto A*.
    target = torch.ones(3, 4, 2)
    out = fm.euler_sample(lambda x, t: target - noise, noise, num_steps=10)
    assert torch.allclose(out, target, atol=1e-6)


def test_euler_sampler_with_clean_chunk_prediction_lands_on_the_point_mass() -> None:
    # For data concentrated at A*, the optimal clean-chunk predictor is Â = A*; its Euler
    # integration reaches A* exactly at the last step (Δτ = 1 − τ_9 = 0.1 > 0.05 clamp).
    target = torch.tensor([[[0.5, -2.0], [3.0, 1.0]]])
    noise = torch.randn(1, 2, 2, generator=torch.Generator().manual_seed(2))
    out = fm.euler_sample(lambda x, t: fm.velocity_from_clean(target, x, t), noise, num_steps=10)
    assert torch.allclose(out, target, atol=1e-5)


def test_beta_schedule_favours_noisy_times() -> None:
    g = torch.Generator().manual_seed(0)
    tau = fm.sample_tau(20_000, "beta", g)
    assert tau.min() >= 0.0 and tau.max() <= 1.0
    assert tau.mean() < 0.5  # Beta(1.5, 1) on the noise axis: mass near τ = 0
    with pytest.raises(ValueError, match="uniform"):
        fm.sample_tau(3, "cosine")


def test_masked_mse_per_sample_is_unreduced_and_masked() -> None:
    pred = torch.zeros(2, 2, 2)
    target = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[[True, False], [False, False]], [[True, True], [True, True]]])
    # Over all H·d = 4 entries (Eq. 1 as written): sample 0 has one target entry, error 1.
    assert fm.masked_mse_per_sample(pred, target, mask, "all_entries").tolist() == [0.25, 1.0]
    # Over its target entries (default): sample 0 is 1/1, sample 1 is 4/4.
    assert fm.masked_mse_per_sample(pred, target, mask).tolist() == [1.0, 1.0]
    # A window with no target entry has loss 0 (not NaN).
    none = torch.zeros(1, 2, 2, dtype=torch.bool)
    assert fm.masked_mse_per_sample(pred[:1], target[:1], none).tolist() == [0.0]
    with pytest.raises(ValueError, match="entry_mean"):
        fm.masked_mse_per_sample(pred, target, mask, "median")


def _tiny(**kw) -> FlowPolicyConfig:
    base = dict(
        horizon=4,
        action_dim=2,
        proprio_dim=3,
        feature_dim=32,
        hidden_dim=64,
        num_blocks=2,
        time_embed_dim=16,
        prompt_dim=8,
        prompt_buckets=32,
    )
    return FlowPolicyConfig(**{**base, **kw})


@pytest.mark.parametrize(
    ("parametrization", "loss_ratio", "max_err"),
    [("clean_chunk", 0.01, 0.05), ("velocity", 0.35, 0.35)],
)
def test_tiny_actor_overfits_one_batch(
    parametrization: str, loss_ratio: float, max_err: float
) -> None:
    # The velocity target A − ε keeps irreducible variance (ε is random every step); the sampled
    # chunks must land on the batch's chunks either way.
    torch.manual_seed(0)
    cfg = _tiny(parametrization=parametrization)
    policy = FlowPolicy(cfg)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(8, 3, generator=g)
    tokens = torch.from_numpy(np.stack([tokenize_prompt("pick", 32, 16)] * 8))
    actions = torch.randn(8, 4, 2, generator=g)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(400):
        per_sample, _ = policy.compute_loss(q, tokens, actions, generator=g)
        loss = per_sample.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-20:]) < loss_ratio * np.mean(losses[:20])
    sampled = policy.sample_actions(q, tokens, generator=torch.Generator().manual_seed(5))
    err = (sampled - actions).abs().mean().item()
    assert err < max_err, err  # E|A| ≈ 0.8 for these N(0, 1) chunks


def test_sampling_is_seeded_and_deterministic() -> None:
    torch.manual_seed(0)
    policy = FlowPolicy(_tiny())
    q = torch.randn(2, 3)
    tokens = torch.zeros(2, 16, dtype=torch.int64)
    a = policy.sample_actions(q, tokens, generator=torch.Generator().manual_seed(3))
    b = policy.sample_actions(q, tokens, generator=torch.Generator().manual_seed(3))
    c = policy.sample_actions(q, tokens, generator=torch.Generator().manual_seed(4))
    assert a.shape == (2, 4, 2) and torch.equal(a, b) and not torch.equal(a, c)


def test_actor_with_cameras_and_prompt() -> None:
    torch.manual_seed(0)
    cfg = _tiny(camera_names=("top", "left", "right"), image_size=(32, 32), cnn_channels=(8, 16))
    policy = FlowPolicy(cfg)
    imgs = {c: torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8) for c in cfg.camera_names}
    tokens = torch.from_numpy(np.stack([tokenize_prompt("open the bag", 32, 16)] * 2))
    per_sample, feats = policy.compute_loss(
        torch.randn(2, 3), tokens, torch.randn(2, 4, 2), images=imgs
    )
    assert per_sample.shape == (2,) and feats.shape == (2, 32)
    with pytest.raises(ValueError, match="missing images for cameras"):
        policy.encode(torch.randn(2, 3), tokens, {"top": imgs["top"]})


def test_prompt_tokens_are_stable_and_distinguish_prompts() -> None:
    a = tokenize_prompt("Pick up the Cube!", 1024, 8)
    assert a.tolist() == tokenize_prompt("pick up the cube", 1024, 8).tolist()
    assert a[4:].tolist() == [0, 0, 0, 0] and (a[:4] > 0).all()
    assert not np.array_equal(a, tokenize_prompt("open the drawer", 1024, 8))


def test_normalizer_floors_std_and_round_trips() -> None:
    x = np.stack([np.linspace(0, 1, 100), np.full(100, 3.0)], axis=1)
    stats = compute_stats(x)
    assert stats.std[1] == pytest.approx(1e-2)
    norm = Normalizer(stats, stats)
    t = torch.from_numpy(x[:5].astype(np.float32))
    assert torch.allclose(norm.unnormalize_action(norm.normalize_action(t)), t, atol=1e-5)
    assert torch.isfinite(norm.normalize_proprio(t)).all()


def test_config_validation_and_arbitrary_dims() -> None:
    with pytest.raises(ValueError, match="parametrization='noise'"):
        FlowPolicyConfig(parametrization="noise")
    with pytest.raises(ValueError, match="action_dim must be > 0"):
        FlowPolicyConfig(action_dim=0)
    cfg = FlowPolicyConfig(action_dim=4, proprio_dim=39, horizon=50)
    assert FlowPolicyConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown FlowPolicyConfig keys"):
        FlowPolicyConfig.from_dict({"width": 3})


def test_sampled_chunks_stay_inside_the_demonstrated_action_range(tmp_path) -> None:
    """An untrained actor samples wild chunks; the served policy clips them to the range of
    the training actions (the normalizer's low/high), and the range survives the checkpoint."""
    import numpy as np
    import torch

    from habc_policy.core.checkpoint import load_policy, save_policy
    from habc_policy.core.configuration_flow import FlowPolicyConfig
    from habc_policy.core.modeling_flow import FlowPolicy
    from habc_policy.core.normalize import Normalizer, compute_stats

    torch.manual_seed(0)
    cfg = FlowPolicyConfig(
        horizon=8, action_dim=3, proprio_dim=2, hidden_dim=32, num_blocks=1, feature_dim=16
    )
    rng = np.random.default_rng(0)
    actions = rng.uniform([0.0, -1.0, 5.0], [1.0, 1.0, 5.5], size=(500, 3))
    stats = compute_stats(actions)
    np.testing.assert_allclose(stats.low, actions.min(0), rtol=1e-6)
    np.testing.assert_allclose(stats.high, actions.max(0), rtol=1e-6)
    # A tiny action std makes the untrained network's outputs land far outside the range.
    wide = type(stats)(stats.mean, stats.std * 50, stats.low, stats.high)
    normalizer = Normalizer(compute_stats(rng.standard_normal((100, 2))), wide)
    save_policy(tmp_path / "ckpt", FlowPolicy(cfg), normalizer, learner_step=1)
    policy = load_policy(tmp_path / "ckpt")
    chunk = policy.sample_actions(np.zeros(2, np.float32), "go", seed=3)
    assert chunk.shape == (8, 3)
    assert (chunk >= stats.low - 1e-6).all() and (chunk <= stats.high + 1e-6).all()
    unclipped = normalizer.unnormalize_action(torch.randn(8, 3) * 3).numpy()
    assert (unclipped > stats.high).any() or (unclipped < stats.low).any()

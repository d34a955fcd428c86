"""iRe-VLA's pure pieces: stage schedule, returns, FPO ratio, PPO-clip, value loss, registry."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from habc_learner.core import ire_vla as I
from habc_learner.core import methods as M
from habc_learner.core.trainer import TrainerConfig
from habc_policy.core.configuration_flow import FlowPolicyConfig
from habc_policy.core.modeling_flow import FlowPolicy


# ------------------------------------------------------------------------------ schedule
def test_stage_schedule_cycles_rl_then_sl() -> None:
    assert [I.stage_of_round(r, 2, 1) for r in range(7)] == [
        "rl",
        "rl",
        "sl",
        "rl",
        "rl",
        "sl",
        "rl",
    ]
    assert [I.stage_of_round(r, 1, 3) for r in range(5)] == ["rl", "sl", "sl", "sl", "rl"]
    assert {I.stage_of_round(r, 0, 1) for r in range(4)} == {"sl"}
    assert {I.stage_of_round(r, 1, 0) for r in range(4)} == {"rl"}
    assert I.IreVlaConfig(rl_rounds_per_cycle=2, sl_rounds_per_cycle=1).stage(2) == "sl"
    with pytest.raises(ValueError, match="round_index must be >= 0"):
        I.stage_of_round(-1, 1, 1)


def test_config_validation_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match=r"rl_rounds_per_cycle \+ sl_rounds_per_cycle"):
        I.IreVlaConfig(rl_rounds_per_cycle=0, sl_rounds_per_cycle=0)
    with pytest.raises(ValueError, match="sl_rounds_per_cycle must be an int >= 0, got -1"):
        I.IreVlaConfig(sl_rounds_per_cycle=-1)
    with pytest.raises(ValueError, match=r"rl_data 'replay' is not one of \('latest', 'all'\)"):
        I.IreVlaConfig(rl_data="replay")
    with pytest.raises(ValueError, match=r"rl_clip must be in \(0, 1\), got 1.5"):
        I.IreVlaConfig(rl_clip=1.5)
    with pytest.raises(ValueError, match="rl_mc_samples must be >= 1"):
        I.IreVlaConfig(rl_mc_samples=0)
    with pytest.raises(ValueError, match="gamma must be in"):
        I.IreVlaConfig(gamma=0.0)


# ------------------------------------------------------------------------------ equations
def test_sparse_success_return() -> None:
    success = np.array([True, True, True, False, False])
    steps_to_go = np.array([0.0, 1.0, 10.0, np.nan, np.nan])
    g = I.sparse_success_return(success, steps_to_go, gamma=0.9)
    np.testing.assert_allclose(g, [1.0, 0.9, 0.9**10, 0.0, 0.0], rtol=1e-6)
    assert g.dtype == np.float32


def test_fpo_log_ratio() -> None:
    old = torch.tensor([[1.0, 2.0], [0.5, 0.5], [3.0, 3.0]])
    new = torch.tensor([[1.0, 2.0], [0.3, 0.1], [3.5, 3.5]], requires_grad=True)
    log_r = I.fpo_log_ratio(old, new, scale=2.0, limit=20.0)
    # κ · mean_n(ℓ_old − ℓ_new): equal losses -> 0; a lower new loss -> a likelier action.
    torch.testing.assert_close(log_r, torch.tensor([0.0, 0.6, -1.0]))
    log_r.sum().backward()
    torch.testing.assert_close(new.grad, torch.full((3, 2), -1.0))  # -κ / N, no grad to old
    clamped = I.fpo_log_ratio(old, new.detach() - 100.0, scale=1.0, limit=5.0)
    assert clamped.max().item() == 5.0
    with pytest.raises(ValueError, match=r"must both be \[B, N\]"):
        I.fpo_log_ratio(old[:, 0], new[:, 0], 1.0, 20.0)


def test_ppo_clip_loss_analytic_and_clipped_gradients() -> None:
    eps = 0.2
    log_r = torch.log(torch.tensor([1.0, 1.5, 1.5, 0.5, 0.5, 1.1])).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, 2.0])
    loss, info = I.ppo_clip_loss(log_r, adv, eps)
    # min(r A, clip(r) A) per sample: 1, 1.2, -1.5, -0.8, 0.5, 2.2
    expected = -torch.tensor([1.0, 1.2, -1.5, -0.8, 0.5, 2.2]).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    grad = log_r.grad
    assert grad is not None
    # Clipped in the advantage's direction: no gradient (r > 1 + ε with A > 0; r < 1 − ε, A < 0).
    assert grad[1] == 0.0 and grad[3] == 0.0
    # The pessimistic branch keeps the gradient: d/dlog r of -(r A)/B = -r A / B.
    torch.testing.assert_close(grad[2], torch.tensor(1.5 / 6))
    torch.testing.assert_close(grad[4], torch.tensor(-0.5 / 6))
    torch.testing.assert_close(grad[0], torch.tensor(-1.0 / 6))
    assert info["rl/clip_frac"] == pytest.approx(4 / 6)
    assert info["rl/grad_frac"] == pytest.approx(4 / 6)
    assert info["loss/ppo_clip"] == pytest.approx(float(expected))
    with pytest.raises(ValueError, match="differ"):
        I.ppo_clip_loss(log_r[:2], adv, eps)


def test_ratio_one_makes_ppo_the_advantage_weighted_flow_loss() -> None:
    """At the round start (new head = snapshot) r̂ = 1 and ∇L = κ/N · Σ Â_i ∇ℓ_i / B."""
    old = torch.tensor([[0.4, 0.6], [0.2, 0.2]])
    new = old.clone().requires_grad_(True)
    adv = torch.tensor([1.0, -2.0])
    loss, _ = I.ppo_clip_loss(I.fpo_log_ratio(old, new, 3.0, 20.0), adv, 0.2)
    loss.backward()
    torch.testing.assert_close(new.grad, torch.tensor([[0.75, 0.75], [-1.5, -1.5]]))


def test_value_loss_and_advantage_normalization() -> None:
    v = torch.tensor([0.0, 1.0, 0.5], requires_grad=True)
    g = torch.tensor([1.0, 1.0, 0.0])
    loss, info = I.value_loss(v, g)
    torch.testing.assert_close(loss, torch.tensor(0.5 * (1.0 + 0.0 + 0.25) / 3))
    assert info["loss/value"] == pytest.approx(float(loss.detach()))
    a = I.normalize_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert abs(float(a.mean())) < 1e-6 and float(a.std()) == pytest.approx(1.0, abs=1e-5)
    assert I.normalize_advantages(torch.tensor([4.0])).tolist() == [4.0]


# ------------------------------------------------------------------------------ policy split
def test_backbone_and_head_partition_the_policy() -> None:
    config = FlowPolicyConfig(
        horizon=8,
        action_dim=4,
        proprio_dim=5,
        camera_names=("top",),
        image_size=(16, 16),
        cnn_channels=(4,),
        feature_dim=16,
        hidden_dim=16,
        num_blocks=1,
        time_embed_dim=8,
        prompt_dim=4,
        prompt_buckets=16,
    )
    policy = FlowPolicy(config)
    backbone = {id(p) for p in policy.backbone_parameters()}
    head = {id(p) for p in policy.head_parameters()}
    assert backbone and head and not backbone & head
    assert backbone | head == {id(p) for p in policy.parameters()}
    # The image CNN and the camera embedding are backbone.
    assert id(policy.encoder.camera_embedding) in backbone


def test_per_sample_loss_with_another_expert() -> None:
    config = FlowPolicyConfig(horizon=8, action_dim=4, proprio_dim=5, feature_dim=16, hidden_dim=16)
    torch.manual_seed(0)
    policy = FlowPolicy(config)
    features, actions = torch.randn(3, 16), torch.randn(3, 8, 4)
    noise, tau = torch.randn(3, 8, 4), torch.rand(3)
    same = copy.deepcopy(policy.expert)
    base = policy.per_sample_loss(features, actions, None, noise, tau)
    torch.testing.assert_close(
        policy.per_sample_loss(features, actions, None, noise, tau, same), base
    )
    with torch.no_grad():
        same.out.bias.add_(1.0)
    other = policy.per_sample_loss(features, actions, None, noise, tau, same)
    assert not torch.allclose(other, base)


# ------------------------------------------------------------------------------ registry
def test_registered_like_every_method() -> None:
    method = M.get_method("ire_vla")
    assert method.ire_vla == I.IreVlaConfig()
    assert method.labeling == "intervention_aware" and not method.uses_critic_features
    assert set(method.mixing_dict) == {"demo", "rollout_success"}
    assert TrainerConfig(method="ire_vla").method_config is method
    assert M.method_from_dict(dataclasses.asdict(method)) == method
    changed = method.replace(ire_vla=I.IreVlaConfig(rl_rounds_per_cycle=3, rl_data="all"))
    assert M.method_from_dict(dataclasses.asdict(changed)) == changed


@pytest.mark.parametrize("typo", ["ire_vl", "ire-vla", "irevla", "ire_vla_"])
def test_typo_suggests_ire_vla(typo: str) -> None:
    with pytest.raises(ValueError, match="did you mean 'ire_vla'"):
        M.get_method(typo)
    with pytest.raises(ValueError, match="did you mean 'ire_vla'"):
        TrainerConfig(method=typo)


def test_other_suggestions_still_work() -> None:
    with pytest.raises(ValueError, match="did you mean 'habc'"):
        TrainerConfig(method="habcc")
    with pytest.raises(ValueError, match=r"Valid methods: .*'ire_vla'"):
        M.get_method("zzz")


def test_method_validation() -> None:
    base = M.get_method("ire_vla")
    with pytest.raises(ValueError, match="iRe-VLA needs 'intervention_aware' labeling"):
        base.replace(labeling="naive")
    with pytest.raises(ValueError, match="trains its own value head"):
        base.replace(train_viability=True)
    with pytest.raises(ValueError, match="ire_vla must be an IreVlaConfig, got dict"):
        base.replace(ire_vla={"rl_rounds_per_cycle": 1})

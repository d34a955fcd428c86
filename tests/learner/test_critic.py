"""Critic: TD efficiency head converges to MC steps-to-go; Polyak; parent value head."""

from __future__ import annotations

import math

import pytest
import torch

from habc_learner.core import critic as C
from habc_learner.core.critic import CriticConfig, DualHeadCritic, ParentValueHead


def _train_chain(
    config: CriticConfig, length: int = 20, steps: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic chain s_0 -> ... -> s_{T_s}, one-hot features, success at the last state."""
    torch.manual_seed(0)
    t_s = length - 1
    feats = torch.eye(length)
    t = torch.arange(length)
    nxt = torch.clamp(t + 1, max=t_s)
    done = t >= t_s
    cost = (nxt - t).float()
    steps_to_go = (t_s - t).float()
    critic = DualHeadCritic(length, config)
    target = C.make_target(critic)
    opt = torch.optim.Adam(critic.parameters(), lr=config.lr)
    succ = torch.ones(length, dtype=torch.bool)
    for _ in range(steps):
        _, v_e = critic(feats)
        with torch.no_grad():
            if config.efficiency_target == "mc":
                y = C.efficiency_mc_target(steps_to_go)
            else:
                boot = (
                    target(feats[nxt])[1]
                    if config.td_bootstrap == "polyak"
                    else critic(feats[nxt])[1]
                )
                y = C.efficiency_td_target(boot, cost, done)
        loss = C.efficiency_loss(v_e, y, succ, config.huber_delta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        C.polyak_update(target, critic, config.polyak_tau)
    with torch.no_grad():
        return critic(feats)[1], -steps_to_go


def test_td_efficiency_head_converges_to_mc_steps_to_go() -> None:
    # Eq. 3 with the Polyak bootstrap (the paper's target; the default is MC).
    cfg = CriticConfig(
        hidden_dim=64,
        num_layers=1,
        lr=3e-3,
        polyak_tau=0.05,
        efficiency_scale=10.0,
        efficiency_target="td",
    )
    v_e, mc = _train_chain(cfg, steps=1000)
    assert (v_e - mc).abs().max().item() < 0.5, (v_e, mc)


def test_mc_target_alternative_fits_steps_to_go() -> None:
    cfg = CriticConfig(
        hidden_dim=64, num_layers=1, lr=3e-3, efficiency_scale=10.0, efficiency_target="mc"
    )
    v_e, mc = _train_chain(cfg, steps=800)
    assert (v_e - mc).abs().max().item() < 0.5


def test_viability_head_learns_outcomes() -> None:
    torch.manual_seed(0)
    feats = torch.randn(64, 8)
    y = (feats[:, 0] > 0).float()
    critic = DualHeadCritic(8, CriticConfig(hidden_dim=32, num_layers=1))
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    for _ in range(200):
        z_v, _ = critic(feats)
        loss = C.viability_loss(z_v, y, torch.ones(64, dtype=torch.bool))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_polyak_update_interpolates() -> None:
    online = torch.nn.Linear(2, 1)
    target = C.make_target(online)
    with torch.no_grad():
        online.weight.fill_(1.0)
        target.weight.fill_(0.0)
    C.polyak_update(target, online, 0.25)
    assert torch.allclose(target.weight, torch.full_like(target.weight, 0.25))
    assert not any(p.requires_grad for p in target.parameters())


def test_two_hot_and_expected_value_round_trip() -> None:
    support = torch.linspace(-200.0, 0.0, 101)
    values = torch.tensor([-200.0, -3.0, -101.3, 0.0, 5.0])
    th = C.two_hot(values, support)
    assert torch.allclose(th.sum(dim=1), torch.ones(5))
    recovered = (th * support).sum(dim=1)
    assert torch.allclose(recovered, values.clamp(-200, 0), atol=1e-4)


def test_recap_target_mixes_mc_at_boundary_and_td_elsewhere() -> None:
    y = C.recap_value_target(
        reward=torch.tensor([-1.0, -100.0]),
        discount=torch.tensor([0.99, 1.0]),
        value_next=torch.tensor([-10.0, -50.0]),
        mc_return=torch.tensor([-999.0, -100.0]),
        has_next=torch.tensor([True, False]),
    )
    assert y.tolist() == pytest.approx([-1.0 - 9.9, -100.0])


def test_parent_value_head_fits_targets() -> None:
    torch.manual_seed(0)
    cfg = CriticConfig(hidden_dim=32, num_layers=1)
    head = ParentValueHead(4, cfg)
    feats = torch.eye(4)
    target = torch.tensor([-150.0, -60.0, -10.0, 0.0])
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        loss = C.distributional_value_loss(
            head(feats), target, head.support, torch.ones(4, dtype=torch.bool)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (head.value(feats) - target).abs().max().item() < 3.0


def test_critic_config_validation() -> None:
    with pytest.raises(ValueError, match="efficiency_target='gae'"):
        CriticConfig(efficiency_target="gae")
    with pytest.raises(ValueError, match="frozen_sft"):
        CriticConfig(features="backbone")


def test_masked_means_for_losses_and_for_logs() -> None:
    """A loss term's mean is 0 (with a gradient path) on an empty mask; a logged mean is NaN."""
    from habc_learner.core.critic import masked_mean, masked_mean_or_nan

    v = torch.tensor([1.0, 2.0, 6.0], requires_grad=True)
    some = torch.tensor([True, False, True])
    none = torch.zeros(3, dtype=torch.bool)
    assert masked_mean(v, some).item() == pytest.approx(3.5)
    assert masked_mean_or_nan(v, some) == pytest.approx(3.5)
    empty = masked_mean(v, none)
    assert empty.item() == 0.0
    empty.backward()
    assert v.grad is not None and v.grad.tolist() == [0.0, 0.0, 0.0]
    assert math.isnan(masked_mean_or_nan(v, none))

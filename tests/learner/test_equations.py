"""Hand-computed numbers for Eqs. 3, 4, 5, 6, 7, 8 and the weight table on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from habc_learner.core import critic as C
from habc_learner.core import weights as W
from habc_learner.core.labeling import Source
from habc_learner.core.methods import WeightInputs, compute_w_tilde, get_method

T = torch.tensor
ALL = T([True, True])


def test_eq5_viability_advantage_in_logit_space() -> None:
    a_v = W.viability_advantage(T([0.0, 2.0]), T([1.0, 1.5]), ALL)
    assert torch.allclose(a_v, T([1.0, -0.5]))


def test_eq5_clamps_logits_to_finite_range() -> None:
    # p_v clamped to [1e-6, 1 - 1e-6]: logits beyond ±13.8155 saturate.
    a_v = W.viability_advantage(T([0.0, -100.0]), T([50.0, 0.0]), ALL)
    assert a_v[0].item() == pytest.approx(13.815509557963773, abs=1e-4)
    assert a_v[1].item() == pytest.approx(13.815509557963773, abs=1e-4)
    assert torch.isfinite(W.clamp_viability_logit(T([float("inf")]))).all()


def test_eq6_efficiency_advantage() -> None:
    a_e = W.efficiency_advantage(T([-10.0, -3.0]), T([-8.0, -3.0]), T([1.0, 1.0]), ALL)
    assert torch.allclose(a_e, T([1.0, -1.0]))


def test_eq6_stride_costs_delta() -> None:
    a_e = W.efficiency_advantage(T([-10.0]), T([-7.0]), T([3.0]), T([True]))
    assert a_e.item() == pytest.approx(0.0)


def test_episode_end_gives_zero_advantages_and_unit_gate() -> None:
    no_next = T([False, True])
    a_v = W.viability_advantage(T([0.0, 0.0]), T([5.0, 5.0]), no_next)
    a_e = W.efficiency_advantage(T([-10.0, -10.0]), T([0.0, 0.0]), T([1.0, 1.0]), no_next)
    assert a_v.tolist() == [0.0, 5.0]
    assert a_e.tolist() == [0.0, 9.0]
    g = W.habc_gate(T([0.3, 0.3]), a_v, a_e)
    assert g[0].item() == 1.0


def test_eq7_state_adaptive_gate() -> None:
    z_v = T([0.0, 2.0])
    p_v = torch.sigmoid(z_v)  # 0.5, 0.8807970779778823
    g = W.habc_gate(p_v, T([1.0, -0.5]), T([1.0, -1.0]))
    # (1 - 0.5)·1 + 0.5·1 = 1 -> 1 + tanh(1); (0.1192)(-0.5) + 0.8808(-1) = -0.9404.
    assert g[0].item() == pytest.approx(1.7615941559557649, abs=1e-6)
    assert g[1].item() == pytest.approx(0.26459469269488656, abs=1e-6)


def test_eq7_gate_bounded_in_open_interval() -> None:
    g = W.habc_gate(T([0.0, 1.0, 0.5]), T([100.0, 0.0, -100.0]), T([0.0, -100.0, -100.0]))
    assert bool(((g >= 0.0) & (g <= 2.0)).all())
    assert g[0].item() == pytest.approx(2.0) and g[1].item() == pytest.approx(0.0)


def test_low_viability_follows_a_v_high_viability_follows_a_e() -> None:
    a_v, a_e = T([1.0, 1.0]), T([-1.0, -1.0])
    g = W.habc_gate(T([0.0, 1.0]), a_v, a_e)
    assert g[0].item() == pytest.approx(1 + math.tanh(1.0))
    assert g[1].item() == pytest.approx(1 + math.tanh(-1.0))


def test_habc_v_gate_choice_and_alternative() -> None:
    p_v = torch.sigmoid(T([2.0]))
    assert W.habc_v_gate(p_v, T([-0.5])).item() == pytest.approx(0.940469013619399, abs=1e-6)
    assert W.habc_v_gate(p_v, T([-0.5]), "plain").item() == pytest.approx(0.5378828427399902)
    with pytest.raises(ValueError, match="viability_weighted"):
        W.habc_v_gate(p_v, T([0.0]), "softmax")


def test_eq8_normalization_unit_mean_over_valid() -> None:
    w = W.normalize_weights(T([0.0, 1.0, 3.0]))
    assert w.tolist() == [0.0, 0.5, 1.5]
    w = W.normalize_weights(T([0.0, 0.5, 1.5, 1.0, 0.0]))
    assert torch.allclose(w, T([0.0, 0.5, 1.5, 1.0, 0.0]))
    assert W.normalize_weights(T([0.0, 0.0])).tolist() == [0.0, 0.0]
    # max(c, eps): a tiny mean does not blow the weights up beyond 1/eps.
    assert W.normalize_weights(T([1e-9]), eps=1e-6).item() == pytest.approx(1e-3)


def test_weight_table_per_source() -> None:
    src = T(
        [
            Source.DEMO,
            Source.ROLLOUT_SUCCESS,
            Source.ROLLOUT_FAILURE,
            Source.UNLABELED,
            Source.INTERVENTION,
        ]
    )
    gate = T([0.3, 0.4, 0.5, 0.6, 0.7])
    assert W.source_weights(src, gate, False).tolist() == pytest.approx([1.0, 0.4, 0.0, 0.0, 1.0])
    assert W.source_weights(src, gate, True).tolist() == pytest.approx([1.0, 0.4, 0.0, 0.0, 0.7])


def test_warmup_gives_uniform_gate_but_failures_stay_zero() -> None:
    method = get_method("habc")
    src = T([Source.DEMO, Source.ROLLOUT_SUCCESS, Source.ROLLOUT_FAILURE, Source.INTERVENTION])
    inputs = dict(
        source=src,
        p_v=T([0.9, 0.2, 0.7, 0.5]),
        a_v=T([3.0, -2.0, 1.0, 0.5]),
        a_e=T([-4.0, 1.0, 2.0, -1.0]),
    )
    w_tilde, gate = compute_w_tilde(method, WeightInputs(**inputs, learner_step=499))
    assert gate.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert w_tilde.tolist() == [1.0, 1.0, 0.0, 1.0]
    w_tilde, gate = compute_w_tilde(method, WeightInputs(**inputs, learner_step=500))
    assert w_tilde[1].item() != 1.0 and w_tilde[2].item() == 0.0


def test_eq3_td_target() -> None:
    y = C.efficiency_td_target(T([-4.0, -7.0, -2.0]), T([1.0, 1.0, 1.0]), T([False, False, True]))
    assert y.tolist() == [-5.0, -8.0, 0.0]
    assert C.efficiency_mc_target(T([3.0, 0.0])).tolist() == [-3.0, 0.0]


def test_eq4_critic_loss_by_hand() -> None:
    z_v = T([0.0, 2.0, -1.5])
    outcome = T([1.0, 0.0, -1.0])  # third: unlabeled, outside D_lab
    lab = C.d_lab_mask(outcome)
    v_e = T([-5.0, -3.0, 100.0])
    y_e = T([-2.5, -2.6, float("nan")])
    succ = T([True, True, False])
    loss, info = C.critic_loss(z_v, v_e, outcome, y_e, lab, succ, delta=1.0)
    bce = (math.log(2.0) + math.log(1.0 + math.exp(2.0))) / 2  # BCE(0, y=1), BCE(2, y=0)
    huber = ((2.5 - 0.5) + 0.5 * 0.4**2) / 2
    assert info["loss/viability_bce"] == pytest.approx(bce, abs=1e-6)
    assert info["loss/efficiency_huber"] == pytest.approx(huber, abs=1e-6)
    assert loss.item() == pytest.approx(bce + huber, abs=1e-6)
    _, info_v = C.critic_loss(z_v, v_e, outcome, y_e, lab, succ, train_efficiency=False)
    assert info_v["loss/efficiency_huber"] == 0.0


def test_d_succ_includes_success_interventions_only() -> None:
    src = T(
        [
            Source.ROLLOUT_SUCCESS,
            Source.INTERVENTION,
            Source.INTERVENTION,
            Source.ROLLOUT_FAILURE,
            Source.DEMO,
        ]
    )
    ok = T([True, True, False, False, True])
    assert C.d_succ_mask(src, ok).tolist() == [True, True, False, False, False]


def test_weighted_actor_loss_reductions() -> None:
    losses, w = T([2.0, 4.0, 10.0]), T([0.5, 1.5, 0.0])
    # default: Σ w ℓ / Σ w = (1 + 6 + 0) / 2 — the zero-weight sample does not dilute it
    loss, info = W.weighted_actor_loss(losses, w)
    assert loss.item() == pytest.approx(7.0 / 2.0)
    assert info["loss/flow_valid"] == pytest.approx(3.0)
    # HABC_METHOD.md's mean over the batch: (1 + 6 + 0) / 3
    loss, _ = W.weighted_actor_loss(losses, w, "batch_mean")
    assert loss.item() == pytest.approx(7.0 / 3.0)
    # no valid sample: a zero, finite loss
    loss, _ = W.weighted_actor_loss(losses, torch.zeros(3))
    assert loss.item() == 0.0
    with pytest.raises(ValueError, match="reduction 'sum'"):
        W.weighted_actor_loss(losses, w, "sum")


def test_weights_carry_no_gradient() -> None:
    z_v = torch.zeros(3, requires_grad=True)
    v_e = torch.zeros(3, requires_grad=True)
    a_v = W.viability_advantage(z_v, z_v + 1, torch.ones(3, dtype=torch.bool))
    a_e = W.efficiency_advantage(v_e, v_e + 1, torch.ones(3), torch.ones(3, dtype=torch.bool))
    g = W.habc_gate(torch.sigmoid(z_v), a_v, a_e)
    w = W.normalize_weights(W.source_weights(torch.ones(3, dtype=torch.long), g, False))
    assert not (a_v.requires_grad or a_e.requires_grad or g.requires_grad or w.requires_grad)


def test_recap_threshold_and_filter() -> None:
    residual = torch.arange(100, dtype=torch.float32)
    eps = W.select_recap_threshold(residual, 0.25)
    assert float((residual > eps).float().mean()) == pytest.approx(0.25, abs=0.011)
    src = T([Source.DEMO, Source.ROLLOUT_SUCCESS, Source.ROLLOUT_FAILURE, Source.INTERVENTION])
    w = W.recap_weights(src, T([-9.0, 80.0, 10.0, 99.0]), eps)
    assert w.tolist() == [1.0, 1.0, 0.0, 0.0]
    delta = W.recap_td_residual(
        T([-1.0, -100.0]), T([-5.0, -3.0]), T([-4.5, 7.0]), T([True, False])
    )
    assert delta.tolist() == pytest.approx([-0.5, -97.0])

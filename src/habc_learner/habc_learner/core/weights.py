"""HABC advantages, gate and weights: one function per equation (``HABC_METHOD.md``).

Everything here is computed without gradient: every function runs under ``torch.no_grad`` and
returns detached tensors. All tensors are [B] unless stated.

Names follow the paper: z_v viability logit, p_v = sigmoid(z_v), V_e efficiency value (minus the
steps to success), A_v / A_e one-step advantages, g_t gate, w̃ pre-normalization weight, w
normalized weight.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from habc_learner.core.labeling import Source

#: p_v is clamped to [PROB_EPS, 1 − PROB_EPS] where a probability becomes a logit (choice).
PROB_EPS = 1e-6
LOGIT_LIMIT = math.log((1.0 - PROB_EPS) / PROB_EPS)  # ≈ 13.8155
HABC_V_GATES = ("viability_weighted", "plain")
ACTOR_REDUCTIONS = ("weight_sum", "batch_mean")


@torch.no_grad()
def clamp_viability_logit(z_v: Tensor, eps: float = PROB_EPS) -> Tensor:
    """logit(clamp(sigmoid(z_v), eps, 1 − eps)): keep logits finite **(choice)**.

    Equivalent to clamping z_v to ±log((1 − eps)/eps) (±13.8155 for eps = 1e-6).
    """
    limit = math.log((1.0 - eps) / eps)
    return z_v.detach().clamp(-limit, limit)


@torch.no_grad()
def viability_advantage(z_v: Tensor, z_v_next: Tensor, has_next: Tensor) -> Tensor:
    """Eq. 5: A_v = z_v(s_{t+1}) − z_v(s_t), in logit space (resolution near p_v ≈ 1).

    Logits are clamped first (:func:`clamp_viability_logit`). A window anchored at the last step
    of its episode has no next state: A_v = 0 there **(choice)**.
    """
    a_v = clamp_viability_logit(z_v_next) - clamp_viability_logit(z_v)
    return torch.where(has_next.bool(), a_v, torch.zeros_like(a_v))


@torch.no_grad()
def efficiency_advantage(
    v_e: Tensor, v_e_next: Tensor, step_cost: Tensor, has_next: Tensor
) -> Tensor:
    """Eq. 6: A_e = −1 + V_e(s_{t+1}) − V_e(s_t).

    With a stride Δ the one-step cost −1 becomes −Δ (``step_cost``) **(choice)**. Positive when
    the step shortens the way to success by more than its cost. A_e = 0 at the episode end.
    """
    a_e = -step_cost.to(v_e.dtype) + v_e_next.detach() - v_e.detach()
    return torch.where(has_next.bool(), a_e, torch.zeros_like(a_e))


@torch.no_grad()
def habc_gate(p_v: Tensor, a_v: Tensor, a_e: Tensor, temperature: float = 1.0) -> Tensor:
    """Eq. 7: g_t = 1 + tanh((1 − p_v(s_t))·A_v + p_v(s_t)·A_e), g_t ∈ (0, 2).

    Low viability → the weight follows viability improvement; high viability → efficiency.
    ``temperature`` T ≠ 1 is a named variant the paper lists only as future work (an advantage
    temperature): g_t = 1 + tanh(((1 − p_v)·A_v + p_v·A_e) / T); T = 1 is the paper's Eq. 7.
    """
    p_v = p_v.detach()
    return 1.0 + torch.tanh(((1.0 - p_v) * a_v.detach() + p_v * a_e.detach()) / temperature)


@torch.no_grad()
def habc_v_gate(
    p_v: Tensor, a_v: Tensor, mode: str = "viability_weighted", temperature: float = 1.0
) -> Tensor:
    """HABC-V gate (no efficiency head).

    ``"viability_weighted"`` **(choice)**: g_t = 1 + tanh((1 − p_v(s_t))·A_v / T);
    ``"plain"``: g_t = 1 + tanh(A_v / T). T = 1 (``temperature``) is the paper's form.
    """
    if mode == "viability_weighted":
        return 1.0 + torch.tanh((1.0 - p_v.detach()) * a_v.detach() / temperature)
    if mode == "plain":
        return 1.0 + torch.tanh(a_v.detach() / temperature)
    raise ValueError(f"HABC-V gate {mode!r} is not one of {HABC_V_GATES}")


@torch.no_grad()
def warmup_gate(gate: Tensor, learner_step: int, warmup_steps: int = 500) -> Tensor:
    """Warmup **(choice)**: g_t ≡ 1 for the first ``warmup_steps`` learner steps."""
    if learner_step < warmup_steps:
        return torch.ones_like(gate)
    return gate.detach()


@torch.no_grad()
def source_weights(source: Tensor, gate: Tensor, intervention_reweighting: bool) -> Tensor:
    """Pre-normalization weight w̃ by data source (§3.4 weight table).

    ============================  ==============================
    source                        w̃
    ============================  ==============================
    SFT demonstration             1
    labeled success window        g_t
    labeled failure window        0
    unlabeled policy window       0 (masked out)
    intervention window           1, or g_t with IR
    ============================  ==============================
    """
    gate = gate.detach()
    ones, zeros = torch.ones_like(gate), torch.zeros_like(gate)
    interv = gate if intervention_reweighting else ones
    w = torch.where(source == Source.DEMO, ones, zeros)
    w = torch.where(source == Source.ROLLOUT_SUCCESS, gate, w)
    return torch.where(source == Source.INTERVENTION, interv, w)


@torch.no_grad()
def normalize_weights(w_tilde: Tensor, eps: float = 1e-6) -> Tensor:
    """Eq. 8: c = mean_{i valid} w̃_i over valid samples (w̃ > 0), w_i = w̃_i / max(c, ε).

    Unit mean over valid samples (decouples weighting from the effective learning rate); zeros
    stay zero. A batch without a valid sample returns all zeros.
    """
    w_tilde = w_tilde.detach()
    valid = w_tilde > 0
    count = valid.sum()
    if count == 0:
        return torch.zeros_like(w_tilde)
    c = w_tilde[valid].sum() / count
    return torch.where(valid, w_tilde / c.clamp_min(eps), torch.zeros_like(w_tilde))


@torch.no_grad()
def recap_td_residual(
    reward: Tensor, value: Tensor, value_next: Tensor, has_next: Tensor
) -> Tensor:
    """Imit-Recap TD residual δ_t = r_t + V(s_{t+1}) − V(s_t) (V(s_{t+1}) = 0 past the end)."""
    v_next = torch.where(has_next.bool(), value_next.detach(), torch.zeros_like(value_next))
    return reward + v_next - value.detach()


@torch.no_grad()
def select_recap_threshold(residuals: Tensor, target_pass_rate: float) -> float:
    """Threshold ε on held-out residuals so that a fraction ``target_pass_rate`` has δ > ε."""
    if not 0.0 < target_pass_rate < 1.0:
        raise ValueError(f"target_pass_rate must be in (0, 1), got {target_pass_rate}")
    finite = residuals.detach()[torch.isfinite(residuals)]
    if finite.numel() == 0:
        raise ValueError("no finite held-out residuals to choose the Imit-Recap threshold on")
    return float(torch.quantile(finite.double(), 1.0 - target_pass_rate))


@torch.no_grad()
def recap_weights(source: Tensor, residual: Tensor, threshold: float) -> Tensor:
    """Imit-Recap w̃: demos 1; a rollout window 1 iff δ_t > ε, else 0; anything else 0."""
    rollout = (source == Source.ROLLOUT_SUCCESS) | (source == Source.ROLLOUT_FAILURE)
    passed = rollout & (residual.detach() > threshold)
    return ((source == Source.DEMO) | passed).to(residual.dtype)


def weighted_actor_loss(
    per_sample_loss: Tensor, weights: Tensor, reduction: str = "weight_sum"
) -> tuple[Tensor, dict[str, float]]:
    """Eq. 1, reduced over the batch (weights detached):

    - ``"weight_sum"`` (default): L_actor = Σ_i w_i · ℓ_i / max(Σ_i w_i, ε). With Eq. 8's unit
      mean over the valid samples this is the mean over the *valid* samples, so zero-weight
      windows (failed episodes, kept in the batch for the critic) do not shrink the actor's
      gradient (STYLE.md's ``(per_sample * w).sum() / w.sum()``).
    - ``"batch_mean"``: L_actor = mean_i w_i · ℓ_i over the whole batch, as
      ``HABC_METHOD.md`` writes Eq. 1; the gradient is then scaled by the valid fraction.
    """
    if per_sample_loss.shape != weights.shape:
        raise ValueError(
            f"per_sample_loss {tuple(per_sample_loss.shape)} and "
            f"weights {tuple(weights.shape)} differ"
        )
    w = weights.detach()
    if reduction == "weight_sum":
        loss = (w * per_sample_loss).sum() / w.sum().clamp_min(1e-6)
    elif reduction == "batch_mean":
        loss = (w * per_sample_loss).mean()
    else:
        raise ValueError(f"reduction {reduction!r} is not one of {ACTOR_REDUCTIONS}")
    valid = weights > 0
    info = {
        "loss/actor": float(loss.detach()),
        "loss/flow_unweighted": float(per_sample_loss.detach().mean()),
        "loss/flow_valid": float(per_sample_loss.detach()[valid].mean()) if valid.any() else 0.0,
    }
    return loss, info

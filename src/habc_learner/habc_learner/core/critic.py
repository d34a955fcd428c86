"""Dual-head critic (Eqs. 2–4) and the Imit-Recap distributional parent value head (App. A).

Both heads read shared features φ(s) [B, F]. The paper uses a frozen backbone pretrained
elsewhere; here ``CriticConfig.features`` selects:

- ``"own"`` **(choice, the default)**: a separate encoder of the actor's shape, trained by the
  critic loss;
- ``"frozen_sft"``: a copy of the actor's encoder frozen when online learning starts (at trainer
  init, and again when the trainer is initialised from the SFT checkpoint), never trained;
- ``"actor_detached"``: the actor's encoder output, detached (the encoder still changes every
  actor step, so the critic chases moving features; the default before issue 13).

Whole rollout episodes are held out from critic training (``validation_fraction``) and the
critic stops training for the rest of a round when their BCE stops improving (early stopping,
on by default). Dropout in the head MLPs, weight decay (AdamW) and an ensemble of viability
heads are selectable and off. ``docs/results/critic.md`` measures every option on fresh
transfer-cube rollouts: only the own encoder with early stopping (alone, or with dropout,
weight decay and an ensemble on top) reached AUROC ≥ 0.85 and ECE ≤ 0.08 on both seeds.

- Viability logit z_v(s) = f_v(φ(s)), p_v = sigmoid(z_v), trained with BCE on D_lab.
- Efficiency value V_e(s) = f_e(φ(s)) (minus the steps to success), trained with Huber (δ = 1) on
  D_succ against the TD target of Eq. 3, bootstrapped from a Polyak copy **(choice)**
  (alternatives: the online head, or the Monte-Carlo target −(T_s − t)).
- Parent value head: logits over B value bins, cross-entropy against a two-hot projection of the
  mixed target (MC return at an episode boundary, TD r + γ·V(s') elsewhere).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from habc_learner.core.labeling import Source

FEATURE_SOURCES = ("actor_detached", "frozen_sft", "own")
#: Names of earlier versions, still accepted.
FEATURE_ALIASES = {"actor_encoder": "actor_detached", "separate_encoder": "own"}
EFFICIENCY_TARGETS = ("td", "mc")
TD_BOOTSTRAPS = ("polyak", "online")


@dataclass(frozen=True)
class CriticConfig:
    """Attributes:
    features: φ(s) of the critic, one of :data:`FEATURE_SOURCES` (see the module docstring).
    hidden_dim, num_layers: head MLPs.
    dropout: dropout probability after every hidden layer of the head MLPs (0: none). Weights
        and advantages are always computed with dropout off.
    weight_decay: decoupled weight decay of the critic optimizer (AdamW; 0: Adam).
    ensemble: viability heads; p_v is the mean of their probabilities and each member is trained
        with its own BCE (1: the paper's single head).
    validation_fraction: rollout episodes held out from critic training (whole episodes, chosen
        by a stable hash of the episode id); the trainer reports held-out AUROC, ECE, Brier
        and BCE on them (0: none).
    validate_every: learner steps between held-out evaluations within a round (the round end
        is always evaluated).
    validation_windows: held-out windows scored per evaluation (a fixed, seeded subset).
    early_stopping_patience: held-out evaluations without a better BCE after which the critic
        stops training for the rest of the round and its best state is restored (0: off; 3
        by default: without it the held-out BCE rose from 0.36 to 1.3-1.7 within 600 steps).
    huber_delta: δ of the efficiency Huber loss (1).
    efficiency_target: ``"mc"`` (−(T_s − t), default) or ``"td"`` (Eq. 3, the paper's).
        Measured here (docs/results/README.md): with γ = 1 and a Polyak bootstrap, TD
        propagates the step cost about one step per 1/τ learner steps, so over a few thousand
        steps V_e stays flat, A_e ≈ −1 everywhere and the gate on successful autonomous
        windows sits near 1 + tanh(−1) ≈ 0.24 (paper: 0.68–0.86). The Monte-Carlo target is
        exact for the successful windows V_e is trained on and gives a mean gate ≈ 0.96.
    td_bootstrap: ``"polyak"`` (choice) or ``"online"`` network for sg[V_e(s_{t+1})].
    polyak_tau: θ' ← (1 − τ)θ' + τθ after every step.
    efficiency_scale: V_e = scale · raw head output (the head stays O(1) for targets in
        [−T_max, 0]; the Huber loss is on V_e in steps).
    lr: critic learning rate (Adam).
    value_bins, value_min, value_max: support of the parent value head (Imit-Recap).
    """

    features: str = "own"
    hidden_dim: int = 256
    num_layers: int = 2
    dropout: float = 0.0
    weight_decay: float = 0.0
    ensemble: int = 1
    validation_fraction: float = 0.2
    validate_every: int = 50
    validation_windows: int = 2048
    early_stopping_patience: int = 3
    huber_delta: float = 1.0
    efficiency_target: str = "mc"
    td_bootstrap: str = "polyak"
    polyak_tau: float = 0.005
    efficiency_scale: float = 100.0
    lr: float = 3e-4
    value_bins: int = 101
    value_min: float = -200.0
    value_max: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", FEATURE_ALIASES.get(self.features, self.features))
        for name, value, choices in (
            ("features", self.features, FEATURE_SOURCES),
            ("efficiency_target", self.efficiency_target, EFFICIENCY_TARGETS),
            ("td_bootstrap", self.td_bootstrap, TD_BOOTSTRAPS),
        ):
            if value not in choices:
                raise ValueError(f"{name}={value!r} is not one of {choices}")
        if self.hidden_dim < 1 or self.num_layers < 1:
            raise ValueError(
                f"hidden_dim and num_layers must be >= 1, got {self.hidden_dim}, {self.num_layers}"
            )
        if self.huber_delta <= 0:
            raise ValueError(f"huber_delta must be > 0, got {self.huber_delta}")
        if not 0.0 < self.polyak_tau <= 1.0:
            raise ValueError(f"polyak_tau must be in (0, 1], got {self.polyak_tau}")
        if self.efficiency_scale <= 0 or self.lr <= 0:
            raise ValueError("efficiency_scale and lr must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {self.ensemble}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )
        for name in ("validate_every", "validation_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.early_stopping_patience > 0 and self.validation_fraction == 0:
            raise ValueError(
                "early_stopping_patience needs validation episodes: validation_fraction must be > 0"
            )
        if self.early_stopping_patience < 0:
            raise ValueError(
                f"early_stopping_patience must be >= 0, got {self.early_stopping_patience}"
            )
        if self.value_bins < 2 or not self.value_min < self.value_max:
            raise ValueError(
                f"need value_bins >= 2 and value_min < value_max, got {self.value_bins}, "
                f"[{self.value_min}, {self.value_max}]"
            )


def mlp(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, dropout: float = 0.0
) -> nn.Sequential:
    """``num_layers`` hidden SiLU layers with LayerNorm on the input (and dropout after each
    hidden layer when ``dropout`` > 0)."""
    layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
    width = in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden_dim), nn.SiLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class DualHeadCritic(nn.Module):
    """Two independent heads on φ(s): viability logit z_v and efficiency value V_e (Eq. 2).

    With ``config.ensemble = K > 1`` the viability head has K members (``viability`` and
    ``viability_extra``); z_v is the logit of their mean probability (:func:`ensemble_logit`).
    """

    def __init__(self, feature_dim: int, config: CriticConfig) -> None:
        super().__init__()
        self.config = config
        args = (feature_dim, config.hidden_dim, 1, config.num_layers, config.dropout)
        self.viability = mlp(*args)
        self.efficiency = mlp(*args)
        self.viability_extra = nn.ModuleList(mlp(*args) for _ in range(config.ensemble - 1))
        # Start at p_v = 0.5 and V_e = 0 everywhere rather than at random values of ±scale.
        for head in (self.viability, self.efficiency, *self.viability_extra):
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def member_logits(self, features: Tensor) -> Tensor:
        """Viability logits of every ensemble member, [K, B]."""
        heads = (self.viability, *self.viability_extra)
        return torch.stack([h(features).squeeze(-1) for h in heads])

    def forward_members(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """φ(s) [B, F] -> (member logits [K, B], V_e [B])."""
        v_e = self.efficiency(features).squeeze(-1) * self.config.efficiency_scale
        return self.member_logits(features), v_e

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """φ(s) [B, F] -> (z_v [B], V_e [B])."""
        members, v_e = self.forward_members(features)
        return ensemble_logit(members), v_e


def ensemble_logit(member_logits: Tensor) -> Tensor:
    """z_v = logit(mean_k sigmoid(z_k)) over the K members [K, B] -> [B] (z_0 when K = 1).

    Averaging probabilities rather than logits keeps a confident minority from dominating.
    Computed as logsumexp(log σ(z_k)) − logsumexp(log σ(−z_k)), finite for any z_k.
    """
    if member_logits.shape[0] == 1:
        return member_logits[0]
    log_p = F.logsigmoid(member_logits).logsumexp(0)
    log_q = F.logsigmoid(-member_logits).logsumexp(0)
    return log_p - log_q


class ParentValueHead(nn.Module):
    """Distributional value head: logits over ``value_bins`` evenly spaced values."""

    def __init__(self, feature_dim: int, config: CriticConfig) -> None:
        super().__init__()
        self.net = mlp(feature_dim, config.hidden_dim, config.value_bins, config.num_layers)
        self.register_buffer(
            "support", torch.linspace(config.value_min, config.value_max, config.value_bins)
        )

    def forward(self, features: Tensor) -> Tensor:
        """φ(s) [B, F] -> logits [B, bins]."""
        return self.net(features)

    def value(self, features: Tensor) -> Tensor:
        """Expected value E[V(s)] [B]."""
        return expected_value(self(features), self.support)


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """θ' ← (1 − τ)·θ' + τ·θ for every parameter (buffers are copied)."""
    for p_t, p in zip(target.parameters(), online.parameters()):
        p_t.lerp_(p, tau)
    for b_t, b in zip(target.buffers(), online.buffers()):
        b_t.copy_(b)


def make_target(module: nn.Module) -> nn.Module:
    """A frozen deep copy for TD bootstrapping."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


# --------------------------------------------------------------------------------- data subsets
def d_lab_mask(outcome_label: Tensor) -> Tensor:
    """D_lab: outcome-labeled policy windows (label 0 or 1), [B] bool."""
    return outcome_label >= 0


def d_succ_mask(source: Tensor, episode_success: Tensor) -> Tensor:
    """D_succ: labeled policy windows of successful episodes and intervention windows of
    successful episodes, [B] bool."""
    return (source == Source.ROLLOUT_SUCCESS) | ((source == Source.INTERVENTION) & episode_success)


# --------------------------------------------------------------------------------- targets
@torch.no_grad()
def efficiency_td_target(v_e_next: Tensor, step_cost: Tensor, success_done: Tensor) -> Tensor:
    """Eq. 3: y_e(s_t) = 0 if d_t = 1 (terminal success step), else −1 + sg[V_e(s_{t+1})].

    With a stride Δ the cost is Δ (``step_cost``) **(choice)**.
    """
    y = -step_cost.to(v_e_next.dtype) + v_e_next.detach()
    return torch.where(success_done.bool(), torch.zeros_like(y), y)


@torch.no_grad()
def efficiency_mc_target(steps_to_go: Tensor) -> Tensor:
    """Monte-Carlo alternative: y_e(s_t) = −(T_s − t)."""
    return -steps_to_go


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask`` for a loss term: 0, with a gradient path, when the mask
    is empty (see :func:`masked_mean_or_nan` for logged statistics)."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def masked_mean_or_nan(values: Tensor, mask: Tensor) -> float:
    """Mean of ``values`` over ``mask`` for a logged statistic: a float, NaN when the mask is
    empty (an undefined mean is not logged as 0)."""
    n = int(mask.sum())
    return float(values[mask].mean()) if n else float("nan")


def viability_loss(z_v: Tensor, outcome: Tensor, lab_mask: Tensor) -> Tensor:
    """E_{D_lab}[BCE(z_v, y)] with y = z_e ∈ {0, 1}.

    ``z_v`` [B], or [K, B] for an ensemble: the mean of the members' losses.
    """
    target = outcome.clamp(0.0, 1.0).to(z_v.dtype)
    if z_v.ndim == 2:
        return torch.stack([viability_loss(z, outcome, lab_mask) for z in z_v]).mean()
    bce = F.binary_cross_entropy_with_logits(z_v, target, reduction="none")
    return masked_mean(bce, lab_mask)


def efficiency_loss(v_e: Tensor, y_e: Tensor, succ_mask: Tensor, delta: float = 1.0) -> Tensor:
    """E_{D_succ}[Huber_δ(V_e, y_e)]."""
    target = torch.nan_to_num(y_e.detach(), nan=0.0)
    huber = F.huber_loss(v_e, target, reduction="none", delta=delta)
    return masked_mean(huber, succ_mask)


def critic_loss(
    z_v: Tensor,
    v_e: Tensor,
    outcome: Tensor,
    y_e: Tensor,
    lab_mask: Tensor,
    succ_mask: Tensor,
    delta: float = 1.0,
    train_efficiency: bool = True,
) -> tuple[Tensor, dict[str, float]]:
    """Eq. 4: L_critic = E_{D_lab}[BCE(z_v, y)] + E_{D_succ}[Huber_δ(V_e, y_e)].

    ``train_efficiency=False`` (HABC-V) drops the second term.
    """
    l_v = viability_loss(z_v, outcome, lab_mask)
    l_e = efficiency_loss(v_e, y_e, succ_mask, delta) if train_efficiency else z_v.new_zeros(())
    loss = l_v + l_e
    info = {
        "loss/critic": float(loss.detach()),
        "loss/viability_bce": float(l_v.detach()),
        "loss/efficiency_huber": float(l_e.detach()),
        "critic/n_lab": float(lab_mask.sum()),
        "critic/n_succ": float(succ_mask.sum()),
    }
    return loss, info


# --------------------------------------------------------------------------------- parent value
def expected_value(logits: Tensor, support: Tensor) -> Tensor:
    """E[V] = Σ_b softmax(logits)_b · support_b, [B]."""
    return (logits.softmax(dim=-1) * support).sum(dim=-1)


def two_hot(values: Tensor, support: Tensor) -> Tensor:
    """Project scalar targets [B] onto the support as two-hot distributions [B, bins]."""
    v = values.clamp(float(support[0]), float(support[-1]))
    step = (support[-1] - support[0]) / (support.numel() - 1)
    pos = (v - support[0]) / step
    lo = pos.floor().clamp(0, support.numel() - 1)
    hi = (lo + 1).clamp(max=support.numel() - 1)
    w_hi = pos - lo
    out = torch.zeros(v.shape[0], support.numel(), dtype=v.dtype, device=v.device)
    out.scatter_add_(1, lo.long()[:, None], (1.0 - w_hi)[:, None])
    out.scatter_add_(1, hi.long()[:, None], w_hi[:, None])
    return out


@torch.no_grad()
def recap_value_target(
    reward: Tensor, discount: Tensor, value_next: Tensor, mc_return: Tensor, has_next: Tensor
) -> Tensor:
    """Mixed TD/MC target (Eq. 9): the MC return G_t at an episode boundary (no next state),
    the TD target r_t + γ·V(s_{t+1}) elsewhere."""
    td = reward + discount * value_next.detach()
    return torch.where(has_next.bool(), td, mc_return)


def distributional_value_loss(
    logits: Tensor, target: Tensor, support: Tensor, mask: Tensor
) -> Tensor:
    """Cross-entropy between the head's bins and the two-hot target, mean over ``mask``."""
    safe = torch.nan_to_num(target.detach(), nan=0.0)
    ce = -(two_hot(safe, support) * logits.log_softmax(dim=-1)).sum(dim=-1)
    return masked_mean(ce, mask)

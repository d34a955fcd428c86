"""iRe-VLA as a learner method: RL on the action head alternating with SL of the whole model.

iRe-VLA (``papers/ire-vla-summary.txt``; ``HABC_METHOD.md``, "The other seed system") iterates
two stages on one VLA:

1. **RL**: the backbone (here the observation encoder φ(s)) is frozen and only the light action
   head (here the flow-matching action expert) is trained, from the online rollouts with a
   sparse success reward;
2. **SL**: the whole model is unfrozen and trained by flow matching on the demonstrations plus
   every successful rollout collected so far (never failures, never unlabeled windows).

A round of the :class:`~habc_learner.core.trainer.Trainer` is one stage: rounds cycle through
``rl_rounds_per_cycle`` RL rounds, then ``sl_rounds_per_cycle`` SL rounds (:func:`stage_of_round`),
and the round index lives in every checkpoint, so a resumed run continues the schedule.

RL update: PPO-clip with the Flow Policy Optimization ratio (FPO, McAllister et al. 2025,
"Flow Matching Policy Gradients", arXiv 2507.21053)
-------------------------------------------------------------------------------------------
The summary reports PPO and replay-based PPO as iRe-VLA's baselines, and its RL stage is a policy
gradient on the action head; PPO needs π_θ(A | o) / π_old(A | o). The action head here is a flow
model: its exact likelihood needs the divergence of the velocity field integrated along the ODE
(expensive and noisy), and the bags do not store the behaviour policy's likelihoods. A separate
Gaussian head would be a second action head the deployed policy never runs (and another checkpoint
format). FPO instead replaces the log-likelihood ratio by the difference of the conditional
flow-matching losses of the old and the new head on the same N (τ, ε) draws, a surrogate for the
ELBO difference:

    log r̂_i = κ · (1/N) Σ_n [ℓ_old(A_i, τ_n, ε_n | o_i) − ℓ_θ(A_i, τ_n, ε_n | o_i)]
    L_ppo   = −mean_i min(r̂_i Â_i, clip(r̂_i, 1 − ε_clip, 1 + ε_clip) Â_i)

with ℓ the policy's own per-sample training loss (:meth:`FlowPolicy.per_sample_loss`, a mean over
the chunk's H·d entries, masked to the policy-controlled steps/arms) and κ = ``rl_log_ratio_scale``,
by default d (the action dimension). FPO's ℓ is the squared error summed over one action's d
dimensions; with κ = d, κ·ℓ is that sum averaged over the chunk's H control steps, so r̂ is the
per-step FPO ratio (its geometric mean over the chunk). Summing over the whole chunk instead
(κ = H·d = 700) multiplies the Monte-Carlo noise of the loss difference by H: the clip then fires
on noise and the head barely moves; κ = 1 (per entry) lets the head drift far from the behaviour
policy before the clip binds (both measured on a toy task, ``docs/ire_vla.md``). The update
trains the deployed head directly, needs no likelihood, and keeps PPO's clipped trust region.

Off-policy data. Rollouts arrive as recorded episodes (bags), produced by a checkpoint, not by the
live learner. The "old" policy of the ratio is a frozen snapshot of the action head taken when an
RL round starts: in the round protocol (rollouts of the current checkpoint → one round) that is the
behaviour policy of the newest rollouts. ``rl_data="latest"`` (default) samples only the windows
of the newest producing checkpoint, so every RL round is an on-policy PPO round whose ratios are
exact up to the FPO surrogate; ``"all"`` samples every labeled rollout so far, like the
replay-based PPO baseline, and the clipped ratio against the round-start snapshot is then only an
approximation for the older windows (``rl/policy_lag`` logs how old they are).

Returns and advantages. Sparse success reward: r = 1 at the success step T_s, 0 elsewhere, so the
Monte-Carlo return of a window anchored at t is G_t = γ^(T_s − t) in a successful episode and 0 in
a failed one (:func:`sparse_success_return`). A value head V_ψ(φ(s)) on the frozen, detached
features is the baseline: Â = G − V_ψ(φ(s)), normalized per batch; V_ψ is regressed onto G
(½ MSE). Optionally the first ``rl_value_warmup_steps`` steps of every RL round fit V_ψ only
(the features changed in the SL round before). Each window's chunk A_t = a_{t:t+H} of executed
actions is the chunk-level action (as for every method here).

Interventions. iRe-VLA has none. With intervention-aware labels, outcome-labeled policy windows
(autonomous episodes, post-intervention suffixes) are RL data with their episode's return; the
policy windows before a takeover are RL data with return 0 when ``rl_takeover_as_failure`` (the
operator takes over rollouts heading for failure, and the policy did not finish on its own), else
left out; human-controlled windows never enter the RL stage (they are not samples of the policy).
The SL stage uses demonstrations and labeled windows of successful rollouts; intervention windows
of successful episodes only with ``sl_include_interventions``.

The stale-rollout cutoff of the other methods is not applied: the SL stage keeps every success.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from habc_learner.core import weights as W
from habc_learner.core.critic import mlp
from habc_learner.core.episode import POLICY, Outcome
from habc_learner.core.labeling import Source, post_intervention_suffix_start, step_controllers
from habc_learner.core.method_api import StageLearner, TrainerPort, register_stage_learner
from habc_learner.core.replay import Batch, ReplayStore
from habc_policy.core.checkpoint import load_state_dict_strict

RL_DATA = ("latest", "all")
IRE_VLA_FILE = "ire_vla.safetensors"


@dataclass(frozen=True)
class IreVlaConfig:
    """iRe-VLA's stage schedule and RL/SL settings (validated on construction).

    Attributes:
        rl_rounds_per_cycle: RL rounds (backbone frozen, action head trained) per cycle.
        sl_rounds_per_cycle: SL rounds (whole model) per cycle; a cycle starts with its RL rounds.
        rl_lr: learning rate of the action head in the RL stage (AdamW; the SL stage uses the
            trainer's ``actor_lr``).
        rl_clip: PPO clip range ε_clip.
        rl_mc_samples: N, (τ, ε) draws per window for the FPO ratio.
        rl_log_ratio_scale: κ of log r̂ = κ·mean_n(ℓ_old − ℓ_new), ℓ a mean over the chunk's
            H·d entries; None: d, the per-control-step FPO ratio (1: per entry; H·d: the whole
            chunk as one action).
        rl_max_log_ratio: |log r̂| is clamped to this before exp (numerical safety only).
        rl_value_warmup_steps: learner steps at the start of every RL round that fit the value
            head only (0: none; with normalized advantages an unfit baseline still leaves the
            batch mean as baseline).
        rl_normalize_advantages: Â ← (Â − mean) / (std + 1e-8) per batch.
        rl_data: ``"latest"`` (on-policy: windows of the newest producing checkpoint) or
            ``"all"`` (every labeled rollout so far, replay-based PPO).
        rl_takeover_as_failure: policy windows before a takeover are RL data with return 0
            (otherwise they are left out).
        gamma: discount γ of the sparse success reward, per control step.
        sl_include_interventions: the SL stage also samples intervention windows of successful
            episodes (human actions); off in iRe-VLA, which has no operator.
        sl_freeze_backbone: the ablation "backbone frozen throughout": the SL stage trains only
            the action head as well.
    """

    rl_rounds_per_cycle: int = 1
    sl_rounds_per_cycle: int = 1
    rl_lr: float = 1e-4
    rl_clip: float = 0.2
    rl_mc_samples: int = 4
    rl_log_ratio_scale: float | None = None
    rl_max_log_ratio: float = 20.0
    rl_value_warmup_steps: int = 0
    rl_normalize_advantages: bool = True
    rl_data: str = "latest"
    rl_takeover_as_failure: bool = True
    gamma: float = 0.99
    sl_include_interventions: bool = False
    sl_freeze_backbone: bool = False

    def __post_init__(self) -> None:
        for name in ("rl_rounds_per_cycle", "sl_rounds_per_cycle", "rl_value_warmup_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.rl_rounds_per_cycle + self.sl_rounds_per_cycle < 1:
            raise ValueError(
                "rl_rounds_per_cycle + sl_rounds_per_cycle must be >= 1, got "
                f"{self.rl_rounds_per_cycle} + {self.sl_rounds_per_cycle}"
            )
        if self.rl_mc_samples < 1:
            raise ValueError(f"rl_mc_samples must be >= 1, got {self.rl_mc_samples}")
        if not self.rl_lr > 0:
            raise ValueError(f"rl_lr must be > 0, got {self.rl_lr}")
        if not 0.0 < self.rl_clip < 1.0:
            raise ValueError(f"rl_clip must be in (0, 1), got {self.rl_clip}")
        if self.rl_log_ratio_scale is not None and not self.rl_log_ratio_scale > 0:
            raise ValueError(
                f"rl_log_ratio_scale must be > 0 or None, got {self.rl_log_ratio_scale}"
            )
        if not self.rl_max_log_ratio > 0:
            raise ValueError(f"rl_max_log_ratio must be > 0, got {self.rl_max_log_ratio}")
        if self.rl_data not in RL_DATA:
            raise ValueError(f"rl_data {self.rl_data!r} is not one of {RL_DATA}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")

    def stage(self, round_index: int) -> str:
        """The stage of round ``round_index``."""
        return stage_of_round(round_index, self.rl_rounds_per_cycle, self.sl_rounds_per_cycle)


# ------------------------------------------------------------------------------ equations
def stage_of_round(round_index: int, rl_rounds: int, sl_rounds: int) -> str:
    """``"rl"`` for the first ``rl_rounds`` rounds of every cycle of ``rl_rounds + sl_rounds``
    rounds, ``"sl"`` for the rest (round indices are 0-based)."""
    if round_index < 0:
        raise ValueError(f"round_index must be >= 0, got {round_index}")
    if rl_rounds < 0 or sl_rounds < 0 or rl_rounds + sl_rounds < 1:
        raise ValueError(
            f"need rl_rounds, sl_rounds >= 0 with a positive sum, got {rl_rounds}, {sl_rounds}"
        )
    return "rl" if round_index % (rl_rounds + sl_rounds) < rl_rounds else "sl"


def sparse_success_return(
    episode_success: np.ndarray, steps_to_go: np.ndarray, gamma: float
) -> np.ndarray:
    """Monte-Carlo return of the sparse success reward (r = 1 at T_s, 0 elsewhere), [N] float32.

    G_t = γ^(T_s − t)   in a successful episode (1 from T_s on),
    G_t = 0             in a failed one.
    """
    success = np.asarray(episode_success, dtype=bool)
    steps = np.nan_to_num(np.asarray(steps_to_go, dtype=np.float64), nan=0.0)
    return np.where(success, gamma ** np.maximum(steps, 0.0), 0.0).astype(np.float32)


def fpo_log_ratio(loss_old: Tensor, loss_new: Tensor, scale: float, limit: float) -> Tensor:
    """FPO surrogate of log π_θ(A|o) − log π_old(A|o), [B].

        log r̂_i = clamp(κ · (1/N) Σ_n (ℓ_old,i,n − ℓ_θ,i,n), −limit, limit)

    Args:
        loss_old: ℓ_old [B, N], per-sample flow losses of the frozen snapshot (no gradient).
        loss_new: ℓ_θ [B, N], the same (τ, ε) draws through the trained head.
        scale: κ. limit: clamp of |log r̂|.
    """
    if loss_old.shape != loss_new.shape or loss_new.ndim != 2:
        raise ValueError(
            f"loss_old {tuple(loss_old.shape)} and loss_new {tuple(loss_new.shape)} must both "
            "be [B, N]"
        )
    log_ratio = scale * (loss_old.detach() - loss_new).mean(dim=1)
    return log_ratio.clamp(-limit, limit)


def normalize_advantages(advantages: Tensor, eps: float = 1e-8) -> Tensor:
    """Â ← (Â − mean) / (std + eps) over the batch (unchanged for a batch of one)."""
    a = advantages.detach()
    if a.numel() < 2:
        return a
    return (a - a.mean()) / (a.std() + eps)


def ppo_clip_loss(
    log_ratio: Tensor, advantages: Tensor, clip: float
) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip (Schulman et al. 2017, Eq. 7) on the surrogate ratio r̂ = exp(log r̂):

        L = −mean_i min(r̂_i Â_i, clip(r̂_i, 1 − ε, 1 + ε) Â_i)

    Advantages are detached. Returns the loss and its diagnostics (ratio statistics, the fraction
    of clipped samples and the approximate KL mean((r̂ − 1) − log r̂)).
    """
    if log_ratio.shape != advantages.shape:
        raise ValueError(
            f"log_ratio {tuple(log_ratio.shape)} and advantages {tuple(advantages.shape)} differ"
        )
    adv = advantages.detach()
    ratio = log_ratio.exp()
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * adv
    loss = -torch.minimum(unclipped, clipped).mean()
    with torch.no_grad():
        r = ratio.detach()
        info = {
            "loss/ppo_clip": float(loss.detach()),
            "rl/ratio_mean": float(r.mean()),
            "rl/ratio_min": float(r.min()),
            "rl/ratio_max": float(r.max()),
            "rl/clip_frac": float(((r - 1.0).abs() > clip).float().mean()),
            "rl/grad_frac": float((unclipped <= clipped).float().mean()),
            "rl/approx_kl": float(((r - 1.0) - log_ratio.detach()).mean()),
        }
    return loss, info


def value_loss(value: Tensor, returns: Tensor) -> tuple[Tensor, dict[str, float]]:
    """½ mean (V_ψ(φ(s)) − G)² and the explained variance 1 − Var(G − V) / Var(G)."""
    target = returns.detach()
    loss = 0.5 * (value - target).square().mean()
    with torch.no_grad():
        var = target.var() if target.numel() > 1 else target.new_zeros(())
        ev = 1.0 - (target - value.detach()).var() / var if var > 0 else torch.tensor(float("nan"))
        info = {
            "loss/value": float(loss.detach()),
            "rl/value_mean": float(value.detach().mean()),
            "rl/explained_variance": float(ev),
        }
    return loss, info


# ------------------------------------------------------------------------------ data pools
@dataclass(frozen=True, eq=False)
class StagePools:
    """Window rows each stage may sample, computed from a store's table.

    Attributes:
        rl_rows: rows of the RL stage; rl_returns: their G_t [n] float32; rl_takeover: True for
            pre-takeover policy windows counted as failures.
        sl_rows: rows of the SL stage.
    """

    rl_rows: np.ndarray
    rl_returns: np.ndarray
    rl_takeover: np.ndarray
    sl_rows: np.ndarray


def stage_pools(store: ReplayStore, config: IreVlaConfig) -> StagePools:
    """The RL and SL pools of ``store`` under ``config`` (see the module docstring)."""
    table = store.table
    episodes = store.episodes
    src = table.source
    if len(table) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return StagePools(empty, np.zeros(0, dtype=np.float32), np.zeros(0, dtype=bool), empty)
    failed = np.array([e.outcome is Outcome.FAILURE for e in episodes], dtype=bool)
    labeled = (src == Source.ROLLOUT_SUCCESS) | (src == Source.ROLLOUT_FAILURE)
    takeover = np.zeros(len(table), dtype=bool)
    if config.rl_takeover_as_failure:
        for i, episode in enumerate(episodes):
            if (
                episode.is_demonstration
                or not episode.outcome.is_labeled
                or not episode.human_steps.any()
            ):
                continue
            rows = np.flatnonzero(table.episode_index == i)
            anchors = table.anchor[rows]
            ctrl = step_controllers(episode.authority)
            before = anchors < post_intervention_suffix_start(episode.authority)
            takeover[rows] = (src[rows] == Source.UNLABELED) & (ctrl[anchors] == POLICY) & before
    rl = labeled | takeover
    if config.rl_data == "latest" and rl.any():
        newest = table.producer_step[rl].max()
        rl &= table.producer_step == newest
    returns = sparse_success_return(table.episode_success, table.steps_to_go, config.gamma)
    returns = np.where(takeover, 0.0, returns).astype(np.float32)
    sl = ((src == Source.DEMO) & ~failed[table.episode_index]) | (src == Source.ROLLOUT_SUCCESS)
    if config.sl_include_interventions:
        sl |= (src == Source.INTERVENTION) & table.episode_success
    rl_rows = np.flatnonzero(rl)
    return StagePools(
        rl_rows=rl_rows,
        rl_returns=returns[rl_rows],
        rl_takeover=takeover[rl_rows],
        sl_rows=np.flatnonzero(sl),
    )


class ValueHead(nn.Module):
    """V_ψ(φ(s)) [B] on the frozen, detached backbone features (the RL baseline)."""

    def __init__(self, feature_dim: int, hidden_dim: int, num_layers: int) -> None:
        super().__init__()
        self.net = mlp(feature_dim, hidden_dim, 1, num_layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features).squeeze(-1)


# ------------------------------------------------------------------------------ the learner
class IreVlaLearner(StageLearner):
    """The iRe-VLA stages of one :class:`~habc_learner.core.trainer.Trainer` run.

    Owns the value head, the RL optimizers and the round-start snapshot of the action head; the
    trainer owns the policy, the SL (whole-model) optimizer, the RNGs and the counters, and
    checkpoints everything this object exposes (:meth:`modules`, :meth:`optimizers`,
    :meth:`state_json`). It sees the trainer through :class:`TrainerPort` only.
    """

    state_key = "ire_vla"
    tensor_file = IRE_VLA_FILE

    def __init__(self, port: TrainerPort, config: IreVlaConfig) -> None:
        super().__init__(port)
        self.config = config
        tcfg = port.config
        self.value = ValueHead(
            tcfg.policy.feature_dim, tcfg.critic.hidden_dim, tcfg.critic.num_layers
        ).to(port.device)
        self.value_optimizer = torch.optim.Adam(
            self.value.parameters(), lr=tcfg.critic.lr, foreach=True
        )
        self.head_optimizer = torch.optim.AdamW(
            port.policy.head_parameters(),
            lr=config.rl_lr,
            weight_decay=tcfg.weight_decay,
            foreach=True,
        )
        self.old_head: nn.Module | None = None
        self.snapshot_round: int | None = None
        self.round_start_step = 0
        self._pools: StagePools | None = None
        self._pool_key: tuple[int, int, int] | None = None

    # ---------------------------------------------------------------------------- schedule
    @property
    def stage(self) -> str:
        """The stage of the trainer's current round."""
        return self.config.stage(self.port.round_index)

    @property
    def log_ratio_scale(self) -> float:
        """κ: ``rl_log_ratio_scale``, or the action dimension d when it is None."""
        if self.config.rl_log_ratio_scale is not None:
            return self.config.rl_log_ratio_scale
        return float(self.port.config.policy.action_dim)

    def begin_round(self) -> None:
        """Start the trainer's current round: snapshot the action head for an RL round."""
        t = self.port
        self.snapshot_round = t.round_index
        self.round_start_step = t.learner_step
        self.old_head = self._frozen_copy(t.policy.expert) if self.stage == "rl" else None

    @staticmethod
    def _frozen_copy(module: nn.Module) -> nn.Module:
        frozen = copy.deepcopy(module)
        for p in frozen.parameters():
            p.requires_grad_(False)
        return frozen.eval()

    def pools(self) -> StagePools:
        """The stage pools, recomputed whenever the store changed."""
        store = self.port.store
        key = (len(store.episodes), len(store), store.num_dropped)
        if self._pools is None or key != self._pool_key:
            self._pools = stage_pools(store, self.config)
            self._pool_key = key
        return self._pools

    # ---------------------------------------------------------------------------- one step
    def train_step(self) -> dict[str, float]:
        """One learner step of the current round's stage; returns every logged scalar."""
        t = self.port
        t.ensure_normalizer()
        if self.snapshot_round != t.round_index:
            self.begin_round()
        stage = self.stage
        t.policy.train()
        info = self._rl_step() if stage == "rl" else self._sl_step()
        info["ire_vla/stage_rl"] = float(stage == "rl")
        return info

    def _gather(self, rows: np.ndarray) -> Batch:
        t = self.port
        return t.store.gather(
            rows, load_images=bool(t.config.policy.camera_names), next_images=False
        ).to(t.device)

    def _sl_step(self) -> dict[str, float]:
        """Flow matching (Eq. 1, unit weights) on demos + successful rollouts, whole model."""
        t, cfg = self.port, self.port.config
        pool = self.pools().sl_rows
        if pool.size == 0:
            raise ValueError(
                "the iRe-VLA SL stage has no demonstration or successful rollout window to "
                f"sample; store has {t.store.source_counts()}"
            )
        rows = pool[t.rng.integers(0, pool.size, size=cfg.batch_size)]
        batch = self._gather(rows)
        normalizer = t.ensure_normalizer()
        q = normalizer.normalize_proprio(batch.proprio)
        actions = normalizer.normalize_action(batch.actions)
        if self.config.sl_freeze_backbone:
            # Ablation: the encoder gets no gradient, so the optimizer leaves it untouched.
            with torch.no_grad():
                features = t.policy.encode(q, batch.prompt_tokens, batch.images or None)
            params = t.policy.head_parameters()
        else:
            features = t.policy.encode(q, batch.prompt_tokens, batch.images or None)
            params = list(t.policy.parameters())
        noise, tau = t.policy.draw_noise_and_tau(len(batch), t.generator, t.device)
        per_sample = t.policy.per_sample_loss(features, actions, batch.action_mask, noise, tau)
        loss, info = W.weighted_actor_loss(per_sample, torch.ones_like(per_sample))
        info["weights/frac_valid"] = 1.0
        t.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        info["grad_norm/actor"] = float(nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        t.actor_optimizer.step()
        info["sl/pool_windows"] = float(pool.size)
        for s in (Source.DEMO, Source.ROLLOUT_SUCCESS, Source.INTERVENTION):
            info[f"batch/frac_{s.name.lower()}"] = float((batch.source == s).float().mean())
        return info

    def _rl_step(self) -> dict[str, float]:
        """Value regression and PPO-clip with the FPO ratio on the action head only."""
        t, cfg, icfg = self.port, self.port.config, self.config
        pools = self.pools()
        info: dict[str, float] = {"rl/pool_windows": float(pools.rl_rows.size)}
        if pools.rl_rows.size == 0:
            info["rl/skipped"] = 1.0  # no rollout window yet: the step only advances the clock
            return info
        info["rl/skipped"] = 0.0
        pick = t.rng.integers(0, pools.rl_rows.size, size=cfg.batch_size)
        batch = self._gather(pools.rl_rows[pick])
        returns = torch.from_numpy(pools.rl_returns[pick]).to(t.device)
        normalizer = t.ensure_normalizer()
        q = normalizer.normalize_proprio(batch.proprio)
        actions = normalizer.normalize_action(batch.actions)
        with torch.no_grad():  # the backbone is frozen in this stage
            features = t.policy.encode(q, batch.prompt_tokens, batch.images or None)

        value = self.value(features)
        v_loss, v_info = value_loss(value, returns)
        info.update(v_info)
        self.value_optimizer.zero_grad(set_to_none=True)
        v_loss.backward()
        info["grad_norm/value"] = float(
            nn.utils.clip_grad_norm_(self.value.parameters(), cfg.grad_clip)
        )
        self.value_optimizer.step()

        raw_adv = returns - value.detach()
        adv = normalize_advantages(raw_adv) if icfg.rl_normalize_advantages else raw_adv
        info.update(
            {
                "rl/return_mean": float(returns.mean()),
                "rl/success_frac": float((returns > 0).float().mean()),
                "rl/takeover_frac": float(torch.from_numpy(pools.rl_takeover[pick]).float().mean()),
                "rl/adv_raw_mean": float(raw_adv.mean()),
                "rl/adv_raw_std": float(raw_adv.std()) if raw_adv.numel() > 1 else 0.0,
                "rl/policy_lag": float(
                    (self.round_start_step - batch.producer_step).float().mean()
                ),
            }
        )
        warmup = t.learner_step - self.round_start_step < icfg.rl_value_warmup_steps
        info["rl/value_warmup"] = float(warmup)
        if warmup:
            return info

        assert self.old_head is not None
        n = icfg.rl_mc_samples
        b = len(batch)
        features_n = features.repeat_interleave(n, dim=0)
        actions_n = actions.repeat_interleave(n, dim=0)
        mask_n = batch.action_mask.repeat_interleave(n, dim=0)
        noise, tau = t.policy.draw_noise_and_tau(b * n, t.generator, t.device)
        with torch.no_grad():
            loss_old = t.policy.per_sample_loss(
                features_n, actions_n, mask_n, noise, tau, expert=self.old_head
            )
        loss_new = t.policy.per_sample_loss(features_n, actions_n, mask_n, noise, tau)
        log_ratio = fpo_log_ratio(
            loss_old.view(b, n), loss_new.view(b, n), self.log_ratio_scale, icfg.rl_max_log_ratio
        )
        ppo_loss, p_info = ppo_clip_loss(log_ratio, adv, icfg.rl_clip)
        info.update(p_info)
        # The actor's flow loss on its batch, as every method logs it (the RL objective is
        # loss/ppo_clip); "valid" samples are those the clip leaves a gradient to.
        info["loss/actor"] = float(loss_new.detach().mean())
        info["weights/frac_valid"] = p_info["rl/grad_frac"]
        info["rl/log_ratio_scale"] = self.log_ratio_scale
        self.head_optimizer.zero_grad(set_to_none=True)
        ppo_loss.backward()
        info["grad_norm/head"] = float(
            nn.utils.clip_grad_norm_(t.policy.head_parameters(), cfg.grad_clip)
        )
        self.head_optimizer.step()
        return info

    # ---------------------------------------------------------------------------- checkpoints
    def modules(self) -> dict[str, nn.Module]:
        """Modules to checkpoint: the value head, and the RL snapshot while its round runs."""
        out: dict[str, nn.Module] = {"value": self.value}
        if self.old_head is not None and self.snapshot_round == self.port.round_index:
            out["old_head"] = self.old_head
        return out

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers to checkpoint (the SL optimizer is the trainer's ``actor_optimizer``)."""
        return {"ire_head": self.head_optimizer, "ire_value": self.value_optimizer}

    def state_json(self) -> dict[str, Any]:
        mid_round = self.snapshot_round == self.port.round_index
        return {
            "snapshot_round": self.snapshot_round if mid_round else None,
            "round_start_step": self.round_start_step,
        }

    def load_state(self, tensors: dict[str, Tensor], state: dict[str, Any], what: str) -> None:
        """Restore from :meth:`module_tensors` and :meth:`state_json` output."""

        def sub(prefix: str) -> dict[str, Tensor]:
            return {
                k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")
            }

        load_state_dict_strict(self.value, sub("value"), f"{what}[value]")
        self.value.to(self.port.device)
        self.round_start_step = int(state["round_start_step"])
        snapshot_round = state.get("snapshot_round")
        self.snapshot_round = None if snapshot_round is None else int(snapshot_round)
        self.old_head = None
        if self.snapshot_round is not None and self.config.stage(self.snapshot_round) == "rl":
            old = self._frozen_copy(self.port.policy.expert)
            load_state_dict_strict(old, sub("old_head"), f"{what}[old_head]")
            self.old_head = old.to(self.port.device)
        self._pools = None
        self._pool_key = None


register_stage_learner(IreVlaConfig, IreVlaLearner)

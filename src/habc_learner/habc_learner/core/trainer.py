"""Round-based learner: N gradient steps per round over the replay store, for any method.

One learner step (``Trainer.train_step``):

1. draw a batch with the method's source mixing;
2. actor: encode φ(s), per-sample flow-matching loss ℓ_i (Eq. 1, unreduced);
3. critic (methods that use one) on detached φ(s), φ(s'): Eq. 4 for the dual head, the
   distributional CE for the Imit-Recap parent value head; Polyak target updates;
4. weights under ``no_grad``: advantages (Eqs. 5–6), gate (Eq. 7) with warmup, the per-source
   table (IR from ``ir_from_round``), normalization (Eq. 8);
5. L = mean_i w_i ℓ_i + L_critic; every loss term and weight statistic goes to TensorBoard.

Methods with their own stage schedule (iRe-VLA, :mod:`habc_learner.core.ire_vla`) replace this
step with their own; the round loop, logging and checkpoints stay the trainer's.

A round ends with an atomic checkpoint (``habc_policy.core.checkpoint``) that holds everything
needed to continue the same run: weights, critic and target copies, optimizer tensors (in
safetensors, no pickle), RNG states, counters.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from habc_learner.core import calibration as cal
from habc_learner.core import critic as C
from habc_learner.core import distributed as D
from habc_learner.core import weights as W
from habc_learner.core.critic import CriticConfig, DualHeadCritic, ParentValueHead
from habc_learner.core.labeling import Source
from habc_learner.core.method_api import StageLearner, make_stage_learner
from habc_learner.core.methods import MethodConfig, WeightInputs, compute_w_tilde, get_method
from habc_learner.core.replay import Batch, ReplayConfig, ReplayStore, is_heldout_episode
from habc_learner.core.windows import WindowConfig
from habc_policy.core import checkpoint as ckpt
from habc_policy.core.configuration_flow import FlowPolicyConfig
from habc_policy.core.modeling_flow import FlowPolicy, ObservationEncoder
from habc_policy.core.normalize import DEFAULT_STD_FLOOR, Normalizer, compute_stats

CRITIC_FILE = "critic.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "trainer_state.json"
ECE_BINS = 10


LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainerConfig:
    """Learner configuration (validated on construction).

    Attributes:
        method: a registry name or a :class:`MethodConfig` (resolved on construction).
        policy: actor config. critic: critic config. window: windowing config (its
            ``labeling`` is taken from the method).
        batch_size: 256 in the paper.
        steps_per_round: gradient steps per round (6000 in the paper).
        actor_lr, weight_decay, grad_clip: actor optimization (AdamW).
        seed: seeds model init, batch sampling and flow noise.
        device: ``"cpu"`` by default; ``"cuda"`` when present.
        stale_cutoff: stale-rollout cutoff in learner steps (10000).
        heldout_fraction: rollout episodes held out (Imit-Recap threshold selection).
        recap_threshold_every: re-select the Imit-Recap threshold every this many steps.
        recap_heldout_windows: held-out windows scored to select it.
        std_floor: normalization std floor.
        log_dir: TensorBoard directory (None: no TensorBoard).
        checkpoint_dir: checkpoint root (None: no checkpoints).
        log_every: TensorBoard scalars every this many steps.
        progress: show the tqdm progress bar.
    """

    method: str | MethodConfig = "habc"
    policy: FlowPolicyConfig = field(default_factory=FlowPolicyConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    batch_size: int = 256
    steps_per_round: int = 6000
    actor_lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    stale_cutoff: int = 10000
    heldout_fraction: float = 0.1
    recap_threshold_every: int = 500
    recap_heldout_windows: int = 2048
    std_floor: float = DEFAULT_STD_FLOOR
    log_dir: str | None = None
    checkpoint_dir: str | None = None
    log_every: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        method = get_method(self.method)
        object.__setattr__(self, "method", method)
        failed = "drop" if method.drop_failed_corrections else self.window.failed_corrections
        object.__setattr__(
            self,
            "window",
            dataclasses.replace(self.window, labeling=method.labeling, failed_corrections=failed),
        )
        if self.window.horizon != self.policy.horizon:
            raise ValueError(
                f"window.horizon={self.window.horizon} must equal "
                f"policy.horizon={self.policy.horizon}"
            )
        for name in (
            "batch_size",
            "steps_per_round",
            "log_every",
            "recap_threshold_every",
            "recap_heldout_windows",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.actor_lr <= 0 or self.grad_clip <= 0 or self.weight_decay < 0:
            raise ValueError("actor_lr and grad_clip must be > 0 and weight_decay >= 0")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device {self.device!r} is not 'cpu' or 'cuda[:N]'")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but CUDA is not available")

    @property
    def method_config(self) -> MethodConfig:
        assert isinstance(self.method, MethodConfig)
        return self.method

    def replay_config(self) -> ReplayConfig:
        """The replay configuration consistent with this trainer (labeling, cameras, prompts)."""
        return ReplayConfig(
            window=self.window,
            stale_cutoff=self.stale_cutoff,
            heldout_fraction=self.heldout_fraction,
            cameras=self.policy.camera_names,
            prompt_buckets=self.policy.prompt_buckets,
            prompt_max_tokens=self.policy.prompt_max_tokens,
            image_augment=self.policy.image_augment,
            augment_pad=self.policy.augment_pad,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CriticValidation:
    """Held-out critic validation of one round: the latest figures and early-stopping state.

    Attributes:
        last: the latest ``critic_val/*`` figures.
        best_bce: lowest held-out BCE of the round; best_state: the critic then (copies).
        bad: evaluations since the best. stopped: the critic stopped training this round;
        stopped_at: the learner step it stopped at.
    """

    last: dict[str, float] = field(default_factory=dict)
    best_bce: float = math.inf
    best_state: dict[str, dict[str, Tensor]] | None = None
    bad: int = 0
    stopped: bool = False
    stopped_at: int | None = None


@dataclass
class RoundSummary:
    """What one round did: counters, the round means of every logged scalar, p_v calibration
    (ECE over the round's labeled training windows, and AUROC / ECE / Brier / BCE on the
    held-out validation episodes at the round end) and the checkpoint written."""

    round_index: int
    learner_step: int
    steps: int
    means: dict[str, float] = field(default_factory=dict)
    ece: float = float("nan")
    validation: dict[str, float] = field(default_factory=dict)
    dropped_stale: int = 0
    checkpoint: Path | None = None
    checkpoint_id: str | None = None
    notes: tuple[str, ...] = ()  # what a person must know, e.g. a method's source had no data
    by_robot: tuple[str, ...] = ()  # fleet ingest: success and takeovers per robot

    def line(self) -> str:
        """One console line with the headline statistics."""
        keys = (
            "ire_vla/stage_rl",
            "loss/actor",
            "loss/ppo_clip",
            "loss/value",
            "rl/clip_frac",
            "loss/critic",
            "weights/mean_g_success_autonomous",
            "weights/mean_g_intervention",
            "weights/frac_valid",
            "critic/p_v_brier",
            "recap/pass_rate",
        )
        parts = [f"round {self.round_index} step {self.learner_step}"]
        parts += [f"{k.split('/')[-1]}={self.means[k]:.4g}" for k in keys if k in self.means]
        if not math.isnan(self.ece):
            parts.append(f"p_v_ece={self.ece:.4g}")
        for key in ("auroc", "ece", "brier"):
            value = self.validation.get(f"critic_val/{key}", float("nan"))
            if not math.isnan(value):
                parts.append(f"val_{key}={value:.3g}")
        if self.validation.get("critic_val/stopped_at", -1) >= 0:
            parts.append(f"critic_stopped_at={self.validation['critic_val/stopped_at']:.0f}")
        parts += [f"NOTE: {n}" for n in self.notes]
        parts += list(self.by_robot)
        return " | ".join(parts)


def missing_sources(method: MethodConfig, counts: dict[str, int]) -> list[str]:
    """Notes for the sources ``method`` mixes in that have no windows in the store.

    Imit-DAgger without a single intervention window trains on demonstrations only, i.e. it
    is SFT; a person comparing it with SFT must be told so.
    """
    wanted = [src for src, ratio in method.mixing if ratio > 0]
    empty = [src for src in wanted if counts.get(src, 0) == 0]
    if not empty or len(empty) == len(wanted):
        return []
    rest = [src for src in wanted if src not in empty]
    return [
        f"{method.name}: no {src} windows in the store, so it trains on {', '.join(rest)} only"
        for src in empty
    ]


def optimizer_to_tensors(
    optimizer: torch.optim.Optimizer, prefix: str
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any], prefix: str
) -> None:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = defaultdict(dict)
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            pid, key = name[len(prefix) + 1 :].split(".", 1)
            state[int(pid)][key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state[int(pid)][key] = value
    groups = [dict(g) for g in meta["param_groups"]]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": dict(state), "param_groups": groups})


class Trainer:
    """Round-based trainer for any registered method over a :class:`ReplayStore`."""

    def __init__(
        self, config: TrainerConfig, store: ReplayStore, dist: D.DistContext = D.SINGLE
    ) -> None:
        self.config = config
        self.method = config.method_config
        self.store = store
        #: data-parallel place of this process (:mod:`habc_learner.core.distributed`).
        self.dist = dist
        self._ddp: nn.Module | None = None
        #: extra JSON files written into every checkpoint (e.g. the learner job's config).
        self.checkpoint_json: dict[str, Any] = {}
        self._augment_rng: np.random.Generator | None = None
        expected = config.replay_config()
        if store.config.window != expected.window:
            raise ValueError(
                f"store window config {store.config.window} does not match the trainer's "
                f"{expected.window} (method {self.method.name!r} uses {self.method.labeling!r} "
                f"labeling); build the store with ReplayStore(config.replay_config())"
            )
        if store.config.cameras != config.policy.camera_names:
            raise ValueError(
                f"store cameras {store.config.cameras} != "
                f"policy cameras {config.policy.camera_names}"
            )
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.policy = FlowPolicy(config.policy).to(self.device)
        self.critic_encoder: ObservationEncoder | None = None
        self.critic: DualHeadCritic | None = None
        self.critic_target: nn.Module | None = None
        self.parent: ParentValueHead | None = None
        self.parent_target: nn.Module | None = None
        critic_params: list[nn.Parameter] = []
        feature_dim = config.policy.feature_dim
        features = config.critic.features
        if self.method.uses_critic_features and features == "own":
            self.critic_encoder = ObservationEncoder(config.policy).to(self.device)
            critic_params += list(self.critic_encoder.parameters())
        elif self.method.uses_critic_features and features == "frozen_sft":
            self.critic_encoder = ObservationEncoder(config.policy).to(self.device)
            self.freeze_critic_features()
        if self.method.uses_dual_critic:
            self.critic = DualHeadCritic(feature_dim, config.critic).to(self.device).eval()
            self.critic_target = C.make_target(self.critic).eval()
            critic_params += list(self.critic.parameters())
        if self.method.train_parent_value:
            self.parent = ParentValueHead(feature_dim, config.critic).to(self.device)
            self.parent_target = C.make_target(self.parent)
            critic_params += list(self.parent.parameters())
        self.actor_optimizer = torch.optim.AdamW(
            self.policy.parameters(),
            lr=config.actor_lr,
            weight_decay=config.weight_decay,
            foreach=True,
        )
        self.critic_optimizer: torch.optim.Optimizer | None = None
        if critic_params and config.critic.weight_decay > 0:
            self.critic_optimizer = torch.optim.AdamW(
                critic_params,
                lr=config.critic.lr,
                weight_decay=config.critic.weight_decay,
                foreach=True,
            )
        elif critic_params:
            self.critic_optimizer = torch.optim.Adam(
                critic_params, lr=config.critic.lr, foreach=True
            )
        self.normalizer: Normalizer | None = None
        self.learner_step = 0
        self.run_start_step = 0
        self.round_index = 0
        self.recap_threshold: float | None = None
        self.recap_heldout_pass_rate = float("nan")
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        self._writer: SummaryWriter | None = None
        self._ece_bins = np.zeros((3, ECE_BINS))
        self._validation = CriticValidation()
        self._val_episodes: np.ndarray | None = None
        #: the method's own stages (iRe-VLA), which replace the weighted step; None for the rest.
        self.stages: StageLearner | None = make_stage_learner(self.method.ire_vla, self)
        if dist.enabled and self.stages is not None and not self.stages.data_parallel:
            raise ValueError(
                f"method {self.method.name!r} ({type(self.stages).__name__} stages) does not "
                "run data-parallel yet: run it on one process"
            )

    # ------------------------------------------------------------------------------ lifecycle
    @classmethod
    def resume(
        cls,
        config: TrainerConfig,
        store: ReplayStore,
        checkpoint: str | Path | None = None,
        dist: D.DistContext = D.SINGLE,
    ) -> Trainer:
        """A trainer continuing the run of ``checkpoint`` (default: the latest under
        ``config.checkpoint_dir``); a fresh trainer when there is none yet."""
        trainer = cls(config, store, dist)
        if checkpoint is None:
            if config.checkpoint_dir is None:
                raise ValueError("resume needs a checkpoint path or config.checkpoint_dir")
            checkpoint = ckpt.latest_checkpoint(config.checkpoint_dir)
        if checkpoint is not None:
            trainer.load_checkpoint(checkpoint)
        return trainer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def writer(self) -> SummaryWriter | None:
        if self._writer is None and self.config.log_dir is not None and self.dist.is_main:
            self._writer = SummaryWriter(self.config.log_dir, purge_step=self.learner_step)
        return self._writer

    @property
    def ir_active(self) -> bool:
        return self.method.ir_active(self.round_index)

    def ensure_normalizer(self) -> Normalizer:
        """Per-dimension stats from the demonstrations (all data when there are none), computed
        once and then frozen (they are part of every checkpoint)."""
        if self.normalizer is None:
            proprio, actions = self.store.all_proprio_actions(("demo",))
            self.normalizer = Normalizer(
                compute_stats(proprio, self.config.std_floor),
                compute_stats(actions, self.config.std_floor),
            )
        return self.normalizer

    def init_policy_from(self, checkpoint: str | Path) -> None:
        """Start from a policy checkpoint (e.g. the SFT one): weights and normalizer. The learner
        step continues from the checkpoint's; warmup restarts for this run."""
        loaded = ckpt.load_policy(checkpoint, device=self.device)
        if loaded.config != self.config.policy:
            raise ValueError(
                f"checkpoint policy config {loaded.config} != trainer's {self.config.policy}"
            )
        self.policy.load_state_dict(loaded.model.state_dict())
        self.normalizer = loaded.normalizer
        self.learner_step = loaded.learner_step
        self.run_start_step = loaded.learner_step
        if self.config.critic.features == "frozen_sft":
            self.freeze_critic_features()

    def freeze_critic_features(self) -> None:
        """``features="frozen_sft"``: φ(s) of the critic becomes a frozen copy of the actor's
        encoder as it is now (online learning starts here; the copy travels in checkpoints)."""
        if self.critic_encoder is None:
            return
        self.critic_encoder.load_state_dict(self.policy.encoder.state_dict())
        self.critic_encoder.eval()
        for p in self.critic_encoder.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------------------ one step
    def _features(
        self,
        proprio: Tensor,
        tokens: Tensor,
        images: dict[str, Tensor] | None,
        actor_features: Tensor | None,
    ) -> Tensor:
        """Critic input φ(s): detached actor features (choice), the frozen SFT encoder or the
        critic's own encoder (``CriticConfig.features``)."""
        if self.critic_encoder is not None:
            if self.config.critic.features == "frozen_sft":
                with torch.no_grad():
                    return self.critic_encoder(proprio, tokens, images)
            return self.critic_encoder(proprio, tokens, images)
        if actor_features is not None:
            return actor_features.detach()
        with torch.no_grad():
            return self.policy.encode(proprio, tokens, images)

    def train_step(self) -> dict[str, float]:
        """One learner step; returns every logged scalar."""
        if self.stages is not None:
            info = self.stages.train_step()
            self.learner_step += 1
            return info
        cfg, method = self.config, self.method
        normalizer = self.ensure_normalizer()
        self.store.drop_stale(self.learner_step)
        run_step = self.learner_step - self.run_start_step
        if self.parent is not None and (
            self.recap_threshold is None or run_step % cfg.recap_threshold_every == 0
        ):
            self.select_recap_threshold()
        uses_critic = method.uses_critic_features
        t_data = time.perf_counter()
        world = self.dist.world_size
        batch = self.store.sample(
            cfg.batch_size * world,  # the global batch; this rank keeps its shard
            method.mixing_dict,
            self.rng,
            proportional=method.proportional,
            split=method.train_split,
            load_images=bool(cfg.policy.camera_names),
            next_images=uses_critic,
            augment=True,
            shard=D.shard_rows(self.dist, cfg.batch_size * world) if self.dist.enabled else None,
            augment_rng=self._augment_rng,
            fixed_shares=dict(method.fixed_shares),
        ).to(self.device)
        t_compute = time.perf_counter()
        q = normalizer.normalize_proprio(batch.proprio)
        actions = normalizer.normalize_action(batch.actions)
        images = batch.images or None
        self.policy.train()
        train_critic = not self._validation.stopped
        if self.dist.enabled:  # actor and critic under one DDP: its backward averages grads
            if self._ddp is None:
                ccfg = cfg.critic
                stops = ccfg.early_stopping_patience > 0 and ccfg.validation_fraction > 0
                self._ddp = D.wrap(self.dist, self._trainable_modules(), self.device, stops)
            out = self._ddp(self._step_losses, batch, q, actions, images, run_step, train_critic)
        else:
            out = self._step_losses(batch, q, actions, images, run_step, train_critic)
        actor_loss, critic_total, info, w_tilde, w, gate = out

        self.actor_optimizer.zero_grad(set_to_none=True)
        if self.critic_optimizer is not None:
            self.critic_optimizer.zero_grad(set_to_none=True)
        (actor_loss + critic_total if train_critic else actor_loss).backward()
        info["grad_norm/actor"] = float(
            nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
        )
        self.actor_optimizer.step()
        if self.critic_optimizer is not None and train_critic:
            params = [p for g in self.critic_optimizer.param_groups for p in g["params"]]
            info["grad_norm/critic"] = float(nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            self.critic_optimizer.step()
        info["critic/stopped"] = float(not train_critic)
        if self.critic is not None and self.critic_target is not None and train_critic:
            C.polyak_update(self.critic_target, self.critic, cfg.critic.polyak_tau)
        if self.parent is not None and self.parent_target is not None:
            C.polyak_update(self.parent_target, self.parent, cfg.critic.polyak_tau)

        info.update(self._weight_stats(batch, w_tilde, w, gate))
        now = time.perf_counter()
        info["time/data_s"] = t_compute - t_data  # sample + image load + augment
        info["time/compute_s"] = now - t_compute  # forward, backward, optimizer steps
        self.learner_step += 1
        return D.mean_over_ranks(self.dist, info)

    def _trainable_modules(self) -> dict[str, nn.Module]:
        """The modules the optimizers train (what data-parallel training wraps)."""
        modules = {"policy": self.policy, "critic": self.critic, "parent": self.parent}
        if self.config.critic.features == "own":
            modules["critic_encoder"] = self.critic_encoder
        return {k: m for k, m in modules.items() if m is not None}

    def _step_losses(
        self,
        batch: Batch,
        q: Tensor,
        actions: Tensor,
        images: dict[str, Tensor] | None,
        run_step: int,
        train_critic: bool = True,
    ) -> tuple[Tensor, Tensor, dict[str, float], Tensor, Tensor, Tensor]:
        """The differentiable part of a step: actor loss, critic loss, logged scalars, w̃, w, g.

        On W ranks the flow noise is the global batch's (this rank's rows of it), Eq. 8 is
        normalized over the global batch and the weight-sum reduction is rescaled to the global
        Σ w, so DDP's gradient mean is the gradient of the global batch's actor loss."""
        method = self.method
        normalizer = self.ensure_normalizer()
        uses_critic = method.uses_critic_features
        features = self.policy.encode(q, batch.prompt_tokens, images)
        world = self.dist.world_size
        noise, tau = self.policy.draw_noise_and_tau(len(batch) * world, self.generator, self.device)
        if self.dist.enabled:
            shard = D.shard_rows(self.dist, len(batch) * world)
            noise, tau = noise[shard], tau[shard]
        per_sample = self.policy.per_sample_loss(
            features, actions, batch.action_mask, noise, tau, entry_mean=method.entry_mean
        )

        info: dict[str, float] = {}
        critic_total = features.new_zeros(())
        inputs: dict[str, Any] = {
            "source": batch.source,
            "learner_step": run_step,
            "ir_active": self.ir_active,
        }
        if uses_critic:
            q_next = normalizer.normalize_proprio(batch.next_proprio)
            phi = self._features(q, batch.prompt_tokens, images, features)
            with torch.no_grad():
                phi_next = self._features(
                    q_next, batch.prompt_tokens, batch.next_images or None, None
                )
            if self.critic is not None:
                loss, c_info, extra = self._dual_critic_terms(batch, phi, phi_next)
                critic_total = critic_total + loss
                info.update(c_info)
                inputs.update(extra)
            if self.parent is not None:
                loss, p_info, extra = self._parent_value_terms(batch, phi, phi_next)
                critic_total = critic_total + loss
                info.update(p_info)
                inputs.update(extra)

        w_tilde, gate = compute_w_tilde(method, WeightInputs(**inputs))
        if not self.dist.enabled:
            w = W.normalize_weights(w_tilde, method.normalization_eps)
            actor_loss, a_info = W.weighted_actor_loss(per_sample, w, method.actor_reduction)
        else:  # Eq. 8 over the global batch; the weight sum's denominator is global too
            w_all = W.normalize_weights(
                D.all_gather_cat(self.dist, w_tilde), method.normalization_eps
            )
            n = len(w_tilde)
            w = w_all[self.dist.rank * n : (self.dist.rank + 1) * n]
            actor_loss, a_info = W.weighted_actor_loss(per_sample, w, method.actor_reduction)
            if method.actor_reduction == "weight_sum":
                actor_loss = actor_loss * (world * w.sum() / w_all.sum().clamp_min(1e-6))
                a_info["loss/actor"] = float(actor_loss.detach())
        info.update(a_info)
        if not train_critic:  # a stopped critic is left out of the differentiated outputs
            critic_total = critic_total.detach()
        return actor_loss, critic_total, info, w_tilde, w, gate

    def _dual_critic_terms(
        self, batch: Batch, phi: Tensor, phi_next: Tensor
    ) -> tuple[Tensor, dict[str, float], dict[str, Tensor]]:
        assert self.critic is not None and self.critic_target is not None
        ccfg = self.config.critic
        # The critic lives in eval mode (every reader gets the deterministic critic); only the
        # loss's forward pass runs in train mode, which matters with dropout.
        self.critic.train()
        members, v_e_train = self.critic.forward_members(phi)
        self.critic.eval()
        with torch.no_grad():
            if ccfg.dropout > 0:
                z_v, v_e = self.critic(phi)
            else:
                z_v, v_e = C.ensemble_logit(members.detach()), v_e_train.detach()
            z_v_next, v_e_next = self.critic(phi_next)
            if ccfg.efficiency_target == "mc":
                y_e = C.efficiency_mc_target(batch.steps_to_go)
            else:
                boot = (
                    self.critic_target(phi_next)[1] if ccfg.td_bootstrap == "polyak" else v_e_next
                )
                y_e = C.efficiency_td_target(boot, batch.step_cost, batch.success_done)
        # Validation episodes never train the critic (their windows still get weights).
        train_rows = ~self.critic_validation_mask(batch.window_index)
        lab = C.d_lab_mask(batch.outcome_label) & train_rows
        succ = C.d_succ_mask(batch.source, batch.episode_success) & train_rows
        loss, info = C.critic_loss(
            members,
            v_e_train,
            batch.outcome_label,
            y_e,
            lab,
            succ,
            ccfg.huber_delta,
            train_efficiency=self.method.train_efficiency,
        )
        info["critic/frac_validation"] = float((~train_rows).float().mean())
        with torch.no_grad():
            z_clamped = W.clamp_viability_logit(z_v)
            p_v = torch.sigmoid(z_clamped)
            a_v = W.viability_advantage(z_v, z_v_next, batch.has_next)
            a_e = W.efficiency_advantage(v_e, v_e_next, batch.step_cost, batch.has_next)
            y = batch.outcome_label
            info["critic/p_v_mean"] = float(p_v.mean())
            info["critic/v_e_mean"] = float(v_e.mean())
            info["critic/A_v_mean"] = float(a_v.mean())
            info["critic/A_e_mean"] = float(a_e.mean())
            if lab.any():
                info["critic/p_v_brier"] = float(((p_v - y)[lab]).square().mean())
                info["critic/p_v_accuracy"] = float(
                    ((p_v[lab] > 0.5).float() == y[lab]).float().mean()
                )
                self._accumulate_ece(p_v[lab], y[lab])
            if succ.any():
                info["critic/efficiency_abs_err_mc"] = float(
                    (v_e + batch.steps_to_go)[succ].abs().mean()
                )
        return loss, info, {"p_v": p_v, "a_v": a_v, "a_e": a_e}

    def _parent_value_terms(
        self, batch: Batch, phi: Tensor, phi_next: Tensor
    ) -> tuple[Tensor, dict[str, float], dict[str, Any]]:
        assert self.parent is not None and self.parent_target is not None
        logits = self.parent(phi)
        support = self.parent.support
        with torch.no_grad():
            v_next_target = self.parent_target.value(phi_next)
            target = C.recap_value_target(
                batch.recap_reward,
                batch.recap_discount,
                v_next_target,
                batch.recap_mc_return,
                batch.has_next,
            )
            residual = W.recap_td_residual(
                batch.recap_reward,
                C.expected_value(logits, support),
                self.parent.value(phi_next),
                batch.has_next,
            )
        valid = torch.isfinite(batch.recap_mc_return)
        loss = C.distributional_value_loss(logits, target, support, valid)
        assert self.recap_threshold is not None
        rollout = (batch.source == Source.ROLLOUT_SUCCESS) | (
            batch.source == Source.ROLLOUT_FAILURE
        )
        info = {
            "loss/parent_value_ce": float(loss.detach()),
            "recap/threshold": self.recap_threshold,
            "recap/heldout_pass_rate": self.recap_heldout_pass_rate,
            "recap/residual_mean": C.masked_mean_or_nan(residual, rollout),
            "recap/pass_rate": C.masked_mean_or_nan(
                (residual > self.recap_threshold).float(), rollout
            ),
        }
        return loss, info, {"recap_residual": residual, "recap_threshold": self.recap_threshold}

    @torch.no_grad()
    def select_recap_threshold(self) -> float:
        """Imit-Recap: pick ε on held-out rollout windows so that ``recap_target_pass_rate`` of
        them pass; falls back to training windows when the held-out split is empty."""
        assert self.parent is not None
        normalizer = self.ensure_normalizer()
        split = "heldout"
        pools = [
            self.store.source_indices(s, split)
            for s in (Source.ROLLOUT_SUCCESS, Source.ROLLOUT_FAILURE)
        ]
        rows = np.concatenate(pools)
        if rows.size == 0:
            split = "all"
            pools = [
                self.store.source_indices(s, split)
                for s in (Source.ROLLOUT_SUCCESS, Source.ROLLOUT_FAILURE)
            ]
            rows = np.concatenate(pools)
        if rows.size == 0:
            self.recap_threshold = 0.0
            self.recap_heldout_pass_rate = float("nan")
            return 0.0
        # A fixed, seeded subset keeps the selection independent of the training RNG stream.
        if rows.size > self.config.recap_heldout_windows:
            pick = np.random.default_rng(self.config.seed + self.learner_step)
            rows = np.sort(pick.choice(rows, self.config.recap_heldout_windows, replace=False))
        batch = self.store.gather(rows, load_images=bool(self.config.policy.camera_names)).to(
            self.device
        )
        was_training = self.policy.training
        self.policy.eval()
        phi = self._features(
            normalizer.normalize_proprio(batch.proprio),
            batch.prompt_tokens,
            batch.images or None,
            None,
        )
        phi_next = self._features(
            normalizer.normalize_proprio(batch.next_proprio),
            batch.prompt_tokens,
            batch.next_images or None,
            None,
        )
        self.policy.train(was_training)
        residual = W.recap_td_residual(
            batch.recap_reward, self.parent.value(phi), self.parent.value(phi_next), batch.has_next
        )
        self.recap_threshold = W.select_recap_threshold(
            residual, self.method.recap_target_pass_rate
        )
        self.recap_heldout_pass_rate = float((residual > self.recap_threshold).float().mean())
        return self.recap_threshold

    # ------------------------------------------------------------------------------ validation
    def critic_validation_mask(self, rows: Tensor) -> Tensor:
        """[B] bool: which store rows belong to critic validation episodes (rollout episodes
        chosen by :func:`~habc_learner.core.replay.is_heldout_episode` with
        ``CriticConfig.validation_fraction``; demonstrations never)."""
        frac = self.config.critic.validation_fraction
        if frac <= 0:
            return torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
        episodes = self.store.episodes
        cached = self._val_episodes
        if cached is None or len(cached) != len(episodes):
            cached = np.array(
                [
                    (not e.is_demonstration) and is_heldout_episode(e.episode_id, frac)
                    for e in episodes
                ],
                dtype=bool,
            )
            self._val_episodes = cached
        episode_index = self.store.table.episode_index[rows.cpu().numpy()]
        return torch.from_numpy(cached[episode_index]).to(rows.device)

    def critic_validation_rows(self) -> np.ndarray:
        """Outcome-labeled windows (D_lab) of the validation episodes: a fixed, seeded subset of
        at most ``CriticConfig.validation_windows`` store rows."""
        table = self.store.table
        rows = np.flatnonzero(table.outcome_label >= 0)
        if rows.size == 0:
            return rows
        rows = rows[self.critic_validation_mask(torch.from_numpy(rows)).numpy()]
        limit = self.config.critic.validation_windows
        if rows.size > limit:
            pick = np.random.default_rng(self.config.seed)
            rows = np.sort(pick.choice(rows, limit, replace=False))
        return rows

    @torch.no_grad()
    def critic_probabilities(self, rows: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """p_v of store ``rows`` under the current critic (eval mode, logits clamped), [N]."""
        assert self.critic is not None
        normalizer = self.ensure_normalizer()
        was_policy = self.policy.training
        self.policy.eval()
        out = []
        cams = bool(self.config.policy.camera_names)
        for lo in range(0, len(rows), chunk):
            b = self.store.gather(rows[lo : lo + chunk], load_images=cams, next_images=False)
            b = b.to(self.device)
            phi = self._features(
                normalizer.normalize_proprio(b.proprio), b.prompt_tokens, b.images or None, None
            )
            z_v, _ = self.critic(phi)
            out.append(torch.sigmoid(W.clamp_viability_logit(z_v)).cpu().numpy())
        self.policy.train(was_policy)
        return np.concatenate(out) if out else np.zeros(0)

    def validate_critic(self) -> dict[str, float]:
        """AUROC, ECE (10 bins), Brier and BCE of p_v on the held-out validation windows
        (``critic_val/*``; empty without a dual-head critic, NaN without windows)."""
        if self.critic is None:
            return {}
        rows = self.critic_validation_rows()
        y = self.store.table.outcome_label[rows].astype(np.float64)
        p = self.critic_probabilities(rows)
        return {
            "critic_val/auroc": cal.auroc(p, y),
            "critic_val/ece": cal.expected_calibration_error(p, y),
            "critic_val/brier": cal.brier_score(p, y),
            "critic_val/bce": cal.binary_cross_entropy(p, y),
            "critic_val/n": float(len(rows)),
            "critic_val/positives": float(y.sum()),
        }

    def _critic_modules(self) -> dict[str, nn.Module]:
        modules = {"critic": self.critic, "critic_target": self.critic_target}
        if self.config.critic.features == "own":
            modules["critic_encoder"] = self.critic_encoder
        return {k: m for k, m in modules.items() if m is not None}

    def _validation_step(self) -> dict[str, float]:
        """Evaluate on the validation episodes; early stopping on the held-out BCE: after
        ``early_stopping_patience`` evaluations without a lower BCE the best critic is restored
        and the critic stops training for the rest of the round."""
        metrics = self.validate_critic()
        val = self._validation
        patience = self.config.critic.early_stopping_patience
        bce = metrics.get("critic_val/bce", float("nan"))
        if patience and not val.stopped and not math.isnan(bce):
            if bce < val.best_bce - 1e-4:
                val.best_bce, val.bad = bce, 0
                val.best_state = {
                    k: {n: t.detach().clone() for n, t in m.state_dict().items()}
                    for k, m in self._critic_modules().items()
                }
            else:
                val.bad += 1
                if val.bad >= patience and val.best_state is not None:
                    for k, m in self._critic_modules().items():
                        m.load_state_dict(val.best_state[k])
                    val.stopped, val.stopped_at = True, self.learner_step
                    metrics = self.validate_critic()
        metrics["critic_val/stopped_at"] = float(
            val.stopped_at if val.stopped_at is not None else -1
        )
        val.last = metrics
        return metrics

    def _accumulate_ece(self, p: Tensor, y: Tensor) -> None:
        bins = np.clip((p.cpu().numpy() * ECE_BINS).astype(int), 0, ECE_BINS - 1)
        np.add.at(self._ece_bins[0], bins, 1.0)
        np.add.at(self._ece_bins[1], bins, p.cpu().numpy())
        np.add.at(self._ece_bins[2], bins, y.cpu().numpy())

    def _ece(self) -> float:
        n, sp, sy = self._ece_bins
        total = n.sum()
        if total == 0:
            return float("nan")
        nz = n > 0
        return float((np.abs(sp[nz] - sy[nz])).sum() / total)

    @torch.no_grad()
    def _weight_stats(
        self, batch: Batch, w_tilde: Tensor, w: Tensor, gate: Tensor
    ) -> dict[str, float]:
        src = batch.source
        valid = w_tilde > 0
        stats = {
            "weights/frac_valid": float(valid.float().mean()),
            "weights/w_tilde_mean": float(w_tilde.mean()),
            "weights/w_mean_valid": C.masked_mean_or_nan(w, valid),
            "weights/w_max": float(w.max()),
            "weights/w_std_valid": float(w[valid].std()) if int(valid.sum()) > 1 else 0.0,
            "weights/mean_g_success_autonomous": C.masked_mean_or_nan(
                gate, src == Source.ROLLOUT_SUCCESS
            ),
            "weights/mean_g_intervention": C.masked_mean_or_nan(gate, src == Source.INTERVENTION),
            "weights/ir_active": float(self.ir_active),
            "weights/warmup": float(
                self.learner_step - self.run_start_step < self.method.warmup_steps
            ),
        }
        for s in Source:
            stats[f"batch/frac_{s.name.lower()}"] = float((src == s).float().mean())
        return stats

    # ------------------------------------------------------------------------------ rounds
    def run_round(self, num_steps: int | None = None) -> RoundSummary:
        """Run one round of ``num_steps`` (default ``steps_per_round``) learner steps, then
        checkpoint (when ``checkpoint_dir`` is set) and return its summary."""
        steps = self.config.steps_per_round if num_steps is None else num_steps
        if steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {steps}")
        self.ensure_normalizer()
        notes = tuple(missing_sources(self.method, self.store.source_counts()))
        for note in notes:
            LOG.warning(note)
        dropped_before = self.store.num_dropped
        if self.dist.enabled:  # each rank augments its shard with its own stream
            self._augment_rng = np.random.default_rng(
                [self.config.seed, self.dist.rank, self.round_index]
            )
        self._ece_bins[:] = 0.0
        self._validation = CriticValidation()
        validating = self.critic is not None and self.config.critic.validation_fraction > 0
        writer = self.writer
        if validating and self.config.critic.early_stopping_patience:
            self._log_validation(self._validation_step(), writer)  # the round's starting critic
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        stage = f" ({self.stages.stage})" if self.stages is not None else ""
        progress = self.config.progress and self.dist.is_main
        bar = tqdm(
            range(steps),
            desc=f"{self.method.name} round {self.round_index}{stage}",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        for i in bar:
            info = self.train_step()
            if validating and ((i + 1) % self.config.critic.validate_every == 0 or i + 1 == steps):
                self._log_validation(self._validation_step(), writer)
            for key, value in info.items():
                if not math.isnan(value):
                    sums[key] += value
                    counts[key] += 1
            if writer is not None and self.learner_step % self.config.log_every == 0:
                for key, value in info.items():
                    if not math.isnan(value):
                        writer.add_scalar(key, value, self.learner_step)
            if progress and self.learner_step % 10 == 0:
                bar.set_postfix(
                    {
                        k.split("/")[-1]: f"{sums[k] / counts[k]:.3g}"
                        for k in (
                            "loss/actor",
                            "loss/ppo_clip",
                            "loss/value",
                            "loss/critic",
                            "weights/mean_g_success_autonomous",
                            "weights/mean_g_intervention",
                            "weights/frac_valid",
                            "recap/pass_rate",
                        )
                        if counts.get(k)
                    }
                )
        bar.close()
        summary = RoundSummary(
            round_index=self.round_index,
            learner_step=self.learner_step,
            steps=steps,
            means={k: sums[k] / counts[k] for k in sums},
            ece=self._ece(),
            validation=dict(self._validation.last),
            dropped_stale=self.store.num_dropped - dropped_before,
            notes=notes,
        )
        if writer is not None:
            if not math.isnan(summary.ece):
                writer.add_scalar("critic/p_v_ece_round", summary.ece, self.learner_step)
            writer.flush()
        self.round_index += 1
        if self.config.checkpoint_dir is not None and self.dist.is_main:  # rank 0 writes
            summary.checkpoint = self.save_checkpoint()
            summary.checkpoint_id = ckpt.read_manifest(summary.checkpoint)["checkpoint_id"]
        if progress:
            tqdm.write(summary.line())
        return summary

    def _log_validation(self, metrics: dict[str, float], writer: SummaryWriter | None) -> None:
        if writer is None:
            return
        for key, value in metrics.items():
            if not math.isnan(value):
                writer.add_scalar(key, value, self.learner_step)

    # ------------------------------------------------------------------------------ checkpoints
    def _module_tensors(self) -> dict[str, Tensor]:
        tensors: dict[str, Tensor] = {}
        for prefix, module in (
            ("critic", self.critic),
            ("critic_target", self.critic_target),
            ("parent", self.parent),
            ("parent_target", self.parent_target),
            ("critic_encoder", self.critic_encoder),
        ):
            if module is not None:
                tensors.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
        return tensors

    def save_checkpoint(self, directory: str | Path | None = None) -> Path:
        """Write the full learner state atomically; point ``LATEST`` at it; return its path."""
        root = Path(directory or self.config.checkpoint_dir or "")
        if not str(root):
            raise ValueError("save_checkpoint needs a directory or config.checkpoint_dir")
        name = ckpt.checkpoint_name(self.learner_step)
        actor_t, actor_meta = optimizer_to_tensors(self.actor_optimizer, "actor")
        opt_tensors = dict(actor_t)
        critic_meta = None
        if self.critic_optimizer is not None:
            critic_t, critic_meta = optimizer_to_tensors(self.critic_optimizer, "critic")
            opt_tensors.update(critic_t)
        extra_tensor_files: dict[str, dict[str, Tensor]] = {
            RNG_FILE: {"generator": self.generator.get_state()},
        }
        module_tensors = self._module_tensors()
        if module_tensors:
            extra_tensor_files[CRITIC_FILE] = module_tensors
        stage_state: dict[str, Any] | None = None
        if self.stages is not None:
            stage_state = {**self.stages.state_json(), "optimizers": {}}
            for prefix, optimizer in self.stages.optimizers().items():
                tensors, meta = optimizer_to_tensors(optimizer, prefix)
                opt_tensors.update(tensors)
                stage_state["optimizers"][prefix] = meta
            extra_tensor_files[self.stages.tensor_file] = self.stages.module_tensors()
        if opt_tensors:
            extra_tensor_files[OPTIMIZER_FILE] = opt_tensors
        state = {
            "learner_step": self.learner_step,
            "run_start_step": self.run_start_step,
            "round_index": self.round_index,
            "recap_threshold": self.recap_threshold,
            "numpy_rng": self.rng.bit_generator.state,
            "actor_optimizer": actor_meta,
            "critic_optimizer": critic_meta,
            "store_dropped": self.store.num_dropped,
        }
        if self.stages is not None:
            state[self.stages.state_key] = stage_state
        assert self.normalizer is not None
        ckpt.save_policy(
            root / name,
            self.policy,
            self.normalizer,
            self.learner_step,
            extra_tensor_files=extra_tensor_files,
            extra_json_files={
                STATE_FILE: json.loads(json.dumps(state, default=float)),
                **self.checkpoint_json,
            },
            extra_manifest={
                "method": self.method.name,
                "round_index": self.round_index,
                "trainer_config": json.loads(json.dumps(self.config.to_dict(), default=str)),
            },
            overwrite=True,
        )
        ckpt.update_latest(root, name)
        return root / name

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the full learner state from a checkpoint written by :meth:`save_checkpoint`."""
        manifest, tensors, jsons = ckpt.read_checkpoint(path, device="cpu")
        if manifest.get("method") != self.method.name:
            raise ckpt.CheckpointError(
                f"{path}: checkpoint of method {manifest.get('method')!r}, "
                f"trainer runs {self.method.name!r}"
            )
        saved_policy = FlowPolicyConfig.from_dict(manifest["policy_config"])
        if saved_policy != self.config.policy:
            raise ckpt.CheckpointError(
                f"{path}: policy config {saved_policy} != trainer's {self.config.policy}"
            )
        if STATE_FILE not in jsons:
            raise ckpt.CheckpointError(f"{path}: no {STATE_FILE}; not a learner checkpoint")
        ckpt.load_state_dict_strict(
            self.policy, tensors[ckpt.MODEL_FILE], f"{path}/{ckpt.MODEL_FILE}"
        )
        self.normalizer = Normalizer.from_state_dict(tensors[ckpt.NORMALIZER_FILE])
        module_tensors = tensors.get(CRITIC_FILE, {})
        for prefix, module in (
            ("critic", self.critic),
            ("critic_target", self.critic_target),
            ("parent", self.parent),
            ("parent_target", self.parent_target),
            ("critic_encoder", self.critic_encoder),
        ):
            if module is not None:
                sub = {
                    k[len(prefix) + 1 :]: v
                    for k, v in module_tensors.items()
                    if k.startswith(prefix + ".")
                }
                ckpt.load_state_dict_strict(module, sub, f"{path}/{CRITIC_FILE}[{prefix}]")
        state = jsons[STATE_FILE]
        opt_tensors = tensors.get(OPTIMIZER_FILE, {})
        optimizer_from_tensors(self.actor_optimizer, opt_tensors, state["actor_optimizer"], "actor")
        if self.critic_optimizer is not None:
            if state["critic_optimizer"] is None:
                raise ckpt.CheckpointError(f"{path}: no critic optimizer state")
            optimizer_from_tensors(
                self.critic_optimizer, opt_tensors, state["critic_optimizer"], "critic"
            )
        if self.stages is not None:
            stages, file = self.stages, self.stages.tensor_file
            stage_state = state.get(stages.state_key)
            if stage_state is None or file not in tensors:
                raise ckpt.CheckpointError(f"{path}: no {type(stages).__name__} state")
            stages.load_state(tensors[file], stage_state, f"{path}/{file}")
            for prefix, optimizer in stages.optimizers().items():
                optimizer_from_tensors(
                    optimizer, opt_tensors, stage_state["optimizers"][prefix], prefix
                )
        self.generator.set_state(tensors[RNG_FILE]["generator"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.learner_step = int(state["learner_step"])
        self.run_start_step = int(state["run_start_step"])
        self.round_index = int(state["round_index"])
        self.recap_threshold = state["recap_threshold"]
        self.policy.to(self.device)
        for module in (
            self.critic,
            self.critic_target,
            self.parent,
            self.parent_target,
            self.critic_encoder,
        ):
            if module is not None:
                module.to(self.device)

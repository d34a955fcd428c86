"""One registry of learner methods (``HABC_METHOD.md``, "Baselines"), one frozen config each.

A method says which data it samples (sources and mixing ratios), how episodes are labeled, which
critic heads it trains and how the pre-normalization weight w̃ is computed (a named weighting
rule in :data:`WEIGHTINGS`). Adding a method is one :func:`register_method` call (or one entry in
:data:`METHODS`); adding a new weighting rule is one function registered in :data:`WEIGHTINGS`.
A method with an ``ire_vla`` config (:class:`~habc_learner.core.ire_vla.IreVlaConfig`) runs
iRe-VLA's RL/SL stage schedule instead of the weighted flow-matching step.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from habc_learner.core import weights as W
from habc_learner.core.ire_vla import IreVlaConfig
from habc_learner.core.labeling import LABELING_MODES, Source
from habc_policy.core.flow_matching import ENTRY_MEANS

SPLIT_CHOICES = ("all", "train")


@dataclass(frozen=True)
class WeightInputs:
    """Per-sample quantities a weighting rule may use (all [B], detached; None if not computed).

    Attributes:
        source: Source codes. p_v, a_v, a_e: viability probability and advantages (Eqs. 5–6).
        recap_residual: Imit-Recap TD residual δ_t. recap_threshold: its ε.
        learner_step: steps since the start of this method's run (warmup clock).
        ir_active: intervention reweighting applies in this round.
    """

    source: Tensor
    p_v: Tensor | None = None
    a_v: Tensor | None = None
    a_e: Tensor | None = None
    recap_residual: Tensor | None = None
    recap_threshold: float | None = None
    learner_step: int = 0
    ir_active: bool = False


@dataclass(frozen=True)
class MethodConfig:
    """A learner method.

    Attributes:
        name: registry key.
        description: one line for ``--help`` and logs.
        mixing: (source name, ratio) pairs the batches are drawn from.
        proportional: ratios are multiplied by each source's window count (ratio 1 everywhere =
            uniform over the union of the sources).
        fixed_shares: (source, share of the batch) pairs pinned whatever the window counts;
            the other sources share the rest by ``mixing`` (variant ``+demohalf``: demos 0.5,
            Imit-DAgger's demonstration share; not in the paper, which gives no batch mix).
        labeling: ``"intervention_aware"`` or ``"naive"``.
        weighting: name of the w̃ rule in :data:`WEIGHTINGS`.
        train_viability, train_efficiency: train the dual-head critic's heads.
        train_parent_value: train the distributional parent value head (Imit-Recap).
        intervention_reweighting: IR, w̃ = g_t on intervention windows.
        ir_from_round: first round (0-based) IR applies in.
        warmup_steps: g_t ≡ 1 for this many learner steps of the run (500, choice).
        habc_v_gate: ``"viability_weighted"`` (choice) or ``"plain"``.
        advantage_temperature: T of the gate, g = 1 + tanh(x / T); 1 is the paper's Eq. 7,
            any other value a named variant (not in the paper).
        recap_target_pass_rate: fraction of held-out rollout windows the Imit-Recap threshold
            lets through (the paper saw 0.19–0.27).
        train_split: ``"train"`` keeps the held-out episodes out of the actor's batches.
        normalization_eps: ε of Eq. 8.
        actor_reduction: how Eq. 1 is reduced over the batch, ``"weight_sum"`` (Σ w ℓ / Σ w,
            default) or ``"batch_mean"`` (mean over the batch, zero weights included); see
            :func:`habc_learner.core.weights.weighted_actor_loss`.
        entry_mean: how one window's flow loss is averaged, ``"unmasked"`` (over its target
            entries, default) or ``"all_entries"`` (over all H·d, as Eq. 1 is written).
        drop_failed_corrections: leave out the intervention windows of episodes that failed
            after the takeover (variant ``+nofailcorr``; the paper imitates every intervention
            window with weight 1, whatever the outcome).
        ire_vla: iRe-VLA's stage schedule and RL settings; when set, the trainer alternates RL
            rounds (action head only) and SL rounds (whole model on demos + successes) and
            ``mixing`` only documents the SL stage's sources.
    """

    name: str
    description: str
    mixing: tuple[tuple[str, float], ...]
    proportional: bool = False
    fixed_shares: tuple[tuple[str, float], ...] = ()
    labeling: str = "intervention_aware"
    weighting: str = "uniform"
    train_viability: bool = False
    train_efficiency: bool = False
    train_parent_value: bool = False
    intervention_reweighting: bool = False
    ir_from_round: int = 0
    warmup_steps: int = 500
    habc_v_gate: str = "viability_weighted"
    advantage_temperature: float = 1.0
    recap_target_pass_rate: float = 0.25
    train_split: str = "all"
    normalization_eps: float = 1e-6
    actor_reduction: str = "weight_sum"
    entry_mean: str = "unmasked"
    drop_failed_corrections: bool = False
    ire_vla: IreVlaConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mixing", tuple((str(s), float(r)) for s, r in self.mixing))
        object.__setattr__(
            self, "fixed_shares", tuple((str(s), float(r)) for s, r in self.fixed_shares)
        )
        mixed = {s for s, _ in self.mixing}
        for source, share in self.fixed_shares:
            if source not in mixed or not 0.0 <= share < 1.0:
                raise ValueError(
                    f"method {self.name!r}: fixed share of {source!r} must be a mixed source "
                    f"with 0 <= share < 1, got {share}"
                )
        if sum(r for _, r in self.fixed_shares) >= 1.0:
            raise ValueError(f"method {self.name!r}: fixed shares must sum to < 1")
        if not self.mixing or sum(r for _, r in self.mixing) <= 0:
            raise ValueError(
                f"method {self.name!r}: mixing must have a positive ratio, got {self.mixing}"
            )
        for source, ratio in self.mixing:
            Source.parse(source)
            if ratio < 0:
                raise ValueError(
                    f"method {self.name!r}: ratio of {source!r} must be >= 0, got {ratio}"
                )
        if self.labeling not in LABELING_MODES:
            raise ValueError(
                f"method {self.name!r}: labeling {self.labeling!r} is not one of {LABELING_MODES}"
            )
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"method {self.name!r}: weighting {self.weighting!r} is not one of "
                f"{sorted(WEIGHTINGS)}"
            )
        if self.habc_v_gate not in W.HABC_V_GATES:
            raise ValueError(f"habc_v_gate {self.habc_v_gate!r} is not one of {W.HABC_V_GATES}")
        if self.actor_reduction not in W.ACTOR_REDUCTIONS:
            raise ValueError(
                f"actor_reduction {self.actor_reduction!r} is not one of {W.ACTOR_REDUCTIONS}"
            )
        if self.entry_mean not in ENTRY_MEANS:
            raise ValueError(f"entry_mean {self.entry_mean!r} is not one of {ENTRY_MEANS}")
        if self.train_split not in SPLIT_CHOICES:
            raise ValueError(f"train_split {self.train_split!r} is not one of {SPLIT_CHOICES}")
        if not self.advantage_temperature > 0:
            raise ValueError(f"advantage_temperature must be > 0, got {self.advantage_temperature}")
        if self.warmup_steps < 0 or self.ir_from_round < 0:
            raise ValueError("warmup_steps and ir_from_round must be >= 0")
        if not 0.0 < self.recap_target_pass_rate < 1.0:
            raise ValueError(
                f"recap_target_pass_rate must be in (0, 1), got {self.recap_target_pass_rate}"
            )
        if self.weighting in ("habc", "habc_v") and not self.train_viability:
            raise ValueError(
                f"method {self.name!r}: weighting {self.weighting!r} needs train_viability"
            )
        if self.weighting == "habc" and not self.train_efficiency:
            raise ValueError(f"method {self.name!r}: weighting 'habc' needs train_efficiency")
        if self.weighting == "recap" and not self.train_parent_value:
            raise ValueError(f"method {self.name!r}: weighting 'recap' needs train_parent_value")
        if self.ire_vla is not None:
            if not isinstance(self.ire_vla, IreVlaConfig):
                raise ValueError(
                    f"method {self.name!r}: ire_vla must be an IreVlaConfig, got "
                    f"{type(self.ire_vla).__name__}"
                )
            if self.labeling != "intervention_aware":
                raise ValueError(
                    f"method {self.name!r}: iRe-VLA needs 'intervention_aware' labeling (human "
                    f"steps must never count as policy actions), got {self.labeling!r}"
                )
            if self.uses_critic_features:
                raise ValueError(
                    f"method {self.name!r}: iRe-VLA trains its own value head; "
                    "train_viability/train_efficiency/train_parent_value must be off"
                )

    @property
    def mixing_dict(self) -> dict[str, float]:
        return dict(self.mixing)

    @property
    def uses_dual_critic(self) -> bool:
        return self.train_viability or self.train_efficiency

    @property
    def uses_critic_features(self) -> bool:
        return self.uses_dual_critic or self.train_parent_value

    def ir_active(self, round_index: int) -> bool:
        """Intervention reweighting applies in round ``round_index``."""
        return self.intervention_reweighting and round_index >= self.ir_from_round

    def replace(self, **changes: Any) -> MethodConfig:
        """A copy with fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------ weighting rules
WeightRule = Callable[[MethodConfig, WeightInputs], tuple[Tensor, Tensor]]


def _uniform(method: MethodConfig, x: WeightInputs) -> tuple[Tensor, Tensor]:
    """The weight table with g ≡ 1: demos, successful rollout and intervention windows 1;
    failed and unlabeled windows 0 (SFT and Imit-DAgger sample only demos/interventions)."""
    gate = torch.ones(x.source.shape, dtype=torch.float32, device=x.source.device)
    return W.source_weights(x.source, gate, intervention_reweighting=False), gate


def _habc(method: MethodConfig, x: WeightInputs) -> tuple[Tensor, Tensor]:
    """Eq. 7 gate, warmup, weight table (with IR when active)."""
    if x.p_v is None or x.a_v is None or x.a_e is None:
        raise ValueError("the 'habc' weighting needs p_v, a_v and a_e")
    gate = W.warmup_gate(
        W.habc_gate(x.p_v, x.a_v, x.a_e, method.advantage_temperature),
        x.learner_step,
        method.warmup_steps,
    )
    return W.source_weights(x.source, gate, x.ir_active), gate


def _habc_v(method: MethodConfig, x: WeightInputs) -> tuple[Tensor, Tensor]:
    """HABC-V gate (viability only), warmup, weight table."""
    if x.p_v is None or x.a_v is None:
        raise ValueError("the 'habc_v' weighting needs p_v and a_v")
    gate = W.warmup_gate(
        W.habc_v_gate(x.p_v, x.a_v, method.habc_v_gate, method.advantage_temperature),
        x.learner_step,
        method.warmup_steps,
    )
    return W.source_weights(x.source, gate, x.ir_active), gate


def _recap(method: MethodConfig, x: WeightInputs) -> tuple[Tensor, Tensor]:
    """Imit-Recap: demos 1, rollout windows 1 iff δ_t > ε."""
    if x.recap_residual is None or x.recap_threshold is None:
        raise ValueError("the 'recap' weighting needs recap_residual and recap_threshold")
    w = W.recap_weights(x.source, x.recap_residual, x.recap_threshold)
    return w, w


WEIGHTINGS: dict[str, WeightRule] = {
    "uniform": _uniform,
    "habc": _habc,
    "habc_v": _habc_v,
    "recap": _recap,
}


def compute_w_tilde(method: MethodConfig, inputs: WeightInputs) -> tuple[Tensor, Tensor]:
    """Pre-normalization weights w̃ [B] and the gate g_t [B] (1 where a rule has none)."""
    with torch.no_grad():
        return WEIGHTINGS[method.weighting](method, inputs)


# ------------------------------------------------------------------------------ registry
_ONLINE = (("demo", 1.0), ("rollout_success", 1.0), ("rollout_failure", 1.0), ("intervention", 1.0))

METHODS: dict[str, MethodConfig] = {}


def register_method(method: MethodConfig, overwrite: bool = False) -> MethodConfig:
    """Add ``method`` to :data:`METHODS` (a second registration of a name needs ``overwrite``)."""
    if method.name in METHODS and not overwrite:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


register_method(
    MethodConfig(
        name="sft",
        description="Supervised fine-tuning on demonstrations only.",
        mixing=(("demo", 1.0),),
    )
)
register_method(
    MethodConfig(
        name="imit_dagger",
        description="50/50 SFT and intervention windows; no rollout windows, no critic.",
        mixing=(("demo", 0.5), ("intervention", 0.5)),
    )
)
register_method(
    MethodConfig(
        name="imit_recap",
        description="Naive labels; parent value head; rollout windows pass iff TD residual > ε.",
        mixing=(("demo", 1.0), ("rollout_success", 1.0), ("rollout_failure", 1.0)),
        proportional=True,
        labeling="naive",
        weighting="recap",
        train_parent_value=True,
        train_split="train",
    )
)
register_method(
    MethodConfig(
        name="habc_v",
        description="HABC ablation: viability head only, g = 1 + tanh((1 - p_v) A_v).",
        mixing=_ONLINE,
        proportional=True,
        weighting="habc_v",
        train_viability=True,
    )
)
register_method(
    MethodConfig(
        name="habc",
        description="HABC: dual-head critic, state-adaptive gate, intervention-aware labels.",
        mixing=_ONLINE,
        proportional=True,
        weighting="habc",
        train_viability=True,
        train_efficiency=True,
    )
)
register_method(
    MethodConfig(
        name="habc_ir",
        description="HABC + intervention reweighting (w = g_t on interventions) from a round.",
        mixing=_ONLINE,
        proportional=True,
        weighting="habc",
        train_viability=True,
        train_efficiency=True,
        intervention_reweighting=True,
        ir_from_round=3,
    )
)
register_method(
    MethodConfig(
        name="ire_vla",
        description="iRe-VLA: RL rounds on the action head (backbone frozen; PPO-clip, FPO "
        "ratio) alternating with SL rounds of the whole model on demos + successful rollouts.",
        mixing=(("demo", 1.0), ("rollout_success", 1.0)),
        proportional=True,
        ire_vla=IreVlaConfig(),
    )
)


def get_method(name: str | MethodConfig) -> MethodConfig:
    """Look a method up by name; unknown names raise ``ValueError`` with "did you mean"."""
    if isinstance(name, MethodConfig):
        return name
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(name, list(METHODS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown method {name!r}{hint} Valid methods: {sorted(METHODS)}")


def method_from_dict(data: Mapping[str, Any]) -> MethodConfig:
    """Rebuild a :class:`MethodConfig` from ``dataclasses.asdict`` output (e.g. a manifest)."""
    kwargs = dict(data)
    kwargs["mixing"] = tuple((s, r) for s, r in kwargs["mixing"])
    kwargs["fixed_shares"] = tuple((s, r) for s, r in kwargs.get("fixed_shares", ()))
    if isinstance(kwargs.get("ire_vla"), Mapping):
        kwargs["ire_vla"] = IreVlaConfig(**kwargs["ire_vla"])
    return MethodConfig(**kwargs)

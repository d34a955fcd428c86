"""The protocol's configuration: one invocation (:class:`ProtocolConfig`), the tasks' tuned
SFT starts, the seed ranges of demos, rollouts and evaluation poses, the method variants, and
what an invocation did (:class:`Counters`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

LOG = logging.getLogger("habc.protocol")

ALOHA_TASKS = ("transfer_cube", "insertion")
DEFAULT_METHODS = ("sft", "imit_dagger", "imit_recap", "habc_v", "habc")
DEFAULT_STEP2 = ("habc", "habc_ir")
EVAL_SEED_BASE = 1_000_000  # evaluation poses never overlap training seeds (< 1e6)
VAL_DEMO_OFFSET = 5_000  # held-out demonstrations of seed k: demo_seed(k, 5000 + j)
TUNE_POSE_OFFSET = 50_000  # poses of the band tuner's cheap success estimate
SFT_VAL_POSE_OFFSET = 60_000  # poses of SFT's success criterion (never the tuner's)
#: ``--sft-criterion``: what SFT's plateau is measured on.
SFT_CRITERIA = ("flow", "action", "success")
DEFAULT_DEMO_CANDIDATES = (2, 3, 4, 6, 8, 12, 16, 24, 32)
SEED_STRIDE = 100_000  # demo, rollout and evaluation seeds of experiment seed k: k * stride + …
RECORD_VERSION = 1
#: The paper's sanity figures (``HABC_METHOD.md``).
PAPER_G_SUCCESS = (0.68, 0.86)
PAPER_RECAP_PASS = (0.19, 0.27)
#: ``--network``: the actor's (and own critic encoder's) size. ``small`` is 3.5–3.9× faster a
#: learner step on this CPU (``bench/bench_learner_step.py``, ``docs/results/power.md``).
NETWORKS: dict[str, dict[str, int]] = {
    "default": {},
    "small": {"feature_dim": 128, "hidden_dim": 192, "num_blocks": 2},
}


@dataclass(frozen=True)
class TaskDefaults:
    """Demo count, quality knob and SFT steps that put the SFT start in the 15–50 % band."""

    demos: int
    demo_noise: float
    sft_steps: int
    note: str


#: Measured on this machine kind (see ``docs/results/README.md``); Meta-World tasks not listed
#: use ``_METAWORLD``.
TASK_DEFAULTS: dict[str, TaskDefaults] = {
    "transfer_cube": TaskDefaults(
        20, 0.01, 1000, "tuned: ~18/20 demos succeed; SFT 17-43 % at 500-1000 steps"
    ),
    "insertion": TaskDefaults(
        40,
        0.001,
        2500,
        "tuned: ~31/40 demos succeed; SFT 27 % (seed 0). Tried: 20 demos σ 0.005 1500 steps "
        "→ 6/20 demos, 0 %; 40 σ 0.002 2500 → 10 %; 40 σ 0 3000 → 75 %",
    ),
    "assembly-v3": TaskDefaults(
        20,
        0.2,
        2000,
        "tuned: ~18/20 demos succeed; SFT 40 % (seed 0). Tried: σ 0.3 1000 steps → 13 %; "
        "σ 0.2 1000 → 10 %",
    ),
}
_METAWORLD = TaskDefaults(20, 0.2, 2000, "untuned for this task: assembly-v3's values")


def backend_of(task: str) -> str:
    return "sim" if task in ALOHA_TASKS else "metaworld"


def normalize_task(task: str) -> str:
    """ALOHA task names as they are; a Meta-World MT1 name with or without ``-v3``."""
    if task in ALOHA_TASKS:
        return task
    try:
        from arx_x5_driver.core.config import did_you_mean, metaworld_task_names

        names = metaworld_task_names()
    except ImportError as exc:
        raise ValueError(
            f"task {task!r} is not an ALOHA task {ALOHA_TASKS} and Meta-World is not "
            f"installed ({exc})"
        ) from None
    for cand in (task, f"{task}-v3"):
        if cand in names:
            return cand
    raise ValueError(
        f"unknown task {task!r}: choose one of {ALOHA_TASKS} or a Meta-World MT1 name"
        + did_you_mean(task, list(ALOHA_TASKS) + list(names))
    )


#: Fields the SFT start depends on besides the task and the demonstrations' number.
SFT_FIELDS = (
    "network",
    "sft_criterion",
    "demo_noise",
    "sft_steps",
    "sft_patience",
    "sft_validate_every",
    "sft_min_delta",
    "val_demos",
)


# ------------------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class ProtocolConfig:
    """One benchmark invocation (validated on construction).

    Attributes:
        task: ``transfer_cube`` / ``insertion`` (ALOHA) or any Meta-World MT1 task name.
        seeds: experiment seeds (each: its own demos, SFT, rollouts and evaluation poses).
        methods: step-1 methods (registry names). step2_methods / step2_from / step2_rounds:
            step 2 (0 rounds: no step 2).
        demos, demo_noise, sft_steps: SFT start (quality knob: expert noise σ). With
            ``sft_patience`` > 0, SFT runs to the plateau of the flow loss on ``val_demos``
            held-out demonstration episodes (evaluated every ``sft_validate_every`` steps, an
            improvement is ``sft_min_delta`` relative), at most ``sft_steps`` steps, and keeps
            the best weights; 0: exactly ``sft_steps`` steps, no held-out demonstrations.
        tune_demos: choose ``demos`` among ``demo_candidates`` so that the SFT start's success
            on ``tune_episodes`` tuning poses (first seed) lies in ``band``
            (:func:`tune_demos`); the choice is recorded in ``work/<task>/band_tuning.json``.
        rounds, rollouts, round_steps: online rounds, rollout episodes per round, gradient
            steps per round. takeover_fraction: the operator's intervention rate.
            rollout_steps: step limit of the rollout episodes (``None``: the task's evaluation
            limit, 400 on ALOHA, 500 on Meta-World); a longer one gives the operator time to
            correct and hand back (evaluation always uses the task's limit).
        eval_episodes: fresh evaluation episodes per checkpoint (no takeovers).
        batch_size: learner batch. warmup_steps: override of every method's g ≡ 1 warmup
            (``None``: the method's own, 500). trace_episodes: episodes per critic trace.
        work: bags, checkpoints, round records. out: report root (``out/<task>/``).
        sft_criterion: the held-out measure whose plateau ends SFT (:data:`SFT_CRITERIA`):
            ``flow`` (Eq. 1's loss on ``val_demos``), ``action`` (the sampled chunk's squared
            error on them) or ``success`` (1 − success on ``tune_episodes`` validation poses of
            the seed, disjoint from every other pose; the closed-loop measure the flow loss
            does not follow, ``docs/results/power.md``).
        network: the policy network's size, a key of :data:`NETWORKS`.
        threads: torch threads per worker. jobs: seeds run in parallel processes.
        device: torch device of the learner (``cpu``, ``cuda``); rollouts and evaluation run
            the policy on the CPU beside the simulator.
        command: the command line recorded in the report.
    """

    task: str = "transfer_cube"
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = DEFAULT_METHODS
    demos: int = 20
    demo_noise: float = 0.01
    sft_steps: int = 1500
    sft_patience: int = 5
    sft_criterion: str = "success"
    sft_validate_every: int = 500
    sft_min_delta: float = 0.01
    val_demos: int = 4
    tune_demos: bool = False
    demo_candidates: tuple[int, ...] = DEFAULT_DEMO_CANDIDATES
    band: tuple[float, float] = (0.15, 0.50)
    tune_episodes: int = 20
    rounds: int = 3
    rollouts: int = 100
    round_steps: int = 6000
    takeover_fraction: float = 0.5
    rollout_steps: int | None = None
    eval_episodes: int = 50
    step2_rounds: int = 0
    step2_methods: tuple[str, ...] = DEFAULT_STEP2
    step2_from: str = "habc"
    batch_size: int = 256
    warmup_steps: int | None = None
    efficiency_target: str = "mc"
    trace_episodes: int = 3
    work: str = "runs/protocol"
    out: str = "docs/results"
    threads: int = 1
    jobs: int = 1
    device: str = "cpu"
    network: str = "default"
    command: str = ""

    def __post_init__(self) -> None:
        from habc_learner.core.methods import get_method

        if self.network not in NETWORKS:
            raise ValueError(f"network {self.network!r} is not one of {sorted(NETWORKS)}")

        object.__setattr__(self, "task", normalize_task(self.task))
        for name in ("seeds", "methods", "step2_methods", "demo_candidates", "band"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in (*self.methods, *self.step2_methods, self.step2_from):
            base, variants = split_variant(name)
            get_method(base)  # "did you mean" on a typo
            for v in variants:
                if v not in VARIANTS:
                    raise ValueError(
                        f"method {name!r}: unknown variant {v!r}; variants: {sorted(VARIANTS)}"
                    )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if any(not 0 <= s < 9 for s in self.seeds):
            raise ValueError(f"seeds must be in 0..8 (seed ranges stay disjoint), got {self.seeds}")
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be distinct and non-empty, got {self.methods}")
        for name in ("demos", "sft_steps", "rollouts", "round_steps", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rollouts > 999 or self.eval_episodes > 9999 or self.demos > 9999:
            raise ValueError("rollouts must be <= 999, demos and eval_episodes <= 9999")
        if self.rounds < 0 or self.step2_rounds < 0 or self.rounds + self.step2_rounds > 9:
            raise ValueError(
                f"rounds and step2_rounds must be >= 0 with at most 9 in all, "
                f"got {self.rounds} + {self.step2_rounds}"
            )
        if self.step2_rounds and self.step2_from not in self.methods:
            raise ValueError(
                f"step 2 continues {self.step2_from!r}, which is not among methods {self.methods}"
            )
        if self.step2_rounds and self.rounds < 1:
            raise ValueError("step 2 needs at least one step-1 round")
        if not 0.0 <= self.takeover_fraction <= 1.0:
            raise ValueError(f"takeover_fraction must be in [0, 1], got {self.takeover_fraction}")
        if self.rollout_steps is not None and self.rollout_steps < 1:
            raise ValueError(f"rollout_steps must be >= 1 (or None), got {self.rollout_steps}")
        if self.sft_patience < 0 or self.sft_validate_every < 1 or self.val_demos < 0:
            raise ValueError(
                f"sft_patience and val_demos must be >= 0 and sft_validate_every >= 1, got "
                f"{self.sft_patience}, {self.val_demos}, {self.sft_validate_every}"
            )
        if self.sft_patience and self.val_demos < 1:
            raise ValueError("SFT to a plateau (sft_patience > 0) needs val_demos >= 1")
        if self.sft_criterion not in SFT_CRITERIA:
            raise ValueError(
                f"sft_criterion {self.sft_criterion!r} is not one of {sorted(SFT_CRITERIA)}"
            )
        if not 0.0 <= self.sft_min_delta < 1.0:
            raise ValueError(f"sft_min_delta must be in [0, 1), got {self.sft_min_delta}")
        if self.val_demos > 999:
            raise ValueError(f"val_demos must be <= 999, got {self.val_demos}")
        if self.tune_demos:
            c = self.demo_candidates
            if not c or any(n < 1 for n in c) or list(c) != sorted(set(c)):
                raise ValueError(f"demo_candidates must be increasing and >= 1, got {c}")
            if max(c) > 4999:
                raise ValueError(f"demo_candidates must be <= 4999, got {max(c)}")
            if len(self.band) != 2 or not 0.0 <= self.band[0] <= self.band[1] <= 1.0:
                raise ValueError(f"band must be (lo, hi) with 0 <= lo <= hi <= 1, got {self.band}")
            if self.tune_episodes < 1:
                raise ValueError(f"tune_episodes must be >= 1, got {self.tune_episodes}")
        elif self.demos > 4999:
            raise ValueError(f"demos must be <= 4999, got {self.demos}")
        if self.demo_noise < 0:
            raise ValueError(f"demo_noise must be >= 0, got {self.demo_noise}")
        if self.batch_size < 1 or self.threads < 1 or self.jobs < 1:
            raise ValueError("batch_size, threads and jobs must be >= 1")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        from habc_learner.core.critic import EFFICIENCY_TARGETS

        if self.efficiency_target not in EFFICIENCY_TARGETS:
            raise ValueError(
                f"efficiency_target {self.efficiency_target!r} is not one of {EFFICIENCY_TARGETS}"
            )

    @property
    def backend(self) -> str:
        return backend_of(self.task)

    #: Fields a round's result depends on: a record made under other values is not reused.
    BUDGET_FIELDS: ClassVar[tuple[str, ...]] = (
        "task",
        "demos",
        *SFT_FIELDS,
        "rollouts",
        "round_steps",
        "takeover_fraction",
        "rollout_steps",
        "eval_episodes",
        "batch_size",
        "warmup_steps",
        "efficiency_target",
    )

    def budget(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.BUDGET_FIELDS}

    def task_dir(self) -> Path:
        return Path(self.work) / self.task

    def out_dir(self) -> Path:
        return Path(self.out) / self.task


def _rounds_of(cfg: ProtocolConfig, method: str) -> list[int]:
    rounds = list(range(0, cfg.rounds + 1))
    if method in cfg.step2_methods and cfg.step2_rounds:
        rounds += list(range(cfg.rounds + 1, cfg.rounds + cfg.step2_rounds + 1))
    return rounds


# ------------------------------------------------------------------------------ seeds and paths
def demo_seed(seed: int, i: int) -> int:
    return seed * SEED_STRIDE + i


def rollout_seed(seed: int, round_index: int, i: int) -> int:
    """Object poses of round ``round_index`` (1-based): the same for every method."""
    return seed * SEED_STRIDE + 10_000 + round_index * 1000 + i


def eval_seed(seed: int, i: int) -> int:
    return EVAL_SEED_BASE + seed * 10_000 + i


def val_demo_seed(seed: int, j: int) -> int:
    """Held-out demonstration j of experiment seed k (SFT's validation loss only)."""
    return demo_seed(seed, VAL_DEMO_OFFSET + j)


def sft_name(successful_demos: int) -> str:
    """Checkpoint folder of the SFT start on the first ``successful_demos`` successful
    demonstrations of a seed (the band tuner's probe and the seed's start share it)."""
    return f"sft_ok{successful_demos}"


def sft_val_seed(seed: int, i: int) -> int:
    """Pose i of seed k's SFT success criterion (disjoint from demos, rollouts, eval, tuning)."""
    return seed * SEED_STRIDE + SFT_VAL_POSE_OFFSET + i


def tune_seed(seed: int, i: int) -> int:
    """Pose i of the band tuner's success estimate (disjoint from demos, rollouts, eval)."""
    return seed * SEED_STRIDE + TUNE_POSE_OFFSET + i


#: Method variants, ``--methods habc+mc``: the registry's method with a learner option changed
#: (records, checkpoints and rollouts are kept under the variant's own name).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "mc": ("critic", {"efficiency_target": "mc"}),  # V_e regressed on −(T_s − t)
    "td": ("critic", {"efficiency_target": "td"}),  # Eq. 3 TD, Polyak bootstrap (the paper's)
    "batchmean": ("method", {"actor_reduction": "batch_mean"}),  # Eq. 1 as mean over the batch
    "stride10": ("window", {"stride": 10}),  # one-step terms over Δ = 10 control steps, cost 10
    "online": ("critic", {"td_bootstrap": "online"}),  # TD bootstrap from the online head
    # leave out the intervention windows of episodes that failed after the takeover
    "nofailcorr": ("method", {"drop_failed_corrections": True}),
    # a window's flow loss averaged over all H·d entries (Eq. 1 as written), not its targets
    "allentries": ("method", {"entry_mean": "all_entries"}),
    # half of every batch from demonstrations whatever the counts (Imit-DAgger's share); the
    # other half over the online sources by window count (power.md, finding 2)
    "demohalf": ("method", {"fixed_shares": (("demo", 0.5),)}),
    # g ≡ 1 for the whole run (the warmup never ends): the per-source rule alone (successes,
    # interventions, demos 1; failures 0), i.e. filtered BC; isolates what the gate adds
    "nogate": ("method", {"warmup_steps": 10**12}),
}


def split_variant(name: str) -> tuple[str, tuple[str, ...]]:
    """``"habc+mc"`` -> ``("habc", ("mc",))``."""
    base, *variants = name.split("+")
    return base, tuple(variants)


def variant_overrides(name: str, part: str) -> dict[str, Any]:
    """The variants' changes to one config part (``"critic"``, ``"method"``, ``"window"``)."""
    out: dict[str, Any] = {}
    for v in split_variant(name)[1]:
        v_part, changes = VARIANTS[v]
        if v_part == part:
            out.update(changes)
    return out


def critic_overrides(name: str) -> dict[str, Any]:
    return variant_overrides(name, "critic")


def method_config(cfg: ProtocolConfig, name: str, ir_from_round: int | None = None):
    """The registry's method with this run's overrides (warmup, IR start)."""
    from habc_learner.core.methods import get_method

    method = get_method(split_variant(name)[0])
    changes: dict[str, Any] = {}
    if cfg.warmup_steps is not None and hasattr(method, "warmup_steps"):
        changes["warmup_steps"] = cfg.warmup_steps
    changes.update(variant_overrides(name, "method"))  # a variant's own value wins
    if ir_from_round is not None and getattr(method, "intervention_reweighting", False):
        changes["ir_from_round"] = ir_from_round
    return method.replace(**changes) if changes else method


def needs_rollouts(method) -> bool:
    """A method whose batches hold anything but demonstrations needs online rollouts."""
    from habc_learner.core.labeling import Source

    sources = {Source.parse(s) for s, r in method.mixing if r > 0}
    return bool(sources - {Source.DEMO})


@dataclass
class Counters:
    """What an invocation actually did (the resume test checks these stay 0 on a rerun)."""

    demos: int = 0
    rollouts: int = 0
    train_steps: int = 0
    eval_episodes: int = 0
    rounds_done: int = 0
    rounds_skipped: int = 0
    failures: int = 0

    def add(self, other: Counters) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

"""The paper's protocol in simulation: every learner method side by side, with honest statistics.

    habc-protocol --task transfer_cube --seeds 0 1 2 \\
        --methods sft imit_dagger imit_recap habc_v habc --rounds 2 --rollouts 20 \\
        --round-steps 600 --eval-episodes 30 --step2-rounds 1

(or ``python bench/bench_protocol.py ...``, the same command). For one task and each seed:

1. ``--demos`` scripted demonstrations whose quality is set by ``--demo-noise`` (the expert's
   per-episode waypoint offset σ in m on ALOHA, per-step action noise σ on Meta-World) →
   rosbag2 episode bags → the bag reader → an SFT checkpoint (``--sft-steps``); only the
   successful demonstrations are training data.
2. Step 1, equal budget: every method of ``--methods`` (names of the learner's registry,
   :data:`habc_learner.core.methods.METHODS`, so a newly registered method such as ``ire_vla``
   is picked up as is) starts from the SFT policy and runs ``--rounds`` online rounds: rollouts
   of its latest policy (``--rollouts`` episodes, the scripted operator taking over in about
   ``--takeover-fraction`` of the episodes heading for failure) written as episode bags, read
   back through the bag reader into the replay store, then ``--round-steps`` gradient steps.
   A method that trains on demonstrations only (``sft``) gets the same gradient steps and no
   rollouts. Rollouts of one policy on the same object poses are recorded once and shared: all
   methods' round-1 rollouts come from the same SFT policy.
3. Step 2: from the ``--step2-from`` (HABC) checkpoint of the last step-1 round, every method
   of ``--step2-methods`` (continued HABC, HABC+IR) continues for ``--step2-rounds`` more rounds
   with the full learner state (critic, optimizer, counters); HABC+IR has intervention
   reweighting from the first step-2 round on.
4. Evaluation of every checkpoint on ``--eval-episodes`` fresh object poses (never used for
   training, the same poses for every method of a seed) without takeovers: success rate and
   the mean length of successful episodes.

Every round leaves one JSON record under ``--work/<task>/seed<k>/<method>/round_<r>.json``
(evaluation per episode, rollout and training statistics, the analysis below); a second
invocation with the same arguments reuses complete bags, resumes checkpoints and skips every
round with a record, so an interrupted run resumes and a finished one only rewrites the report.

Report (``--out/<task>/``): ``results.md`` (tables like the paper's, mean and 95 % t-interval
over seeds, the exact command and wall time), ``results.json`` (every round record),
``success_per_round.png`` (success and successful-episode length per round per method), and
the analysis: critic calibration (p_v against the realised outcome on rollouts the critic has
not trained on; ``calibration.png``), weight statistics per data source against the paper's
mean g_t of 0.68–0.86 (``weights.png``), the Imit-Recap pass rate against the paper's 19–27 %,
and p_v, V_e, g_t along a few episodes (``traces.png``, the paper's Figures 4–5).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np

LOG = logging.getLogger("habc.protocol")

ALOHA_TASKS = ("transfer_cube", "insertion")
DEFAULT_METHODS = ("sft", "imit_dagger", "imit_recap", "habc_v", "habc")
DEFAULT_STEP2 = ("habc", "habc_ir")
EVAL_SEED_BASE = 1_000_000  # evaluation poses never overlap training seeds (< 1e6)
VAL_DEMO_OFFSET = 5_000  # held-out demonstrations of seed k: demo_seed(k, 5000 + j)
TUNE_POSE_OFFSET = 50_000  # poses of the band tuner's cheap success estimate
DEFAULT_DEMO_CANDIDATES = (2, 3, 4, 6, 8, 12, 16, 24, 32)
SEED_STRIDE = 100_000  # demo, rollout and evaluation seeds of experiment seed k: k * stride + …
RECORD_VERSION = 1
#: The paper's sanity figures (``HABC_METHOD.md``).
PAPER_G_SUCCESS = (0.68, 0.86)
PAPER_RECAP_PASS = (0.19, 0.27)


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
    sft_validate_every: int = 100
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
    command: str = ""

    def __post_init__(self) -> None:
        from habc_learner.core.methods import get_method

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
        "demo_noise",
        "sft_steps",
        "sft_patience",
        "sft_validate_every",
        "sft_min_delta",
        "val_demos",
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
    changes: dict[str, Any] = variant_overrides(name, "method")
    if cfg.warmup_steps is not None and hasattr(method, "warmup_steps"):
        changes["warmup_steps"] = cfg.warmup_steps
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


def _write_json(path: Path, data: Any, indent: int | None = 1) -> None:
    """Atomic JSON write (a crash never leaves a half record that looks complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent, default=_json_default, allow_nan=True))
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(xs)) if xs else float("nan")


# ------------------------------------------------------------------------------ one seed
class SeedRun:
    """Everything of one (task, seed): demos, SFT, step 1, step 2 (resumable)."""

    def __init__(self, cfg: ProtocolConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.root = cfg.task_dir() / f"seed{seed}"
        self.counters = Counters()
        self.t0 = time.monotonic()
        self.args = SimpleNamespace(backend=cfg.backend, task=cfg.task)
        self.demos: list = []
        self.dims: tuple[int, int] = (0, 0)
        self.sft_step = cfg.sft_steps  # learner step of the SFT start (set by sft_start)
        self._episode_cache: dict[str, list] = {}

    def say(self, msg: str) -> None:
        print(
            f"[protocol {self.cfg.task} seed {self.seed} {time.monotonic() - self.t0:7.1f}s] {msg}",
            flush=True,
        )

    # -------------------------------------------------------------------------- data
    def record(
        self, folder: Path, seeds: list[int], *, policy=None, source: str, noise: float = 0.0
    ) -> list:
        from habc_learner.main_job import record_episodes

        results = record_episodes(
            self.args,
            folder,
            seeds,
            policy=policy,
            takeover_fraction=self.cfg.takeover_fraction if policy is not None else 0.0,
            max_steps=self.cfg.rollout_steps if policy is not None else None,
            source=source,
            desc=f"seed {self.seed} {folder.name}",
            expert_noise=noise,
            progress=False,
        )
        done = [r for r in results if r is not None]
        if done:
            self._episode_cache.pop(str(folder), None)  # the folder has new bags
        if source == "demo":
            self.counters.demos += len(done)
        else:
            self.counters.rollouts += len(done)
        return done

    def read(self, folder: Path) -> list:
        """Episodes of a bag folder through the learner's bag reader (cached per process)."""
        from habc_learner.core.bag_reader import read_episodes

        key = str(folder)
        if key not in self._episode_cache:
            episodes, report = read_episodes(folder)
            if report.skipped:
                self.say(f"{folder}: {report.format().splitlines()[0]}")
            self._episode_cache[key] = episodes
        return self._episode_cache[key]

    def rollout_folder(self, producer: str) -> Path:
        return self.root / "rollouts" / producer

    def demo_episodes(self, n: int) -> tuple[list, int]:
        """The successful ones among the first ``n`` demonstrations of this seed (recorded if
        missing), and how many were recorded (the folder may hold more: the band tuner's pool)."""
        folder = self.root / "demos"
        seeds = [demo_seed(self.seed, i) for i in range(n)]
        self.record(folder, seeds, source="demo", noise=self.cfg.demo_noise)
        want = {f"demo-{s:07d}" for s in seeds}
        episodes = [e for e in self.read(folder) if e.episode_id in want]
        return [e for e in episodes if e.outcome.value == "success"], len(episodes)

    def val_demo_episodes(self) -> list:
        """Held-out demonstration episodes for SFT's validation loss (successful ones only);
        none when SFT runs a fixed number of steps."""
        cfg = self.cfg
        if not cfg.sft_patience:
            return []
        folder = self.root / "val_demos"
        seeds = [val_demo_seed(self.seed, j) for j in range(cfg.val_demos)]
        self.record(folder, seeds, source="demo", noise=cfg.demo_noise)
        ok = [e for e in self.read(folder) if e.outcome.value == "success"]
        if not ok:
            raise RuntimeError(
                f"seed {self.seed}: none of the {cfg.val_demos} held-out demonstrations "
                f"succeeded at demo_noise={cfg.demo_noise}; raise val_demos"
            )
        return ok

    def train_sft(self, demos: list, val: list, name: str) -> tuple[Path, dict[str, Any]]:
        """An SFT checkpoint on ``demos``: to the plateau of the held-out flow loss on ``val``
        (``sft_patience`` > 0, at most ``sft_steps`` steps, best weights kept) or exactly
        ``sft_steps`` steps. Reused when ``checkpoints/<name>`` holds a finished one."""
        from habc_learner.core.power import PlateauStopper
        from habc_learner.core.replay import ReplayStore
        from habc_learner.core.sft_convergence import HeldOutFlowLoss, train_to_plateau
        from habc_learner.core.trainer import Trainer
        from habc_policy.core import checkpoint as ckpt_io

        cfg = self.cfg
        self.dims = (demos[0].proprio_dim, demos[0].action_dim)
        tcfg = self.trainer_config("sft", name, cfg.sft_steps)
        info_path = Path(tcfg.checkpoint_dir) / "sft_training.json"
        latest = ckpt_io.latest_checkpoint(tcfg.checkpoint_dir)
        if latest is not None and info_path.exists():
            return latest, json.loads(info_path.read_text())
        store = ReplayStore(tcfg.replay_config())
        store.add_episodes(demos)
        with Trainer(tcfg, store) as trainer:  # a crashed half run starts over
            if cfg.sft_patience:
                vstore = ReplayStore(tcfg.replay_config())
                vstore.add_episodes(val)
                info = train_to_plateau(
                    trainer,
                    HeldOutFlowLoss(trainer, vstore, seed=self.seed),
                    max_steps=cfg.sft_steps,
                    validate_every=cfg.sft_validate_every,
                    stopper=PlateauStopper(cfg.sft_patience, cfg.sft_min_delta),
                    say=self.say,
                )
            else:
                t0 = time.monotonic()
                summary = trainer.run_round(cfg.sft_steps)
                info = {
                    "steps_run": cfg.sft_steps,
                    "best_step": trainer.learner_step,
                    "plateau": None,
                    "train_s": time.monotonic() - t0,
                    "means": dict(summary.means),
                }
            ckpt = trainer.save_checkpoint()
        info["demos"] = len(demos)
        info["val_demos"] = len(val)
        self.counters.train_steps += int(info["steps_run"])
        _write_json(info_path, info)
        return ckpt, info

    # -------------------------------------------------------------------------- learner
    def trainer_config(self, method, name: str, steps: int):
        from habc_learner.core.critic import CriticConfig
        from habc_learner.core.trainer import TrainerConfig
        from habc_learner.core.windows import WindowConfig
        from habc_policy.core.configuration_flow import FlowPolicyConfig

        proprio_dim, action_dim = self.dims
        return TrainerConfig(
            method=method,
            policy=FlowPolicyConfig(action_dim=action_dim, proprio_dim=proprio_dim),
            critic=CriticConfig(
                **{"efficiency_target": self.cfg.efficiency_target, **critic_overrides(name)}
            ),
            window=WindowConfig(**variant_overrides(name, "window")),
            batch_size=self.cfg.batch_size,
            steps_per_round=steps,
            seed=self.seed,
            device=self.cfg.device,
            checkpoint_dir=str(self.root / "checkpoints" / name),
            log_dir=str(self.root / "tensorboard" / name),
            log_every=10,
            progress=False,
        )

    def store_for(self, tcfg, producers: Sequence[str]):
        from habc_learner.core.replay import ReplayStore

        store = ReplayStore(tcfg.replay_config())
        store.add_episodes(self.demos)
        for producer in producers:
            folder = self.rollout_folder(producer)
            if folder.is_dir():
                store.add_episodes(self.read(folder))
        return store

    # -------------------------------------------------------------------------- evaluation
    def evaluate(self, checkpoint: Path, seeds: Sequence[int] | None = None) -> dict[str, Any]:
        """Success and length over the fresh evaluation poses (or ``seeds``), no takeovers, no
        bags; ``episodes`` holds [success, steps, failure] per pose in pose order."""
        from arx_x5_driver.core.factory import make_backend
        from habc_learner.sim_rollouts import run_rollout
        from habc_policy.core.checkpoint import load_policy

        policy = load_policy(checkpoint)
        episodes = []
        if seeds is None:
            seeds = [eval_seed(self.seed, i) for i in range(self.cfg.eval_episodes)]
        with make_backend(self.cfg.backend, task=self.cfg.task) as robot:
            for s in seeds:
                r = run_rollout(
                    robot,
                    seed=s,
                    policy=policy,
                    episode_id=f"eval-{s}",
                    task=self.cfg.task,
                    prompt=robot.prompt,
                    sample_seed=s,
                )
                episodes.append([int(r.success), int(r.steps), r.failure])
        self.counters.eval_episodes += len(episodes)
        lengths = [n for ok, n, _ in episodes if ok]
        return {
            "success_rate": float(np.mean([ok for ok, _, _ in episodes])),
            "mean_success_length": _mean(lengths),
            "episodes": episodes,
            "checkpoint_id": policy.checkpoint_id,
            "learner_step": policy.learner_step,
        }

    # -------------------------------------------------------------------------- records
    def record_path(self, method: str, round_index: int) -> Path:
        return self.root / method / f"round_{round_index:02d}.json"

    def load_record(self, method: str, round_index: int) -> dict[str, Any] | None:
        path = self.record_path(method, round_index)
        if not path.exists():
            return None
        rec = json.loads(path.read_text())
        if rec.get("budget") != json.loads(json.dumps(self.cfg.budget())):
            raise ValueError(
                f"{path} was made with {rec.get('budget')}, this run has {self.cfg.budget()}: "
                f"use another --work folder for another budget"
            )
        return rec

    # -------------------------------------------------------------------------- pipeline
    def run(self) -> Counters:
        import torch

        torch.set_num_threads(self.cfg.threads)
        cfg = self.cfg
        self.root.mkdir(parents=True, exist_ok=True)
        # 1. demonstrations -> bags -> episodes
        self.demos, n_recorded = self.demo_episodes(cfg.demos)
        self.say(f"{len(self.demos)}/{n_recorded} demonstrations succeeded (σ={cfg.demo_noise})")
        if not self.demos:
            raise RuntimeError(
                f"seed {self.seed}: no successful demonstration at demo_noise={cfg.demo_noise}"
            )
        self.dims = (self.demos[0].proprio_dim, self.demos[0].action_dim)
        sft_ckpt = self.sft_start(n_recorded)
        # 2. step 1 (a method that fails is reported and the others go on)
        for name in cfg.methods:
            method = method_config(cfg, name)
            prev = sft_ckpt
            (self.root / name / "error.json").unlink(missing_ok=True)
            try:
                for k in range(1, cfg.rounds + 1):
                    lineage = ["sft"] + [f"{name}_r{j}" for j in range(1, k)]
                    prev = self.online_round(name, method, k, prev, lineage, init="policy", step=1)
            except Exception as exc:
                self.fail(name, exc)
        # 3. step 2
        base_rec = self.load_record(cfg.step2_from, cfg.rounds) if cfg.step2_rounds else None
        if base_rec is not None:
            base = cfg.step2_from
            base_lineage = ["sft"] + [f"{base}_r{j}" for j in range(1, cfg.rounds + 1)]
            for name in cfg.step2_methods:
                method = method_config(cfg, name, ir_from_round=cfg.rounds)
                prev = Path(base_rec["checkpoint"])
                if name not in cfg.methods:
                    (self.root / name / "error.json").unlink(missing_ok=True)
                try:
                    for k in range(cfg.rounds + 1, cfg.rounds + cfg.step2_rounds + 1):
                        own = [f"{name}_r{j}" for j in range(cfg.rounds + 1, k)]
                        prev = self.online_round(
                            name, method, k, prev, base_lineage + own, init="full", step=2
                        )
                except Exception as exc:
                    self.fail(name, exc)
        self.say(
            f"done: {self.counters.rounds_done} rounds run, {self.counters.rounds_skipped} "
            f"reused; {self.counters.rollouts} rollouts, {self.counters.train_steps} steps"
        )
        return self.counters

    def fail(self, method: str, exc: Exception) -> None:
        """Record a method that crashed (its later rounds are skipped, the others run)."""
        import traceback

        self.say(f"{method} FAILED: {type(exc).__name__}: {exc}")
        self.counters.failures += 1
        _write_json(
            self.root / method / "error.json",
            {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()},
        )

    def sft_start(self, n_demos_recorded: int) -> Path:
        """The SFT checkpoint every method starts from, and its evaluation (round 0)."""
        rec = self.load_record("sft_start", 0)
        if rec is not None:
            self.counters.rounds_skipped += 1
            self.sft_step = int(rec["learner_step"])
            return Path(rec["checkpoint"])
        from habc_policy.core.checkpoint import read_manifest

        t0 = time.monotonic()
        val = self.val_demo_episodes()
        ckpt, sft_info = self.train_sft(self.demos, val, sft_name(len(self.demos)))
        learner_step = int(read_manifest(ckpt)["learner_step"])
        self.sft_step = learner_step
        train_s = time.monotonic() - t0
        ev = self.evaluate(ckpt)
        plateau = (
            f" (held-out flow loss plateau: {sft_info['plateau']}, {sft_info['steps_run']} steps "
            f"run)"
            if self.cfg.sft_patience
            else ""
        )
        self.say(
            f"SFT start: success {100 * ev['success_rate']:.0f}% at step {learner_step}{plateau}"
        )
        record = {
            "version": RECORD_VERSION,
            "task": self.cfg.task,
            "seed": self.seed,
            "method": "sft_start",
            "round": 0,
            "step": 0,
            "budget": self.cfg.budget(),
            "checkpoint": str(ckpt),
            "learner_step": learner_step,
            "demos": {
                "recorded": n_demos_recorded,
                "successful": len(self.demos),
                "held_out": len(val),
            },
            "sft": {k: v for k, v in sft_info.items() if k != "means"},
            "train": {
                k: v for k, v in sft_info.get("means", {}).items() if not k.startswith("batch/")
            },
            "eval": ev,
            "wall_s": {"train": train_s, "eval": time.monotonic() - t0 - train_s},
        }
        _write_json(self.record_path("sft_start", 0), record)
        self.counters.rounds_done += 1
        return ckpt

    def online_round(
        self,
        name: str,
        method,
        k: int,
        prev_ckpt: Path,
        lineage: list[str],
        *,
        init: str,
        step: int,
    ) -> Path:
        """Round ``k`` of method ``name``: rollouts of ``prev_ckpt`` (its lineage's newest
        producer), training to ``sft_step + k * round_steps`` (``sft_step``: the SFT start's
        learner step), analysis, evaluation."""
        rec = self.load_record(name, k)
        if rec is not None:
            self.counters.rounds_skipped += 1
            return Path(rec["checkpoint"])
        from habc_learner.core.trainer import Trainer
        from habc_policy.core import checkpoint as ckpt_io
        from habc_policy.core.checkpoint import load_policy

        cfg = self.cfg
        wall: dict[str, float] = {}
        t0 = time.monotonic()
        rollout_stats: dict[str, Any] = {}
        producers = lineage if needs_rollouts(method) else []
        if producers:
            newest = producers[-1]
            folder = self.rollout_folder(newest)
            seeds = [rollout_seed(self.seed, k, i) for i in range(cfg.rollouts)]
            recorded = self.record(folder, seeds, policy=load_policy(prev_ckpt), source="rollout")
            rollout_stats = _rollout_stats(self.read(folder))
            rollout_stats["producer"] = newest
            # (counted over the episodes recorded by this invocation; a resumed round misses some)
            rollout_stats["declined_unrecoverable"] = sum(
                (r.operator_reason or "").startswith("unrecoverable") for r in recorded
            )
        wall["rollouts"] = time.monotonic() - t0

        t1 = time.monotonic()
        target = self.sft_step + k * cfg.round_steps
        tcfg = self.trainer_config(method, name, cfg.round_steps)
        store = self.store_for(tcfg, producers)
        new_rows = _rows_of_folder(store, self.rollout_folder(producers[-1])) if producers else None
        analysis: dict[str, Any] = {}
        with Trainer.resume(tcfg, store) as trainer:
            if ckpt_io.latest_checkpoint(tcfg.checkpoint_dir) is None:
                if init == "policy":
                    trainer.init_policy_from(prev_ckpt)
                else:
                    continue_run(trainer, prev_ckpt)
            # The critic of the previous round on rollouts it has never trained on.
            if new_rows is not None and len(new_rows) and trainer.learner_step > self.sft_step:
                analysis["fresh"] = analyse(
                    trainer, store, new_rows, traces=cfg.trace_episodes, trace_rows=new_rows
                )
            summary = None
            if trainer.learner_step < target:
                n = target - trainer.learner_step
                summary = trainer.run_round(n)
                self.counters.train_steps += n
            ckpt = ckpt_io.latest_checkpoint(tcfg.checkpoint_dir)
            if summary is None or ckpt is None:
                ckpt = trainer.save_checkpoint()
            learner_step = trainer.learner_step
            if producers:
                analysis["store"] = analyse(
                    trainer,
                    store,
                    np.arange(len(store)),
                    traces=cfg.trace_episodes,
                    trace_rows=new_rows,
                )
        wall["train"] = time.monotonic() - t1
        t2 = time.monotonic()
        ev = self.evaluate(ckpt)
        wall["eval"] = time.monotonic() - t2
        record = {
            "version": RECORD_VERSION,
            "task": cfg.task,
            "seed": self.seed,
            "method": name,
            "round": k,
            "step": step,
            "budget": cfg.budget(),
            "method_config": dataclasses.asdict(method),
            "checkpoint": str(ckpt),
            "learner_step": learner_step,
            "producers": producers,
            "rollouts": rollout_stats,
            "store": {} if summary is None else _store_counts(store),
            "train": _train_stats(summary),
            "analysis": analysis,
            "eval": ev,
            "wall_s": wall,
        }
        _write_json(self.record_path(name, k), record)
        self.counters.rounds_done += 1
        ro = (
            f"rollouts {rollout_stats['successes']}/{rollout_stats['episodes']} ok, "
            f"{rollout_stats['takeovers']} takeovers; "
            if rollout_stats
            else ""
        )
        self.say(
            f"{name} round {k}: {ro}success {100 * ev['success_rate']:.0f}% "
            f"(len {ev['mean_success_length']:.0f}) at step {learner_step} "
            f"[{wall['rollouts']:.0f}+{wall['train']:.0f}+{wall['eval']:.0f}s]"
        )
        for note in record["train"].get("notes", []):
            self.say(f"NOTE {note}")
        return ckpt


def continue_run(trainer, checkpoint: Path) -> None:
    """Load another method's full learner state (weights, critic, optimizer, counters).

    Step 2 starts HABC+IR from the HABC checkpoint: both methods have the same modules, but
    :meth:`Trainer.load_checkpoint` refuses a checkpoint of another method name, so the name is
    swapped for the load only.
    """
    from habc_policy.core.checkpoint import read_manifest

    real = trainer.method
    saved = read_manifest(checkpoint).get("method")
    trainer.method = real.replace(name=saved) if saved and saved != real.name else real
    try:
        trainer.load_checkpoint(checkpoint)
    finally:
        trainer.method = real


def _rows_of_folder(store, folder: Path) -> np.ndarray:
    """Window rows of the episodes read from ``folder`` (the newest rollouts)."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    idx = [i for i, e in enumerate(store.episodes) if e.episode_id in names]
    return np.flatnonzero(np.isin(store.table.episode_index, idx))


def _rollout_stats(episodes: list) -> dict[str, Any]:
    """Outcomes and the shape of the takeovers of a round's rollouts (from the bags).

    A takeover episode *has a suffix* when the policy drove at least one step after the last
    takeover and its hand-back ramp; ``suffix_windows`` counts the outcome-labeled windows
    anchored in those suffixes (the windows HABC's credit rule gives the outcome to).
    """
    from habc_learner.core.episode import HUMAN
    from habc_learner.core.labeling import LabelingConfig, label_episode, segment_controllers

    took = [bool((e.authority == HUMAN).any()) for e in episodes]
    ok = [e.outcome.value == "success" for e in episodes]
    suffix_len, suffix_windows, handbacks, one_arm = [], 0, 0, 0
    for e, t in zip(episodes, took):
        if not t:
            continue
        labels = label_episode(e, LabelingConfig())
        suffix = e.authority[labels.suffix_start :]
        suffix_len.append(int((suffix != HUMAN).all(axis=1).sum()) if len(suffix) else 0)
        suffix_windows += int(labels.is_labeled[labels.suffix_start :].sum())
        segments = segment_controllers(e.authority)
        handbacks += sum(seg.controller == 3 for seg in segments)
        one_arm += int(
            ((e.authority == HUMAN).any(axis=1) & ~(e.authority == HUMAN).all(axis=1)).any()
        )
    n_took = int(sum(took))
    return {
        "episodes": len(episodes),
        "successes": int(sum(ok)),
        "takeovers": n_took,
        "autonomous_successes": int(sum(o and not t for o, t in zip(ok, took))),
        "takeover_successes": int(sum(o and t for o, t in zip(ok, took))),
        "failures_without_takeover": int(sum(not o and not t for o, t in zip(ok, took))),
        "mean_length": _mean([e.length for e in episodes]),
        "episodes_with_suffix": int(sum(n > 0 for n in suffix_len)),
        "episodes_with_suffix_50": int(sum(n >= 50 for n in suffix_len)),
        "suffix_windows": suffix_windows,
        "handbacks": handbacks,
        "one_arm_takeover_episodes": one_arm,
    }


def _store_counts(store) -> dict[str, int]:
    return store.source_counts()


def _train_stats(summary) -> dict[str, Any]:
    """The round means of every logged scalar (losses, weights, critic, method-specific)."""
    if summary is None:
        return {}
    out: dict[str, Any] = {k: v for k, v in summary.means.items() if not k.startswith("batch/")}
    out["ece"] = summary.ece
    out["steps"] = summary.steps
    out["notes"] = list(getattr(summary, "notes", ()))
    out["batch_fractions"] = {
        k.split("/")[-1]: v for k, v in summary.means.items() if k.startswith("batch/frac_")
    }
    return out


# ------------------------------------------------------------------------------ analysis
def critic_outputs(trainer, store, rows: np.ndarray, chunk: int = 4096) -> dict[str, np.ndarray]:
    """Per-window critic quantities of ``rows`` under the trainer's current networks.

    Dual-head critic: p_v, z_v, V_e, A_v (Eq. 5), A_e (Eq. 6) and the gate g_t (Eq. 7, the
    HABC-V gate for methods without efficiency head), computed exactly as in a training step
    but on every window. Imit-Recap parent value head: V and the TD residual δ_t. Plus each
    window's source, outcome label, episode index and anchor.
    """
    import torch

    from habc_learner.core import weights as W

    method = trainer.method
    normalizer = trainer.ensure_normalizer()
    was_training = trainer.policy.training
    trainer.policy.eval()
    cols: dict[str, list[np.ndarray]] = defaultdict(list)
    cams = bool(trainer.config.policy.camera_names)
    with torch.no_grad():
        for lo in range(0, len(rows), chunk):
            b = store.gather(rows[lo : lo + chunk], load_images=cams, next_images=True).to(
                trainer.device
            )
            q = normalizer.normalize_proprio(b.proprio)
            qn = normalizer.normalize_proprio(b.next_proprio)
            phi = trainer._features(q, b.prompt_tokens, b.images or None, None)
            phin = trainer._features(qn, b.prompt_tokens, b.next_images or None, None)
            cols["source"].append(b.source.cpu().numpy())
            cols["label"].append(b.outcome_label.cpu().numpy())
            cols["episode_success"].append(b.episode_success.cpu().numpy())
            if trainer.critic is not None:
                z_v, v_e = trainer.critic(phi)
                z_n, v_n = trainer.critic(phin)
                p_v = torch.sigmoid(W.clamp_viability_logit(z_v))
                a_v = W.viability_advantage(z_v, z_n, b.has_next)
                a_e = W.efficiency_advantage(v_e, v_n, b.step_cost, b.has_next)
                if method.train_efficiency:
                    gate = W.habc_gate(p_v, a_v, a_e)
                else:
                    gate = W.habc_v_gate(p_v, a_v, method.habc_v_gate)
                for key, val in (
                    ("p_v", p_v),
                    ("z_v", z_v),
                    ("v_e", v_e),
                    ("a_v", a_v),
                    ("a_e", a_e),
                    ("g", gate),
                ):
                    cols[key].append(val.cpu().numpy())
            if trainer.parent is not None:
                v = trainer.parent.value(phi)
                vn = trainer.parent.value(phin)
                cols["recap_value"].append(v.cpu().numpy())
                cols["recap_residual"].append(
                    W.recap_td_residual(b.recap_reward, v, vn, b.has_next).cpu().numpy()
                )
    trainer.policy.train(was_training)
    out = {k: np.concatenate(v) for k, v in cols.items()}
    table = store.table
    out["episode_index"] = table.episode_index[rows]
    out["anchor"] = table.anchor[rows]
    return out


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Binned reliability (count, mean p, mean y per bin), ECE, Brier score and AUROC."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    n = np.bincount(idx, minlength=bins).astype(float)
    sp = np.bincount(idx, weights=p, minlength=bins)
    sy = np.bincount(idx, weights=y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mp, my = sp / n, sy / n
    nz = n > 0
    ece = float((np.abs(sp[nz] - sy[nz])).sum() / max(n.sum(), 1.0))
    return {
        "n": int(n.sum()),
        "positives": int(y.sum()),
        "bin_count": n.tolist(),
        "bin_mean_p": mp.tolist(),
        "bin_mean_y": my.tolist(),
        "ece": ece,
        "brier": float(np.mean((p - y) ** 2)) if len(p) else float("nan"),
        "auroc": _auroc(p, y),
        "mean_p": float(p.mean()) if len(p) else float("nan"),
        "mean_y": float(y.mean()) if len(y) else float("nan"),
    }


def _auroc(p: np.ndarray, y: np.ndarray) -> float:
    pos, neg = p[y > 0.5], p[y <= 0.5]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def analyse(
    trainer, store, rows: np.ndarray, traces: int = 0, trace_rows: np.ndarray | None = None
) -> dict[str, Any]:
    """Calibration, weight statistics per data source, Imit-Recap pass rates, critic traces."""
    from habc_learner.core.labeling import Source

    if trainer.critic is None and trainer.parent is None:
        return {}
    out = critic_outputs(trainer, store, rows)
    episodes = store.episodes
    took = np.array([bool(e.human_steps.any()) for e in episodes])
    ep = out["episode_index"]
    src = out["source"]
    res: dict[str, Any] = {"windows": len(rows)}
    if "p_v" in out:
        lab = out["label"] >= 0
        res["calibration"] = reliability(out["p_v"][lab], out["label"][lab])
        # Episode level: p_v at the first labeled window of each autonomous episode.
        first: dict[int, tuple[float, float]] = {}
        for i in np.flatnonzero(lab & ~took[ep]):
            e = int(ep[i])
            if e not in first or out["anchor"][i] < first[e][0]:
                first[e] = (out["anchor"][i], out["p_v"][i], out["label"][i])
        if first:
            vals = np.array([v[1:] for v in first.values()])
            res["calibration_episode_start"] = reliability(vals[:, 0], vals[:, 1], bins=5)
        g = out["g"]
        groups = {
            "success_autonomous": (src == Source.ROLLOUT_SUCCESS) & ~took[ep],
            "success_post_intervention": (src == Source.ROLLOUT_SUCCESS) & took[ep],
            "post_intervention": ((src == Source.ROLLOUT_SUCCESS) | (src == Source.ROLLOUT_FAILURE))
            & took[ep],
            "intervention": src == Source.INTERVENTION,
            "intervention_successful_episode": (src == Source.INTERVENTION)
            & out["episode_success"].astype(bool),
            "failure": src == Source.ROLLOUT_FAILURE,
            "demo": src == Source.DEMO,
        }
        res["gate"] = {
            k: {
                "n": int(m.sum()),
                "mean": _mean(g[m].tolist()),
                "std": float(g[m].std()) if m.any() else float("nan"),
                "p10": float(np.percentile(g[m], 10)) if m.any() else float("nan"),
                "p90": float(np.percentile(g[m], 90)) if m.any() else float("nan"),
                "mean_p_v": _mean(out["p_v"][m].tolist()),
                "mean_a_v": _mean(out["a_v"][m].tolist()),
                "mean_a_e": _mean(out["a_e"][m].tolist()),
            }
            for k, m in groups.items()
        }
        # Normalized weights (Eq. 8) over the union the batches are drawn from (proportional
        # mixing = uniform over the windows), IR off and on.
        for ir in (False, True):
            w_t = np.zeros(len(g))
            w_t[src == Source.DEMO] = 1.0
            w_t[src == Source.ROLLOUT_SUCCESS] = g[src == Source.ROLLOUT_SUCCESS]
            w_t[src == Source.INTERVENTION] = g[src == Source.INTERVENTION] if ir else 1.0
            valid = w_t > 0
            c = w_t[valid].mean() if valid.any() else 1.0
            res["normalized_w_ir" if ir else "normalized_w"] = {
                k: _mean((w_t[m] / c).tolist()) for k, m in groups.items()
            }
    if "recap_residual" in out:
        thr = trainer.recap_threshold
        roll = (src == Source.ROLLOUT_SUCCESS) | (src == Source.ROLLOUT_FAILURE)
        passed = out["recap_residual"] > (thr if thr is not None else np.inf)
        human = np.zeros(len(rows), dtype=bool)
        for i in np.flatnonzero(roll):
            human[i] = episodes[int(ep[i])].human_steps[int(out["anchor"][i])]
        res["recap"] = {
            "threshold": thr,
            "pass_rate": _mean(passed[roll].astype(float).tolist()),
            "pass_rate_success_episodes": _mean(
                passed[roll & (src == Source.ROLLOUT_SUCCESS)].astype(float).tolist()
            ),
            "pass_rate_failure_episodes": _mean(
                passed[roll & (src == Source.ROLLOUT_FAILURE)].astype(float).tolist()
            ),
            "pass_rate_human_steps": _mean(passed[roll & human].astype(float).tolist()),
            "passed_from_failed_episodes": _mean(
                (src[roll & passed] == Source.ROLLOUT_FAILURE).astype(float).tolist()
            ),
            "rollout_windows": int(roll.sum()),
        }
    if traces and "p_v" in out and trace_rows is not None:
        res["traces"] = _traces(out, episodes, took, set(store.table.episode_index[trace_rows]))
    return res


def _traces(out: dict[str, np.ndarray], episodes, took, candidates: set, k: int = 3) -> list:
    """p_v, V_e, g_t along up to ``k`` episodes: an autonomous success, an autonomous failure
    and one with a takeover (the paper's Figures 4-5)."""
    from habc_learner.core.episode import HUMAN

    picks: list[int] = []
    kinds = (
        ("autonomous success", lambda e, t: e.outcome.value == "success" and not t),
        ("autonomous failure", lambda e, t: e.outcome.value == "failure" and not t),
        ("takeover", lambda e, t: t),
    )
    traces = []
    for label, pred in kinds[:k]:
        for e in sorted(candidates):
            if e not in picks and pred(episodes[e], took[e]):
                picks.append(e)
                m = out["episode_index"] == e
                order = np.argsort(out["anchor"][m])
                epi = episodes[e]
                human = (epi.authority == HUMAN).any(axis=1)
                traces.append(
                    {
                        "kind": label,
                        "episode_id": epi.episode_id,
                        "outcome": epi.outcome.value,
                        "success_step": epi.success_step,
                        "human": np.flatnonzero(human).tolist(),
                        "anchor": out["anchor"][m][order].tolist(),
                        "source": out["source"][m][order].tolist(),
                        **{
                            key: np.round(out[key][m][order], 4).tolist()
                            for key in ("p_v", "v_e", "g", "a_v", "a_e")
                        },
                    }
                )
                break
    return traces


# ------------------------------------------------------------------------------ report
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}


def ci95(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and half-width of the 95 % Student-t interval over seeds (NaN half-width for n=1)."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(v[0]), float("nan"), 1
    half = T975.get(n - 1, 1.96) * float(v.std(ddof=1)) / math.sqrt(n)
    return float(v.mean()), half, n


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate ``successes / n``:
    ``(p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)``; ``(nan, nan)`` for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def fmt_rate(successes: int, n: int) -> str:
    """``"62 % [48, 74]"``: the rate with its 95 % Wilson interval, in percent."""
    lo, hi = wilson_interval(successes, n)
    return f"{100 * successes / n:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}]" if n else "–"


def fmt_ci(values: Sequence[float], scale: float = 100.0, digits: int = 0) -> str:
    m, h, n = ci95(values)
    if n == 0:
        return "–"
    if math.isnan(h):
        return f"{scale * m:.{digits}f}"
    return f"{scale * m:.{digits}f} ± {scale * h:.{digits}f}"


def load_records(cfg: ProtocolConfig) -> list[dict[str, Any]]:
    """Every round record of ``cfg.task`` for the configured seeds (traces stripped later)."""
    recs = []
    for seed in cfg.seeds:
        root = cfg.task_dir() / f"seed{seed}"
        for path in sorted(root.glob("*/round_*.json")):
            rec = json.loads(path.read_text())
            if rec.get("budget") == json.loads(json.dumps(cfg.budget())):
                recs.append(rec)
    return recs


def _series(recs, method: str, round_index: int, key: str) -> dict[int, float]:
    """seed -> eval[key] of (method, round); round 0 is the shared SFT start."""
    want = ("sft_start", 0) if round_index == 0 else (method, round_index)
    return {r["seed"]: float(r["eval"][key]) for r in recs if (r["method"], r["round"]) == want}


def write_report(cfg: ProtocolConfig, wall_s: float | None, counters: Counters) -> Path:
    """``results.md``, ``results.json`` and the figures under ``out/<task>/``; the invocation
    (command, wall time, what it did) is appended to ``work/<task>/invocations.json`` unless
    ``wall_s`` is None (a report-only rewrite)."""
    recs = load_records(cfg)
    out = cfg.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    timing_path = cfg.task_dir() / "invocations.json"
    invocations = json.loads(timing_path.read_text()) if timing_path.exists() else []
    if wall_s is not None:
        invocations.append(
            {
                "command": cfg.command,
                "wall_s": wall_s,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                "counters": dataclasses.asdict(counters),
            }
        )
        _write_json(timing_path, invocations)
    compute_s = sum(sum(r.get("wall_s", {}).values()) for r in recs)
    lean = [{k: v for k, v in r.items() if k != "analysis"} for r in recs]
    for r, full in zip(lean, recs):
        an = full.get("analysis", {})
        r["analysis"] = {
            part: {k: v for k, v in sec.items() if k != "traces"} for part, sec in an.items()
        }
    _write_json(
        out / "results.json",
        {"config": dataclasses.asdict(cfg), "invocations": invocations, "records": lean},
        indent=None,
    )
    figures = plot_rounds(cfg, recs, out)
    figures += plot_analysis(cfg, recs, out)
    md = render_markdown(cfg, recs, invocations, compute_s, figures)
    (out / "results.md").write_text(md)
    return out / "results.md"


def _rounds_of(cfg: ProtocolConfig, method: str) -> list[int]:
    rounds = list(range(0, cfg.rounds + 1))
    if method in cfg.step2_methods and cfg.step2_rounds:
        rounds += list(range(cfg.rounds + 1, cfg.rounds + cfg.step2_rounds + 1))
    return rounds


def render_markdown(cfg, recs, invocations, compute_s: float, figures: list[str]) -> str:
    seeds_done = sorted({r["seed"] for r in recs})
    lines = [
        f"# Paper protocol in simulation: `{cfg.task}`",
        "",
        "Generated by `habc-protocol` (`src/habc_learner/habc_learner/protocol.py`); "
        "interpretation in `../README.md`.",
        "",
        "## How it was made",
        "",
        "Every invocation that wrote into this run's folder (a later one reuses the records of",
        "the earlier ones and runs only what is missing), its wall time and what it ran:",
        "",
    ]
    for inv in invocations:
        c = inv.get("counters", {})
        lines += [
            "```",
            inv.get("command", "?"),
            "```",
            f"{inv['wall_s'] / 60:.1f} min wall, finished {inv.get('finished', '?')}: "
            f"{c.get('rounds_done', 0)} rounds run, {c.get('rounds_skipped', 0)} reused, "
            f"{c.get('rollouts', 0)} rollouts, {c.get('train_steps', 0)} gradient steps, "
            f"{c.get('eval_episodes', 0)} evaluation episodes",
            "",
        ]
    lines += [
        f"- total wall time {sum(i['wall_s'] for i in invocations) / 60:.1f} min; sum of the "
        f"rounds' own times over all seeds {compute_s / 60:.1f} min",
        f"- seeds done: {seeds_done} of {list(cfg.seeds)}; backend `{cfg.backend}`",
        f"- SFT start: {cfg.demos} scripted demonstrations, quality knob σ = {cfg.demo_noise} "
        f"({'waypoint offset, m' if cfg.backend == 'sim' else 'action noise'}); only successful "
        f"ones used; "
        + (
            f"SFT to the plateau of the flow loss on {cfg.val_demos} held-out demonstrations "
            f"(every {cfg.sft_validate_every} steps, patience {cfg.sft_patience}, "
            f"{cfg.sft_min_delta:.0%} relative; at most {cfg.sft_steps} steps; best weights kept)"
            if cfg.sft_patience
            else f"{cfg.sft_steps} SFT steps"
        ),
        f"- step 1: {cfg.rounds} rounds × {cfg.rollouts} rollouts (operator takes over in "
        f"~{100 * cfg.takeover_fraction:.0f} % of failing episodes) then {cfg.round_steps} "
        f"gradient steps (batch {cfg.batch_size}, warmup "
        f"{cfg.warmup_steps if cfg.warmup_steps is not None else 'method default (500)'}, "
        f"V_e target {cfg.efficiency_target})",
        f"- step 2: {cfg.step2_rounds} more round{'s' if cfg.step2_rounds != 1 else ''} of "
        f"{', '.join(cfg.step2_methods)} from the "
        f"`{cfg.step2_from}` round-{cfg.rounds} checkpoint"
        if cfg.step2_rounds
        else "- step 2: not run",
        f"- evaluation: {cfg.eval_episodes} fresh object poses per checkpoint (the same for "
        "every method of a seed), no takeovers; success %, and mean length (steps) of the "
        "successful episodes",
        "- numbers: mean ± half-width of the 95 % Student-t interval over seeds",
        "",
    ]
    # Step 1
    lines += ["## Step 1: equal budget (success %)", ""]
    header = ["method", "SFT start"] + [f"round {k}" for k in range(1, cfg.rounds + 1)]
    header += [f"Δ vs sft, round {cfg.rounds} (paired)", f"successful length, round {cfg.rounds}"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = _series(recs, "sft", cfg.rounds, "success_rate")
    for m in cfg.methods:
        row = [f"`{m}`"]
        for k in range(0, cfg.rounds + 1):
            row.append(fmt_ci(list(_series(recs, m, k, "success_rate").values())))
        fin = _series(recs, m, cfg.rounds, "success_rate")
        diffs = [fin[s] - base[s] for s in fin if s in base]
        row.append(fmt_ci(diffs) if m != "sft" and diffs else "–")
        row.append(fmt_ci(list(_series(recs, m, cfg.rounds, "mean_success_length").values()), 1))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if cfg.step2_rounds:
        lines += [
            f"## Step 2: continued from `{cfg.step2_from}` round {cfg.rounds} (success %)",
            "",
        ]
        ks = list(range(cfg.rounds, cfg.rounds + cfg.step2_rounds + 1))
        header = ["method"] + [f"round {k}" for k in ks] + ["successful length, last round"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for m in cfg.step2_methods:
            row = [f"`{m}`"]
            for k in ks:
                src = cfg.step2_from if k == cfg.rounds else m
                row.append(fmt_ci(list(_series(recs, src, k, "success_rate").values())))
            last = _series(recs, m, ks[-1], "mean_success_length")
            row.append(fmt_ci(list(last.values()), 1))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    # Paper-shaped table
    lines += [
        "## The paper's table, this run",
        "",
        "| method | step 1, equal budget | | step 2, continued |",
        "|---|---|---|---|",
    ]
    s2 = list(cfg.step2_methods) if cfg.step2_rounds else []
    last2 = cfg.rounds + cfg.step2_rounds
    for i, m in enumerate(cfg.methods):
        left = fmt_ci(list(_series(recs, m, cfg.rounds, "success_rate").values()))
        right_name = f"`{s2[i]}` (round {last2})" if i < len(s2) else ""
        right = (
            fmt_ci(list(_series(recs, s2[i], last2, "success_rate").values()))
            if i < len(s2)
            else ""
        )
        lines.append(f"| `{m}` | {left} | {right_name} | {right} |")
    lines.append("")
    # Per seed
    lines += ["## Per seed (success % / successful length)", ""]
    header = ["method", "round"] + [f"seed {s}" for s in cfg.seeds]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.append(
        "| SFT start | 0 | " + " | ".join(_cell(recs, "sft_start", 0, s) for s in cfg.seeds) + " |"
    )
    for m in dict.fromkeys([*cfg.methods, *s2]):
        for k in _rounds_of(cfg, m)[1:]:
            cells = [_cell(recs, m, k, s) for s in cfg.seeds]
            if any(c != "–" for c in cells):
                lines.append(f"| `{m}` | {k} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += render_paired(cfg, recs)
    lines += render_sft_start(cfg, recs)
    errors = sorted(cfg.task_dir().glob("seed*/*/error.json"))
    if errors:
        lines += ["## Methods that failed", ""]
        for path in errors:
            err = json.loads(path.read_text())["error"]
            lines.append(f"- `{path.parent.name}`, {path.parent.parent.name}: {err}")
        lines.append("")
    lines += render_analysis(cfg, recs)
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)


def _outcomes(recs, method: str, round_index: int) -> dict[int, list[int]]:
    """seed -> per-pose success (0/1, pose order) of (method, round); round 0: the SFT start."""
    want = ("sft_start", 0) if round_index == 0 else (method, round_index)
    return {
        r["seed"]: [int(e[0]) for e in r["eval"]["episodes"]]
        for r in recs
        if (r["method"], r["round"]) == want
    }


def paired_rows(recs, pairs: Sequence[tuple[str, int, str, int]], n_boot: int = 10_000):
    """For each (method A, round a, method B, round b): the paired difference A − B over the
    seeds both have, on the same poses, with its two-level bootstrap 95 % interval
    (:func:`habc_learner.core.power.paired_bootstrap`); None where no seed has both."""
    from habc_learner.core.power import paired_bootstrap

    out = []
    for ma, ka, mb, kb in pairs:
        a, b = _outcomes(recs, ma, ka), _outcomes(recs, mb, kb)
        seeds = sorted(s for s in a if s in b and len(a[s]) == len(b[s]))
        iv = (
            paired_bootstrap([a[s] for s in seeds], [b[s] for s in seeds], n_boot=n_boot)
            if seeds
            else None
        )
        out.append(((ma, ka, mb, kb), iv))
    return out


def render_paired(cfg, recs) -> list[str]:
    """Paired differences against SFT (the same steps on demos), the SFT start and between
    the methods, with bootstrap intervals over seeds and poses."""
    last = cfg.rounds
    if last < 1:
        return []
    names = list(cfg.methods)
    pairs: list[tuple[str, int, str, int]] = []
    for m in names:
        pairs.append((m, last, "sft_start", 0))
    for m in names:
        if m != "sft" and "sft" in names:
            pairs.append((m, last, "sft", last))
    others = [m for m in names if m != "sft"]
    for i, m in enumerate(others):
        for m2 in others[i + 1 :]:
            pairs.append((m, last, m2, last))
    if cfg.step2_rounds:
        end = cfg.rounds + cfg.step2_rounds
        s2 = list(cfg.step2_methods)
        for i, m in enumerate(s2):
            pairs.append((m, end, cfg.step2_from, last))
            for m2 in s2[i + 1 :]:
                pairs.append((m, end, m2, end))
    lines = [
        "## Paired differences (percentage points, bootstrap 95 % intervals)",
        "",
        "A − B on the same evaluation poses of each seed: mean over seeds of the per-seed mean "
        "difference; interval: two-level percentile bootstrap (seeds with replacement, then "
        "each drawn seed's pose pairs with replacement), 10 000 replicates. **bold**: the "
        "interval excludes 0.",
        "",
        "| A | B | Δ (A − B) [95 % CI] | seeds | poses per seed |",
        "|---|---|---|---|---|",
    ]
    for (ma, ka, mb, kb), iv in paired_rows(recs, pairs):
        la = "SFT start" if ma == "sft_start" else f"`{ma}` r{ka}"
        lb = "SFT start" if mb == "sft_start" else f"`{mb}` r{kb}"
        if iv is None:
            lines.append(f"| {la} | {lb} | – | 0 | – |")
            continue
        txt = iv.format()
        lines.append(
            f"| {la} | {lb} | {'**' + txt + '**' if iv.excludes_zero else txt} | {iv.seeds} "
            f"| {iv.poses // iv.seeds} |"
        )
    lines.append("")
    return lines


def render_sft_start(cfg, recs) -> list[str]:
    """The converged SFT start per seed, and the band tuner's probes."""
    lines = ["## SFT start", ""]
    tuning_path = cfg.task_dir() / "band_tuning.json"
    if tuning_path.exists():
        t = json.loads(tuning_path.read_text())
        lines += [
            f"Weakness knob, tuned automatically (`--demos auto`, seed {t.get('seed')}): "
            f"**{t['chosen_demos']} demonstrations** at σ = {cfg.demo_noise}, "
            f"{'inside' if t['in_band'] else 'NOT inside'} the band "
            f"{t['key']['band'][0]:.0%}–{t['key']['band'][1]:.0%} on "
            f"{t['key']['tune_episodes']} tuning poses ({t['wall_s'] / 60:.1f} min). Probes:",
            "",
            "| demos | successful | SFT step (best held-out loss) | plateau | success on "
            "tuning poses |",
            "|---|---|---|---|---|",
        ]
        for p in t["probes"]:
            lines.append(
                f"| {p['value']} | {p.get('successful_demos', '–')} | {p.get('sft_step', '–')} "
                f"| {p.get('plateau', '–')} | {fmt_rate(p['successes'], p['episodes'])} |"
            )
        lines.append("")
    rows = sorted((r for r in recs if r["method"] == "sft_start"), key=lambda r: r["seed"])
    if rows:
        lines += [
            "| seed | demos (successful / held out) | SFT step | steps run | held-out plateau "
            "| best held-out flow loss | success (95 % Wilson) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            sft = r.get("sft", {})
            n = len(r["eval"]["episodes"])
            ok = sum(int(e[0]) for e in r["eval"]["episodes"])
            best = sft.get("best_loss")
            lines.append(
                f"| {r['seed']} | {r['demos']['successful']} / {r['demos'].get('held_out', 0)} "
                f"| {r['learner_step']} | {sft.get('steps_run', '–')} | {sft.get('plateau', '–')} "
                f"| {f'{best:.4f}' if isinstance(best, float) else '–'} | {fmt_rate(ok, n)} |"
            )
        lines.append("")
    return lines


def _cell(recs, method: str, k: int, seed: int) -> str:
    for r in recs:
        if (r["method"], r["round"], r["seed"]) == (method, k, seed):
            ev = r["eval"]
            ln = ev["mean_success_length"]
            return (
                f"{100 * ev['success_rate']:.0f} / {ln:.0f}"
                if not math.isnan(ln)
                else (f"{100 * ev['success_rate']:.0f} / –")
            )
    return "–"


def render_suffix_table(recs, by_prod: dict[str, list[dict]]) -> list[str]:
    """Takeovers and their post-takeover policy suffix, per producer (sum over seeds); the mean
    g on the suffix windows comes from the critic of each method that trained on them."""

    def pct(num: int, den: int) -> str:
        return f"{100 * num / den:.0f} %" if den else "–"

    g_suffix: dict[str, list[float]] = defaultdict(list)
    for r in recs:
        prod = (r.get("rollouts") or {}).get("producer")
        gate = r.get("analysis", {}).get("store", {}).get("gate", {}).get("post_intervention")
        if prod and gate and gate.get("n"):
            g_suffix[prod].append(gate["mean"])
    lines = [
        "### Takeovers and the post-takeover suffix (sum over seeds)",
        "",
        "A suffix is the policy's own steps after the last takeover and its hand-back ramp; "
        "suffix windows are the outcome-labeled windows anchored there (HABC's credit rule).",
        "",
        "| producer | takeover episodes | takeover success | with a suffix | with a suffix "
        "≥ 50 steps | suffix windows | hand-backs | one-arm takeover episodes | mean g on "
        "suffix windows |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    weak: list[str] = []
    for prod, ros in sorted(by_prod.items()):

        def tot(key: str, ros=ros) -> int:
            return int(sum(x.get(key, 0) for x in ros))

        n = tot("takeovers")
        g = f"{_mean(g_suffix[prod]):.2f}" if g_suffix.get(prod) else "–"
        if n and tot("takeover_successes") < 0.9 * n:
            weak.append(f"`{prod}` ({pct(tot('takeover_successes'), n)})")
        lines.append(
            f"| `{prod}` | {n} | {pct(tot('takeover_successes'), n)} "
            f"| {pct(tot('episodes_with_suffix'), n)} | {pct(tot('episodes_with_suffix_50'), n)} "
            f"| {tot('suffix_windows')} | {tot('handbacks')} "
            f"| {tot('one_arm_takeover_episodes')} | {g} |"
        )
    lines.append("")
    if weak:
        lines += [
            "**The scripted operator is not a competent operator here**: fewer than 90 % of its "
            f"takeovers end in success for {', '.join(weak)}. Its failed corrections are "
            "imitated like any other intervention under the paper's rule (the `+nofailcorr` "
            "variant leaves them out), so read the intervention-based methods with that in mind.",
            "",
        ]
    return lines


def render_analysis(cfg, recs) -> list[str]:
    lines = ["## Analysis", ""]
    # Rollout composition
    lines += [
        "### Rollouts per round (sum over seeds)",
        "",
        "| producer | episodes | successes | autonomous successes | takeovers "
        "| takeover successes | failures left alone | of those, declined as unrecoverable |",
        "|---|---|---|---|---|---|---|---|",
    ]
    seen: dict[tuple[int, str], dict] = {}
    for r in recs:
        ro = r.get("rollouts") or {}
        if ro:
            # a producer's rollouts are recorded once and reused; only the recording
            # invocation saw the operator's declines
            key = (r["seed"], ro["producer"])
            declined = max(
                ro.get("declined_unrecoverable", 0),
                seen.get(key, {}).get("declined_unrecoverable", 0),
            )
            seen[key] = {**ro, "declined_unrecoverable": declined}
    by_prod: dict[str, list[dict]] = defaultdict(list)
    for (_, prod), ro in seen.items():
        by_prod[prod].append(ro)
    for prod, ros in sorted(by_prod.items()):
        keys = (
            "episodes",
            "successes",
            "autonomous_successes",
            "takeovers",
            "takeover_successes",
            "failures_without_takeover",
            "declined_unrecoverable",
        )
        lines.append(
            f"| `{prod}` | " + " | ".join(str(sum(x.get(k, 0) for x in ros)) for k in keys) + " |"
        )
    lines.append("")
    lines += render_suffix_table(recs, by_prod)
    # Critic calibration
    cal_rows = []
    for r in recs:
        an = r.get("analysis", {})
        for part, label in (("fresh", "fresh rollouts"), ("store", "training store")):
            c = an.get(part, {}).get("calibration")
            if c:
                cal_rows.append((r["method"], r["round"], label, r["seed"], c))
    if cal_rows:
        lines += [
            "### Critic calibration: p_v against the realised outcome (labeled policy windows)",
            "",
            "*fresh*: the critic after round k−1 on round k's rollouts (never trained on); "
            "*training store*: after round k on everything it trained on.",
            "",
            "| method | round | data | windows | mean p_v | success frac. | ECE | Brier | AUROC |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        agg: dict[tuple, list] = defaultdict(list)
        for m, k, label, _seed, c in cal_rows:
            agg[(m, k, label)].append(c)
        for (m, k, label), cs in sorted(agg.items()):
            lines.append(
                f"| `{m}` | {k} | {label} | {sum(c['n'] for c in cs)} | "
                f"{_mean([c['mean_p'] for c in cs]):.2f} | "
                f"{_mean([c['mean_y'] for c in cs]):.2f} | "
                f"{_mean([c['ece'] for c in cs]):.3f} | {_mean([c['brier'] for c in cs]):.3f} | "
                f"{_mean([c['auroc'] for c in cs]):.2f} |"
            )
        lines.append("")
    # Weights
    w_rows = defaultdict(list)
    for r in recs:
        gate = r.get("analysis", {}).get("store", {}).get("gate")
        if gate:
            w_rows[(r["method"], r["round"])].append(r["analysis"]["store"])
    if w_rows:
        lines += [
            "### Gate g_t and normalized weight per data source (after the round, every window)",
            "",
            f"Paper: mean g_t on successful autonomous windows after warmup "
            f"{PAPER_G_SUCCESS[0]}–{PAPER_G_SUCCESS[1]}; with IR on intervention windows "
            "0.95–1.1. Mean over seeds; w = normalized weight (Eq. 8) over the union the batches "
            "are drawn from, IR off.",
            "",
            "| method | round | g succ. auton. | g succ. post-interv. | g interv. | g failure "
            "| p_v succ. auton. | w succ. auton. | w interv. | w demo |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for (m, k), secs in sorted(w_rows.items()):

            def gm(group: str, key: str = "mean", secs=secs) -> str:
                return f"{_mean([s['gate'][group][key] for s in secs]):.2f}"

            def wm(group: str, secs=secs) -> str:
                return f"{_mean([s['normalized_w'][group] for s in secs]):.2f}"

            lines.append(
                f"| `{m}` | {k} | {gm('success_autonomous')} | {gm('success_post_intervention')} "
                f"| {gm('intervention')} | {gm('failure')} "
                f"| {gm('success_autonomous', 'mean_p_v')} "
                f"| {wm('success_autonomous')} | {wm('intervention')} | {wm('demo')} |"
            )
        lines.append("")
    # Recap
    rc = defaultdict(list)
    for r in recs:
        sec = r.get("analysis", {}).get("store", {}).get("recap")
        if sec:
            rc[(r["method"], r["round"])].append((sec, r.get("train", {})))
    if rc:
        lines += [
            "### Imit-Recap: rollout windows passing the TD-residual threshold",
            "",
            f"Paper: {100 * PAPER_RECAP_PASS[0]:.0f}–{100 * PAPER_RECAP_PASS[1]:.0f} % pass. "
            "Here ε is chosen on held-out rollout windows for a 25 % pass rate "
            "(`recap_target_pass_rate`), so the held-out rate is 25 % by construction; the "
            "columns say which windows pass.",
            "",
            "| method | round | pass (train batches) | pass (held-out at selection) | pass, all "
            "rollout windows | of successful episodes | of failed episodes | human-driven steps "
            "| passing windows from failed episodes |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for (m, k), items in sorted(rc.items()):

            def pm(key: str, items=items) -> str:
                return f"{100 * _mean([s[key] for s, _ in items]):.0f} %"

            def tm(key: str, items=items) -> str:
                return f"{100 * _mean([t.get(key, float('nan')) for _, t in items]):.0f} %"

            lines.append(
                f"| `{m}` | {k} | {tm('recap/pass_rate')} | {tm('recap/heldout_pass_rate')} | "
                f"{pm('pass_rate')} | {pm('pass_rate_success_episodes')} | "
                f"{pm('pass_rate_failure_episodes')} | {pm('pass_rate_human_steps')} | "
                f"{pm('passed_from_failed_episodes')} |"
            )
        lines.append("")
    return lines


def _method_colors(methods: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def plot_rounds(cfg: ProtocolConfig, recs, out: Path) -> list[str]:
    """Success per round per method and successful-episode length (mean ± 95 % CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys([*cfg.methods, *(cfg.step2_methods if cfg.step2_rounds else ())]))
    colors = _method_colors(methods)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for j, m in enumerate(methods):
        rounds, mean, half, lmean, lhalf = [], [], [], [], []
        for k in (
            _rounds_of(cfg, m)
            if m in cfg.methods
            else [cfg.rounds, *range(cfg.rounds + 1, cfg.rounds + cfg.step2_rounds + 1)]
        ):
            src = m
            if k == 0:
                src = "sft_start"
            elif m not in cfg.methods and k == cfg.rounds:
                src = cfg.step2_from
            s = _series(recs, src, k, "success_rate")
            ln = _series(recs, src, k, "mean_success_length")
            if not s:
                continue
            a, h, _ = ci95(list(s.values()))
            b, hb, _ = ci95(list(ln.values()))
            rounds.append(k + 0.04 * (j - len(methods) / 2))
            mean.append(100 * a)
            half.append(0 if math.isnan(h) else 100 * h)
            lmean.append(b)
            lhalf.append(0 if math.isnan(hb) else hb)
        if not rounds:
            continue
        ls = "-" if m in cfg.methods else "--"
        ax1.errorbar(
            rounds, mean, yerr=half, marker="o", capsize=3, ls=ls, color=colors[m], label=m
        )
        ax2.errorbar(rounds, lmean, yerr=lhalf, marker="o", capsize=3, ls=ls, color=colors[m])
    if cfg.step2_rounds:
        for ax in (ax1, ax2):
            ax.axvline(cfg.rounds + 0.5, color="grey", lw=0.8, ls=":")
            ax.text(
                cfg.rounds + 0.55,
                0.98,
                "step 2",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=8,
                color="grey",
            )
    n = len({r["seed"] for r in recs})
    ax1.set_title(f"success over {cfg.eval_episodes} fresh poses (mean ± 95 % CI, {n} seeds)")
    ax1.set_xlabel("round (0 = SFT start)")
    ax1.set_ylabel("success rate (%)")
    ax1.set_ylim(-2, 102)
    ax2.set_title("mean length of successful episodes")
    ax2.set_xlabel("round (0 = SFT start)")
    ax2.set_ylabel("steps")
    ax1.legend(fontsize=8, loc="best")
    fig.suptitle(
        f"{cfg.task}: paper protocol, {cfg.rollouts} rollouts + {cfg.round_steps} steps per round",
        fontsize=10,
    )
    fig.tight_layout()
    name = "success_per_round.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return [name]


def plot_analysis(cfg: ProtocolConfig, recs, out: Path) -> list[str]:
    """Reliability diagram, gate statistics per source, critic traces."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    # Reliability: pool bins over seeds, per (method, data), the last round that has them.
    pools: dict[tuple[str, str], dict] = {}
    for r in recs:
        for part in ("fresh", "store"):
            c = r.get("analysis", {}).get(part, {}).get("calibration")
            if not c:
                continue
            key = (r["method"], part)
            cur = pools.get(key)
            if cur is None or r["round"] > cur["round"]:
                pools[key] = {"round": r["round"], "cals": [c]}
            elif r["round"] == cur["round"]:
                cur["cals"].append(c)
    if pools:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
        for ax, part, title in (
            (axes[0], "fresh", "fresh rollouts (critic of round k−1)"),
            (axes[1], "store", "training store (after round k)"),
        ):
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
            for (m, p), pool in sorted(pools.items()):
                if p != part:
                    continue
                n = np.sum([c["bin_count"] for c in pool["cals"]], axis=0)
                sp = np.sum(
                    [
                        np.nan_to_num(np.array(c["bin_mean_p"]) * c["bin_count"])
                        for c in pool["cals"]
                    ],
                    axis=0,
                )
                sy = np.sum(
                    [
                        np.nan_to_num(np.array(c["bin_mean_y"]) * c["bin_count"])
                        for c in pool["cals"]
                    ],
                    axis=0,
                )
                nz = n > 0
                ax.plot(
                    sp[nz] / n[nz],
                    sy[nz] / n[nz],
                    marker="o",
                    label=f"{m} r{pool['round']} (n={int(n.sum())})",
                )
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("predicted p_v (bin mean)")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("realised success fraction")
        fig.suptitle(f"{cfg.task}: critic calibration (reliability diagram)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "calibration.png", dpi=110)
        plt.close(fig)
        names.append("calibration.png")
    # Gate per source per round
    rows = defaultdict(list)
    for r in recs:
        gate = r.get("analysis", {}).get("store", {}).get("gate")
        if gate:
            rows[r["method"]].append((r["round"], gate))
    if rows:
        groups = ("success_autonomous", "success_post_intervention", "intervention", "failure")
        fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.8), squeeze=False)
        for ax, (m, items) in zip(axes[0], sorted(rows.items())):
            ks = sorted({k for k, _ in items})
            width = 0.8 / len(groups)
            for gi, grp in enumerate(groups):
                vals = [_mean([g[grp]["mean"] for k2, g in items if k2 == k]) for k in ks]
                ax.bar(np.arange(len(ks)) + gi * width, vals, width, label=grp.replace("_", " "))
            ax.axhspan(*PAPER_G_SUCCESS, color="green", alpha=0.12, label="paper g succ. auton.")
            ax.axhline(1.0, color="grey", lw=0.8, ls=":")
            ax.set_xticks(np.arange(len(ks)) + 0.4 - width / 2)
            ax.set_xticklabels([f"r{k}" for k in ks])
            ax.set_ylim(0, 2)
            ax.set_title(f"{m}: mean g_t per source", fontsize=9)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "weights.png", dpi=110)
        plt.close(fig)
        names.append("weights.png")
    # Traces (the paper's Figures 4-5) of the step-1 method step 2 continues, lowest seed:
    # in-sample (after round k, on that round's rollouts) and fresh (after round k−1, on round
    # k's rollouts, which the critic has never trained on).
    for part, name, what in (
        ("store", "traces.png", "critic after round {k} along rollouts it trained on"),
        ("fresh", "traces_fresh.png", "critic after round {km1} along round {k}'s new rollouts"),
    ):
        traced = [r for r in recs if r.get("analysis", {}).get(part, {}).get("traces")]
        if not traced:
            continue
        pref = [r for r in traced if r["method"] == cfg.step2_from] or traced
        r = max(pref, key=lambda x: (x["step"] == 1, x["round"], -x["seed"]))
        title = (
            f"{cfg.task}, {r['method']}, seed {r['seed']}: "
            + what.format(k=r["round"], km1=r["round"] - 1)
            + "\n(orange: operator in control; green: success step)"
        )
        _plot_traces(r["analysis"][part]["traces"], title, out / name)
        names.append(name)
    return names


def _plot_traces(traces: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        3, len(traces), figsize=(4.3 * len(traces), 6.6), squeeze=False, sharex="col"
    )
    for j, tr in enumerate(traces):
        t = np.array(tr["anchor"])
        for i, (key, label) in enumerate(
            (("p_v", "p_v (viability)"), ("v_e", "V_e (−steps to success)"), ("g", "g_t"))
        ):
            ax = axes[i][j]
            ax.plot(t, tr[key], lw=1.0)
            if tr["human"]:
                h = np.array(tr["human"])
                ax.axvspan(h.min(), h.max(), color="orange", alpha=0.2, label="operator")
            if tr["success_step"] is not None and tr["outcome"] == "success":
                ax.axvline(tr["success_step"], color="green", lw=0.8, ls="--")
            if key == "g":
                ax.axhline(1.0, color="grey", lw=0.8, ls=":")
                ax.set_ylim(0, 2)
            if key == "p_v":
                ax.set_ylim(-0.02, 1.02)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
        axes[0][j].set_title(f"{tr['kind']} ({tr['outcome']})\n{tr['episode_id']}", fontsize=8)
        axes[-1][j].set_xlabel("step")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ entry points
def _run_seed(cfg: ProtocolConfig, seed: int) -> Counters:
    logging.getLogger("arx_x5_driver").setLevel(logging.ERROR)
    return SeedRun(cfg, seed).run()


#: What the band tuner's choice depends on (the online budget does not enter it).
TUNING_FIELDS = (
    "task",
    "demo_noise",
    "sft_steps",
    "sft_patience",
    "sft_validate_every",
    "sft_min_delta",
    "val_demos",
    "batch_size",
)


def _tuning_key(cfg: ProtocolConfig) -> dict[str, Any]:
    return json.loads(
        json.dumps(
            {
                **{k: getattr(cfg, k) for k in TUNING_FIELDS},
                "seed": cfg.seeds[0],
                "demo_candidates": list(cfg.demo_candidates),
                "band": list(cfg.band),
                "tune_episodes": cfg.tune_episodes,
            }
        )
    )


def tune_demos(cfg: ProtocolConfig, counters: Counters | None = None) -> dict[str, Any]:
    """The weakness knob: the number of demonstrations (at the task's quality σ) that puts
    the converged SFT start in ``cfg.band``.

    On the first seed: record the largest candidate's demonstrations once, then bisect over
    ``cfg.demo_candidates`` (:func:`~habc_learner.core.power.tune_monotone_knob`); each probe
    trains SFT on the first n demonstrations (to the held-out plateau, like the real start)
    and estimates its success on ``cfg.tune_episodes`` tuning poses, which no evaluation
    uses. The record (``work/<task>/band_tuning.json``) is reused by a later invocation with
    the same budget; the first seed's SFT start reuses the chosen probe's checkpoint.
    """
    from habc_learner.core.power import tune_monotone_knob

    path = cfg.task_dir() / "band_tuning.json"
    key = _tuning_key(cfg)
    if path.exists():
        rec = json.loads(path.read_text())
        # tuned on the first seed of the invocation that tuned; a later one with other seeds
        # (e.g. more seeds for the same run) reuses the choice
        if any(rec.get("key", {}).get(k) != v for k, v in key.items() if k != "seed"):
            raise ValueError(
                f"{path} was tuned under {rec.get('key')}, this run has {key}: use another "
                f"--work folder"
            )
        return rec
    import torch

    torch.set_num_threads(cfg.threads)
    t0 = time.monotonic()
    run = SeedRun(dataclasses.replace(cfg, demos=max(cfg.demo_candidates)), cfg.seeds[0])
    run.root.mkdir(parents=True, exist_ok=True)
    run.demo_episodes(max(cfg.demo_candidates))
    val = run.val_demo_episodes()
    details: dict[int, dict[str, Any]] = {}
    by_successful: dict[int, tuple[int, int]] = {}

    def estimate(n: int) -> tuple[int, int]:
        demos, recorded = run.demo_episodes(n)
        if not demos:
            run.say(f"band tuning: 0/{recorded} demonstrations succeeded at n={n}")
            details[n] = {"successful_demos": 0, "success": 0}
            return 0, cfg.tune_episodes
        if len(demos) in by_successful:  # the same training set as an earlier probe
            details[n] = {
                **details[by_successful[len(demos)][0]],
                "same_as": by_successful[len(demos)][0],
            }
            return by_successful[len(demos)][1], cfg.tune_episodes
        ckpt, info = run.train_sft(demos, val, sft_name(len(demos)))
        seeds = [tune_seed(cfg.seeds[0], i) for i in range(cfg.tune_episodes)]
        ev = run.evaluate(ckpt, seeds=seeds)
        ok = round(ev["success_rate"] * len(seeds))
        details[n] = {
            "successful_demos": len(demos),
            "success": ok,
            "sft_step": ev["learner_step"],
            "plateau": info.get("plateau"),
            "steps_run": info.get("steps_run"),
        }
        run.say(
            f"band tuning: n={n} demos ({len(demos)} successful) -> SFT step "
            f"{ev['learner_step']}, success {fmt_rate(ok, len(seeds))} on the tuning poses"
        )
        by_successful[len(demos)] = (n, ok)
        return ok, len(seeds)

    result = tune_monotone_knob(list(cfg.demo_candidates), estimate, tuple(cfg.band))
    rec = {
        "key": key,
        "chosen_demos": int(result.value),
        "in_band": result.in_band,
        "probes": [{**p, **details.get(p["value"], {})} for p in result.to_dict()["probes"]],
        "wall_s": time.monotonic() - t0,
        "seed": cfg.seeds[0],
    }
    _write_json(path, rec)
    run.say(
        f"band tuning: chose {result.value} demonstrations "
        f"({'in' if result.in_band else 'NOT in'} the band {cfg.band}) after "
        f"{len(result.probes)} probes, {rec['wall_s'] / 60:.1f} min"
    )
    if counters is not None:
        counters.add(run.counters)
    return rec


def resolve_demos(cfg: ProtocolConfig, counters: Counters | None = None, *, tune: bool = True):
    """``cfg`` with ``demos`` fixed: the band tuner's choice when ``cfg.tune_demos`` (tuned now
    unless ``tune`` is False, then the recorded choice is required)."""
    if not cfg.tune_demos:
        return cfg
    path = cfg.task_dir() / "band_tuning.json"
    if not tune and not path.exists():
        raise ValueError(f"{path} does not exist: run the protocol (it tunes the demos) first")
    rec = tune_demos(cfg, counters)
    return dataclasses.replace(cfg, demos=rec["chosen_demos"], tune_demos=False)


def run_protocol(cfg: ProtocolConfig) -> tuple[Counters, Path]:
    """Run (or resume) every seed, then write the report; return what was done and its path."""
    t0 = time.monotonic()
    cfg.task_dir().mkdir(parents=True, exist_ok=True)
    total = Counters()
    cfg = resolve_demos(cfg, total)
    if cfg.jobs > 1 and len(cfg.seeds) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(
            max_workers=min(cfg.jobs, len(cfg.seeds)), mp_context=mp.get_context("spawn")
        ) as pool:
            for c in pool.map(_run_seed, [cfg] * len(cfg.seeds), cfg.seeds):
                total.add(c)
    else:
        for seed in cfg.seeds:
            total.add(_run_seed(cfg, seed))
    report = write_report(cfg, time.monotonic() - t0, total)
    return total, report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="habc-protocol",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--task",
        default="transfer_cube",
        help=f"{' | '.join(ALOHA_TASKS)} | any Meta-World MT1 task (assembly-v3, ...)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="experiment seeds")
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        help="step-1 methods: learner registry names (sft, habc, ire_vla, ...), optionally with "
        "a variant suffix: habc+td (the paper's TD V_e target), habc+mc (Monte-Carlo V_e "
        "target), habc+online (TD from the online head), habc+batchmean (Eq. 1 averaged over "
        "the whole batch), habc+stride10 (one-step terms over 10 control steps)",
    )
    p.add_argument(
        "--demos",
        default=None,
        help="scripted demonstrations, or 'auto': tune their number into --band (default: the "
        "task's tuned value; 'auto' for a task without one)",
    )
    p.add_argument(
        "--demo-candidates",
        type=int,
        nargs="+",
        default=list(DEFAULT_DEMO_CANDIDATES),
        help="--demos auto: the numbers of demonstrations the tuner chooses from",
    )
    p.add_argument(
        "--band",
        type=float,
        nargs=2,
        default=[0.15, 0.50],
        metavar=("LO", "HI"),
        help="--demos auto: the SFT start's target success band",
    )
    p.add_argument(
        "--tune-episodes",
        type=int,
        default=20,
        help="--demos auto: tuning poses per probe (the cheap success estimate)",
    )
    p.add_argument(
        "--demo-noise",
        type=float,
        default=None,
        help="demo quality knob: expert noise σ (default: the task's tuned value)",
    )
    p.add_argument(
        "--sft-steps",
        type=int,
        default=None,
        help="SFT gradient steps: the cap when SFT runs to the plateau (--sft-patience > 0), "
        "else exactly these",
    )
    p.add_argument(
        "--sft-patience",
        type=int,
        default=5,
        help="SFT stops after this many held-out evaluations without a --sft-min-delta "
        "relative improvement of the flow loss on --val-demos held-out demonstrations "
        "(0: a fixed --sft-steps)",
    )
    p.add_argument("--sft-validate-every", type=int, default=100)
    p.add_argument("--sft-min-delta", type=float, default=0.01)
    p.add_argument("--val-demos", type=int, default=4, help="held-out demonstrations (SFT plateau)")
    p.add_argument("--rounds", type=int, default=3, help="step-1 online rounds")
    p.add_argument("--rollouts", type=int, default=100, help="rollout episodes per round")
    p.add_argument("--round-steps", type=int, default=6000, help="gradient steps per round")
    p.add_argument(
        "--takeover-fraction",
        type=float,
        default=0.5,
        help="share of failing rollouts the scripted operator takes over",
    )
    p.add_argument(
        "--rollout-steps",
        type=int,
        default=None,
        help="step limit of rollout episodes (default: the task's evaluation limit)",
    )
    p.add_argument("--eval-episodes", type=int, default=50, help="evaluation episodes")
    p.add_argument("--step2-rounds", type=int, default=0, help="step-2 rounds (0: none)")
    p.add_argument("--step2-methods", nargs="+", default=list(DEFAULT_STEP2))
    p.add_argument("--step2-from", default="habc", help="step-1 method step 2 continues")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="override every method's g ≡ 1 warmup (default: the method's, 500)",
    )
    p.add_argument(
        "--efficiency-target",
        choices=("td", "mc"),
        default="mc",
        help="V_e target: the Monte-Carlo −(T_s − t) (default; see docs/results/README.md) "
        "or TD of Eq. 3 with a Polyak bootstrap (the paper's; also as the variant habc+td)",
    )
    p.add_argument("--trace-episodes", type=int, default=3)
    p.add_argument("--work", default="runs/protocol", help="bags, checkpoints, round records")
    p.add_argument("--out", default="docs/results", help="report root (<out>/<task>/)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--jobs", type=int, default=1, help="seeds in parallel processes")
    p.add_argument("--device", default="cpu", help="torch device of the learner (cpu, cuda)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the report from the existing round records",
    )
    return p


def config_from_args(args: argparse.Namespace, command: str) -> ProtocolConfig:
    task = normalize_task(args.task)
    d = TASK_DEFAULTS.get(task, _METAWORLD)
    demos = args.demos if args.demos is not None else (d.demos if task in TASK_DEFAULTS else "auto")
    if str(demos) != "auto":
        try:
            demos = int(demos)
        except ValueError:
            raise ValueError(f"--demos must be an integer or 'auto', got {demos!r}") from None
    tune = demos == "auto"
    return ProtocolConfig(
        task=task,
        seeds=tuple(args.seeds),
        methods=tuple(args.methods),
        demos=max(args.demo_candidates) if tune else demos,
        demo_noise=args.demo_noise if args.demo_noise is not None else d.demo_noise,
        sft_steps=args.sft_steps if args.sft_steps is not None else d.sft_steps,
        sft_patience=args.sft_patience,
        sft_validate_every=args.sft_validate_every,
        sft_min_delta=args.sft_min_delta,
        val_demos=args.val_demos,
        tune_demos=tune,
        demo_candidates=tuple(args.demo_candidates),
        band=tuple(args.band),
        tune_episodes=args.tune_episodes,
        rounds=args.rounds,
        rollouts=args.rollouts,
        round_steps=args.round_steps,
        takeover_fraction=args.takeover_fraction,
        rollout_steps=args.rollout_steps,
        eval_episodes=args.eval_episodes,
        step2_rounds=args.step2_rounds,
        step2_methods=tuple(args.step2_methods),
        step2_from=args.step2_from,
        batch_size=args.batch_size,
        warmup_steps=args.warmup_steps,
        efficiency_target=args.efficiency_target,
        trace_episodes=args.trace_episodes,
        work=args.work,
        out=args.out,
        threads=args.threads,
        jobs=args.jobs,
        device=args.device,
        command=command,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "habc-protocol " + " ".join(shlex.quote(a) for a in argv)
    try:
        cfg = config_from_args(args, command)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("arx_x5_driver").setLevel(logging.ERROR)
    if args.report_only:
        report = write_report(resolve_demos(cfg, tune=False), None, Counters())
        print(f"wrote {report}")
        return 0
    counters, report = run_protocol(cfg)
    print(f"wrote {report} ({dataclasses.asdict(counters)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

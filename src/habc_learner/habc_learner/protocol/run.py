"""Running the protocol: one seed's demonstrations, SFT start and online rounds
(:class:`SeedRun`; each method's rounds are a :class:`~habc_learner.core.rounds.RoundEngine`),
the band tuner of the number of demonstrations, and every seed then the report
(:func:`run_protocol`). Everything resumes from the records under ``--work``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from habc_learner.core.rounds import (
    PHASES,
    Collected,
    Learned,
    RoundEngine,
    RoundFailure,
    RoundRecord,
    write_json_atomic,
)
from habc_learner.protocol.config import (
    NETWORKS,
    RECORD_VERSION,
    SFT_FIELDS,
    Counters,
    ProtocolConfig,
    critic_overrides,
    demo_seed,
    eval_seed,
    method_config,
    needs_rollouts,
    rollout_seed,
    sft_name,
    sft_val_seed,
    tune_seed,
    val_demo_seed,
    variant_overrides,
)
from habc_learner.protocol.report import write_report
from habc_learner.protocol.stats import _mean, analyse, fmt_rate

#: The round records' names of the engine's phases in ``wall_s``.
WALL_KEYS = ("rollouts", "train", "eval")


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
        """An SFT checkpoint on ``demos``: to the plateau of ``cfg.sft_criterion`` (success on
        the seed's validation poses, or a loss on the held-out demonstrations ``val``;
        ``sft_patience`` > 0, at most ``sft_steps`` steps, best weights kept) or exactly
        ``sft_steps`` steps. Reused when ``checkpoints/<name>`` holds a finished one."""
        from habc_learner.core.power import PlateauStopper
        from habc_learner.core.replay import ReplayStore
        from habc_learner.core.sft_convergence import train_to_plateau
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
                info = train_to_plateau(
                    trainer,
                    self.sft_criterion(trainer, val, Path(tcfg.checkpoint_dir)),
                    max_steps=cfg.sft_steps,
                    validate_every=cfg.sft_validate_every,
                    stopper=PlateauStopper(cfg.sft_patience, cfg.sft_min_delta),
                    say=self.say,
                )
                info["criterion"] = cfg.sft_criterion
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
        write_json_atomic(info_path, info)
        return ckpt, info

    # -------------------------------------------------------------------------- learner
    def sft_criterion(self, trainer, val: list, checkpoint_dir: Path) -> Callable[[], float]:
        """The held-out measure of ``cfg.sft_criterion`` (lower is better) for ``trainer``."""
        from habc_learner.core.replay import ReplayStore
        from habc_learner.core.sft_convergence import HeldOutActionError, HeldOutFlowLoss

        kind = self.cfg.sft_criterion
        if kind in ("flow", "action"):
            vstore = ReplayStore(trainer.config.replay_config())
            vstore.add_episodes(val)
            cls = HeldOutFlowLoss if kind == "flow" else HeldOutActionError
            return cls(trainer, vstore, seed=self.seed)
        return _ValidationFailureRate(self, trainer, checkpoint_dir / "validation")

    def trainer_config(self, method, name: str, steps: int):
        from habc_learner.core.critic import CriticConfig
        from habc_learner.core.trainer import TrainerConfig
        from habc_learner.core.windows import WindowConfig
        from habc_policy.core.configuration_flow import FlowPolicyConfig

        proprio_dim, action_dim = self.dims
        return TrainerConfig(
            method=method,
            policy=FlowPolicyConfig(
                action_dim=action_dim, proprio_dim=proprio_dim, **NETWORKS[self.cfg.network]
            ),
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
        from habc_policy.core.checkpoint import load_policy
        from habc_sim.core.rollouts import run_rollout

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
            (self.root / name / "error.json").unlink(missing_ok=True)
            MethodRounds(
                self,
                name,
                method_config(cfg, name),
                lambda k, name=name: ["sft"] + [f"{name}_r{j}" for j in range(1, k)],
                init="policy",
                step=1,
            ).run(range(1, cfg.rounds + 1), sft_ckpt)
        # 3. step 2
        base_rec = self.load_record(cfg.step2_from, cfg.rounds) if cfg.step2_rounds else None
        if base_rec is not None:
            base = cfg.step2_from
            base_lineage = ["sft"] + [f"{base}_r{j}" for j in range(1, cfg.rounds + 1)]
            for name in cfg.step2_methods:
                if name not in cfg.methods:
                    (self.root / name / "error.json").unlink(missing_ok=True)
                MethodRounds(
                    self,
                    name,
                    method_config(cfg, name, ir_from_round=cfg.rounds),
                    lambda k, name=name: (
                        base_lineage + [f"{name}_r{j}" for j in range(cfg.rounds + 1, k)]
                    ),
                    init="full",
                    step=2,
                ).run(
                    range(cfg.rounds + 1, cfg.rounds + cfg.step2_rounds + 1),
                    Path(base_rec["checkpoint"]),
                )
        self.say(
            f"done: {self.counters.rounds_done} rounds run, {self.counters.rounds_skipped} "
            f"reused; {self.counters.rollouts} rollouts, {self.counters.train_steps} steps"
        )
        return self.counters

    def fail(self, method: str, failure: RoundFailure) -> None:
        """Record a method that crashed (its later rounds are skipped, the others run)."""
        self.say(f"{method} FAILED: {failure.error}")
        self.counters.failures += 1
        write_json_atomic(
            self.root / method / "error.json",
            {"error": failure.error, "traceback": failure.traceback},
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
            f" (plateau of the {self.cfg.sft_criterion} criterion: {sft_info['plateau']}, "
            f"{sft_info['steps_run']} steps run)"
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
        write_json_atomic(self.record_path("sft_start", 0), record)
        self.counters.rounds_done += 1
        return ckpt


class _ValidationFailureRate:
    """1 − success of the policy as deployed (saved, loaded, rolled out without takeovers) on
    the seed's SFT validation poses (:func:`sft_val_seed`): SFT's success criterion."""

    name = "validation failure rate (1 - success)"
    windows = None

    def __init__(self, run: SeedRun, trainer, scratch: Path) -> None:
        self.run, self.trainer, self.scratch = run, trainer, scratch
        self.seeds = [sft_val_seed(run.seed, i) for i in range(run.cfg.tune_episodes)]

    def __call__(self) -> float:
        self.trainer.ensure_normalizer()  # step 0: not fitted before the first training step
        ckpt = self.trainer.save_checkpoint(self.scratch)
        try:
            return 1.0 - self.run.evaluate(ckpt, seeds=self.seeds)["success_rate"]
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)


@dataclasses.dataclass
class MethodRounds:
    """One method's online rounds of one step as a :class:`~habc_learner.core.rounds.RoundEngine`:
    the phases (:meth:`collect`, :meth:`learn`, :meth:`evaluate`) and the records
    (:meth:`load`, :meth:`save`, :meth:`fail`: ``<seed>/<method>/round_<k>.json`` in the
    protocol's layout, :data:`~habc_learner.protocol.config.RECORD_VERSION`).

    Round ``k``: rollouts of the previous checkpoint (the newest producer of the lineage
    ``lineage(k)``; none for a method trained on demonstrations only), training to
    ``sft_step + k * round_steps`` (``sft_step``: the SFT start's learner step) from that
    checkpoint (``init="policy"``: its weights; ``"full"``: its whole learner state), the
    analysis, the evaluation.
    """

    seed_run: SeedRun
    name: str
    method: Any
    lineage: Callable[[int], list[str]]
    init: str
    step: int

    def run(self, rounds: Iterable[int], start: Path) -> Path:
        """Every round of ``rounds`` from ``start`` (reusing recorded ones); a failure is
        recorded (``error.json``) and ends this method's rounds. The newest checkpoint."""
        engine = RoundEngine(self.collect, self.learn, self.evaluate, self, on_round=self.said)
        return engine.run(rounds, start).checkpoint(start)

    # -------------------------------------------------------------------------- phases
    def collect(self, k: int, policy: Path) -> Collected:
        from habc_policy.core.checkpoint import load_policy

        run, cfg = self.seed_run, self.seed_run.cfg
        rollout_stats: dict[str, Any] = {}
        producers = self.lineage(k) if needs_rollouts(self.method) else []
        if producers:
            newest = producers[-1]
            folder = run.rollout_folder(newest)
            seeds = [rollout_seed(run.seed, k, i) for i in range(cfg.rollouts)]
            recorded = run.record(folder, seeds, policy=load_policy(policy), source="rollout")
            rollout_stats = _rollout_stats(run.read(folder))
            rollout_stats["producer"] = newest
            # (counted over the episodes recorded by this invocation; a resumed round misses some)
            rollout_stats["declined_unrecoverable"] = sum(
                (r.operator_reason or "").startswith("unrecoverable") for r in recorded
            )
        return Collected({"producers": producers, "rollouts": rollout_stats}, producers)

    def learn(self, k: int, start: Path, collected: Collected) -> Learned:
        from habc_learner.core.trainer import Trainer
        from habc_policy.core import checkpoint as ckpt_io

        run, cfg = self.seed_run, self.seed_run.cfg
        producers: list[str] = collected.data
        target = run.sft_step + k * cfg.round_steps
        tcfg = run.trainer_config(self.method, self.name, cfg.round_steps)
        store = run.store_for(tcfg, producers)
        new_rows = _rows_of_folder(store, run.rollout_folder(producers[-1])) if producers else None
        analysis: dict[str, Any] = {}
        with Trainer.resume(tcfg, store) as trainer:
            if ckpt_io.latest_checkpoint(tcfg.checkpoint_dir) is None:
                if self.init == "policy":
                    trainer.init_policy_from(start)
                else:
                    continue_run(trainer, start)
            # The critic of the previous round on rollouts it has never trained on.
            if new_rows is not None and len(new_rows) and trainer.learner_step > run.sft_step:
                analysis["fresh"] = analyse(
                    trainer, store, new_rows, traces=cfg.trace_episodes, trace_rows=new_rows
                )
            summary = None
            if trainer.learner_step < target:
                n = target - trainer.learner_step
                summary = trainer.run_round(n)
                run.counters.train_steps += n
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
        stats = {
            "store": {} if summary is None else _store_counts(store),
            "train": _train_stats(summary),
            "analysis": analysis,
        }
        return Learned(ckpt, learner_step, stats)

    def evaluate(self, k: int, checkpoint: Path) -> dict[str, Any]:
        return self.seed_run.evaluate(checkpoint)

    # -------------------------------------------------------------------------- records
    def load(self, k: int) -> RoundRecord | None:
        rec = self.seed_run.load_record(self.name, k)
        if rec is None:
            return None
        wall = rec.get("wall_s", {})
        return RoundRecord(
            round=k,
            checkpoint=Path(rec["checkpoint"]),
            learner_step=int(rec["learner_step"]),
            collect={"producers": rec.get("producers", []), "rollouts": rec.get("rollouts", {})},
            learn={key: rec.get(key, {}) for key in ("store", "train", "analysis")},
            evaluate=rec["eval"],
            wall_s={p: wall.get(w, 0.0) for p, w in zip(PHASES, WALL_KEYS)},
        )

    def save(self, record: RoundRecord) -> None:
        run, cfg = self.seed_run, self.seed_run.cfg
        write_json_atomic(
            run.record_path(self.name, record.round),
            {
                "version": RECORD_VERSION,
                "task": cfg.task,
                "seed": run.seed,
                "method": self.name,
                "round": record.round,
                "step": self.step,
                "budget": cfg.budget(),
                "method_config": dataclasses.asdict(self.method),
                "checkpoint": str(record.checkpoint),
                "learner_step": record.learner_step,
                "producers": record.collect["producers"],
                "rollouts": record.collect["rollouts"],
                "store": record.learn["store"],
                "train": record.learn["train"],
                "analysis": record.learn["analysis"],
                "eval": record.evaluate,
                "wall_s": {w: record.wall_s[p] for p, w in zip(PHASES, WALL_KEYS)},
            },
        )

    def fail(self, failure: RoundFailure) -> None:
        self.seed_run.fail(self.name, failure)

    def said(self, record: RoundRecord, reused: bool) -> None:
        """Count the round; one progress line for a round run now."""
        run = self.seed_run
        if reused:
            run.counters.rounds_skipped += 1
            return
        run.counters.rounds_done += 1
        rollout_stats, ev = record.collect["rollouts"], record.evaluate
        wall = record.wall_s
        ro = (
            f"rollouts {rollout_stats['successes']}/{rollout_stats['episodes']} ok, "
            f"{rollout_stats['takeovers']} takeovers; "
            if rollout_stats
            else ""
        )
        run.say(
            f"{self.name} round {record.round}: {ro}success {100 * ev['success_rate']:.0f}% "
            f"(len {ev['mean_success_length']:.0f}) at step {record.learner_step} "
            f"[{wall['collect']:.0f}+{wall['learn']:.0f}+{wall['evaluate']:.0f}s]"
        )
        for note in record.learn["train"].get("notes", []):
            run.say(f"NOTE {note}")


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


# ------------------------------------------------------------------------------ entry points
def _run_seed(cfg: ProtocolConfig, seed: int) -> Counters:
    logging.getLogger("arx_x5_driver").setLevel(logging.ERROR)
    return SeedRun(cfg, seed).run()


#: What the band tuner's choice depends on (the online budget does not enter it).
TUNING_FIELDS = ("task", *SFT_FIELDS, "batch_size")


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

    result = tune_monotone_knob(
        list(cfg.demo_candidates), estimate, tuple(cfg.band), refine_integers=True
    )
    rec = {
        "key": key,
        "chosen_demos": int(result.value),
        "in_band": result.in_band,
        "probes": [{**p, **details.get(p["value"], {})} for p in result.to_dict()["probes"]],
        "wall_s": time.monotonic() - t0,
        "seed": cfg.seeds[0],
    }
    write_json_atomic(path, rec)
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
        from habc_learner.core.workers import worker_pool

        with worker_pool(min(cfg.jobs, len(cfg.seeds))) as pool:
            for c in pool.map(_run_seed, [cfg] * len(cfg.seeds), cfg.seeds):
                total.add(c)
    else:
        for seed in cfg.seeds:
            total.add(_run_seed(cfg, seed))
    report = write_report(cfg, time.monotonic() - t0, total)
    return total, report

"""The main job on the embedded default robot (simulation), end to end, in one process.

    habc-main --out runs/main            # what `bash scripts/main.sh` runs

1. Scripted demonstrations on the simulated bimanual robot → episode bags (rosbag2/MCAP).
2. The bags → episodes (the learner's bag reader) → an SFT checkpoint (flow-matching actor).
3. Evaluation of the SFT policy on held-out object poses.
4. K online rounds: rollouts of the current policy with the scripted operator taking over in
   part of the episodes heading for failure → episode bags → a HABC training round over
   demonstrations + rollouts → a new checkpoint → evaluation.
5. ``summary.json`` and ``summary.png`` (success rate and successful-episode length per stage).

Every artefact lands under ``--out``; a crashed run started again with the same arguments
reuses the bags already written, resumes training from the last checkpoint and reuses every
finished online round (``<out>/rounds/round_<k>.json``). The rounds are a
:class:`~habc_learner.core.rounds.RoundEngine` over :class:`OnlineRounds`' phases.

This runs the learning loop in-process (:mod:`habc_sim.core.rollouts`); the ROS node graph
(driver, policy server, arbiter, recorder, learner node) runs the same loop over DDS.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from habc_common.bag_format import read_custom_data
from habc_learner.core.bag_reader import read_episodes
from habc_learner.core.replay import ReplayStore
from habc_learner.core.rounds import Collected, JsonRoundRecords, Learned, RoundEngine, RoundRecord
from habc_learner.core.trainer import Trainer, TrainerConfig
from habc_sim.core.rollouts import RolloutResult, run_rollout

LOG = logging.getLogger("habc.main")
EVAL_SEED_BASE = 1_000_000  # evaluation object poses never overlap training seeds


@dataclass(frozen=True)
class StageResult:
    stage: str
    checkpoint_id: str
    learner_step: int
    success_rate: float
    mean_success_length: float
    episodes: int

    @property
    def successes(self) -> int:
        return round(self.success_rate * self.episodes)

    def rate_text(self) -> str:
        """``"62 % [48, 74]"``: success with its 95 % Wilson interval."""
        from habc_learner.protocol import fmt_rate

        return fmt_rate(self.successes, self.episodes)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="habc-main", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/main"), help="output folder")
    p.add_argument("--backend", default="sim", choices=("sim", "metaworld"))
    p.add_argument("--task", default="transfer_cube", help="sim: transfer_cube | insertion")
    p.add_argument("--demos", type=int, default=20, help="scripted demonstrations for SFT")
    p.add_argument("--demo-noise", type=float, default=0.0, help="expert waypoint noise σ (m)")
    p.add_argument("--sft-steps", type=int, default=1500, help="SFT gradient steps")
    p.add_argument("--rounds", type=int, default=1, help="online HABC rounds")
    p.add_argument("--rollouts", type=int, default=20, help="rollout episodes per round")
    p.add_argument("--round-steps", type=int, default=600, help="gradient steps per round")
    p.add_argument("--method", default="habc", help="learner method of the online rounds")
    p.add_argument(
        "--eval-episodes",
        type=int,
        default=50,
        help="held-out evaluation episodes per stage (the 95 %% Wilson interval is printed)",
    )
    p.add_argument(
        "--takeover-fraction",
        type=float,
        default=0.5,
        help="share of failing rollouts the scripted operator takes over",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) // 2),
        help="torch CPU threads (default: half the cores; more threads than free "
        "cores slows training several-fold)",
    )
    args = p.parse_args(argv)
    for name in ("demos", "eval_episodes", "sft_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.rounds < 0 or args.rollouts < 1 or args.round_steps < 1:
        p.error("--rounds must be >= 0, --rollouts and --round-steps >= 1")
    if not 0.0 <= args.takeover_fraction <= 1.0:
        p.error(f"--takeover-fraction must be in [0, 1], got {args.takeover_fraction}")
    return args


def _progress(iterable, desc: str, total: int):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="ep", dynamic_ncols=True, leave=False)


def _bag_done(path: Path) -> bool:
    try:
        return read_custom_data(path).get("habc.complete") == "true"
    except (FileNotFoundError, ValueError):
        return False


def _clear_partial(path: Path) -> None:
    """Remove a bag a crashed run left half-written (it is re-recorded)."""
    import shutil

    if path.exists() and not _bag_done(path):
        shutil.rmtree(path)


def record_episodes(
    args: argparse.Namespace,
    folder: Path,
    seeds: list[int],
    *,
    policy=None,
    takeover_fraction: float = 0.0,
    source: str = "rollout",
    desc: str,
    expert_noise: float = 0.0,
    progress: bool = True,
    max_steps: int | None = None,
) -> list[RolloutResult | None]:
    """Run and record one episode per seed into ``folder`` (skipping bags already complete).

    ``expert_noise`` is the scripted expert's quality knob (waypoint offset σ in m on the
    simulated robot, action noise σ on Meta-World): demonstrations of graded quality.
    ``max_steps``: the episodes' step limit (``None``: the backend's own).
    """
    from arx_x5_driver.core.factory import make_backend
    from habc_sim.core.expert import make_expert
    from habc_sim.core.operator import OperatorConfig, ScriptedOperator

    folder.mkdir(parents=True, exist_ok=True)
    arms = ("left", "right") if args.backend == "sim" else ("arm",)
    operator = ScriptedOperator(
        make_expert(args.backend, args.task, noise_std=expert_noise),
        OperatorConfig(intervention_rate=takeover_fraction),
        arms,
    )
    results: list[RolloutResult | None] = []
    limits = {} if max_steps is None else {"max_steps": max_steps}
    with make_backend(args.backend, task=args.task, **limits, **camera_fields(args)) as robot:
        for seed in _progress(seeds, desc, len(seeds)) if progress else seeds:
            path = folder / f"{source}-{seed:07d}"
            if _bag_done(path):
                results.append(None)
                continue
            _clear_partial(path)
            results.append(
                run_rollout(
                    robot,
                    seed=seed,
                    policy=policy,
                    operator=operator,
                    operator_from_start=policy is None,
                    episode_id=path.name,
                    task=args.task,
                    prompt=robot.prompt,
                    bag_path=path,
                    source=source,
                    sample_seed=seed,
                )
            )
    return results


def camera_fields(args: argparse.Namespace, cameras: tuple[str, ...] | None = None) -> dict:
    """Backend fields rendering ``cameras`` (default ``args.cameras``) at ``args.camera_size``;
    ``{}`` for state-only runs."""
    cameras = tuple(getattr(args, "cameras", ()) or ()) if cameras is None else cameras
    if not cameras:
        return {}
    return {"cameras": cameras, "image_size": tuple(getattr(args, "camera_size", (224, 224)))}


def evaluate(args: argparse.Namespace, checkpoint: Path, stage: str) -> StageResult:
    """Success rate and mean successful length of a checkpoint on held-out object poses.

    An image policy sees the cameras it was trained on and its joints only (no privileged
    state); a state-only policy gets the simulator's object state as before."""
    from arx_x5_driver.core.factory import make_backend
    from habc_policy.core.checkpoint import load_policy

    policy = load_policy(checkpoint)
    successes: list[int] = []
    cams = tuple(policy.config.camera_names)
    with make_backend(args.backend, task=args.task, **camera_fields(args, cams)) as robot:
        seeds = [EVAL_SEED_BASE + i for i in range(args.eval_episodes)]
        for seed in _progress(seeds, f"eval {stage}", len(seeds)):
            r = run_rollout(
                robot,
                seed=seed,
                policy=policy,
                episode_id=f"eval-{seed}",
                task=args.task,
                prompt=robot.prompt,
                sample_seed=seed,
                use_env_state=not cams,
            )
            if r.success:
                successes.append(r.steps)
    rate = len(successes) / args.eval_episodes
    length = float(np.mean(successes)) if successes else float("nan")
    return StageResult(
        stage, policy.checkpoint_id, policy.learner_step, rate, length, args.eval_episodes
    )


def _trainer(
    args: argparse.Namespace,
    method: str,
    store: ReplayStore,
    proprio_dim: int,
    action_dim: int,
    name: str,
    steps: int,
    policy: object | None = None,
) -> Trainer:
    from habc_policy.core.configuration_flow import FlowPolicyConfig

    cfg = TrainerConfig(
        method=method,
        policy=policy or FlowPolicyConfig(action_dim=action_dim, proprio_dim=proprio_dim),
        batch_size=args.batch_size,
        steps_per_round=steps,
        seed=args.seed,
        checkpoint_dir=str(args.out / "checkpoints" / name),
        log_dir=str(args.out / "tensorboard" / name),
    )
    return Trainer.resume(cfg, store)


def round_key(args: argparse.Namespace) -> dict:
    """What an online round's result depends on: a round record made under other values is
    not reused (the round runs again, resuming its checkpoints)."""
    names = ("backend", "task", "seed", "demos", "demo_noise", "sft_steps", "method")
    names += ("rollouts", "round_steps", "takeover_fraction", "eval_episodes", "batch_size")
    return {name: getattr(args, name) for name in names}


class OnlineRounds:
    """The main job's online rounds as the phases of a
    :class:`~habc_learner.core.rounds.RoundEngine`, one record per round in ``<out>/rounds``.

    Round k: ``--rollouts`` rollouts of the previous checkpoint with the scripted operator →
    ``<out>/bags/round_<k>``; ``--method`` trained on the successful demonstrations and every
    round's bags so far, to ``SFT step + k · --round-steps`` (one checkpoint folder,
    ``<out>/checkpoints/<method>``, resumed); evaluation on the held-out poses.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        demos: list,
        dims: tuple[int, int],
        sft_ckpt: Path,
        sft: StageResult,
        say,
    ) -> None:
        self.args = args
        self.demos = demos
        self.dims = dims
        self.sft_ckpt = sft_ckpt
        self.sft_step = sft.learner_step
        self.say = say
        self._episodes: dict[Path, list] = {}

    def folder(self, k: int) -> Path:
        return self.args.out / "bags" / f"round_{k:02d}"

    def read(self, k: int) -> list:
        """Round k's episodes through the bag reader (read once per process)."""
        folder = self.folder(k)
        if folder not in self._episodes:
            self._episodes[folder] = read_episodes(folder)[0]
        return self._episodes[folder]

    def collect(self, k: int, policy: Path) -> Collected:
        from habc_policy.core.checkpoint import load_policy

        args = self.args
        seeds = [args.seed * 10_000 + 1000 * k + i for i in range(args.rollouts)]
        results = record_episodes(
            args,
            self.folder(k),
            seeds,
            policy=load_policy(policy),
            takeover_fraction=args.takeover_fraction,
            desc=f"round {k} rollouts",
        )
        done = [r for r in results if r is not None]
        if done:
            self.say(
                f"round {k}: {sum(r.success for r in done)}/{len(done)} rollouts succeeded, "
                f"{sum(r.takeover_step is not None for r in done)} with a takeover"
            )
        episodes, report = read_episodes(self.folder(k))
        self._episodes[self.folder(k)] = episodes
        self.say(
            f"round {k}: {report.format().splitlines()[0]}; {args.method} for "
            f"{args.round_steps} steps"
        )
        return Collected({"bags": str(self.folder(k)), "episodes": len(episodes)})

    def learn(self, k: int, start: Path, collected: Collected) -> Learned:
        from habc_policy.core.checkpoint import latest_checkpoint

        args = self.args
        store = ReplayStore(TrainerConfig(method=args.method).replay_config())
        store.add_episodes(self.demos)  # a failed demonstration is no training data
        for j in range(1, k + 1):
            store.add_episodes(self.read(j))
        method_dir = args.out / "checkpoints" / args.method
        fresh = not method_dir.exists() or latest_checkpoint(method_dir) is None
        steps = 0
        with _trainer(
            args, args.method, store, *self.dims, args.method, args.round_steps
        ) as trainer:
            if fresh:
                trainer.init_policy_from(self.sft_ckpt)
            target = self.sft_step + args.round_steps * k
            if trainer.learner_step < target:
                steps = target - trainer.learner_step
                self.say(trainer.run_round(steps).line())
            checkpoint = trainer.save_checkpoint()
            learner_step = trainer.learner_step
        return Learned(checkpoint, learner_step, {"steps": steps, "windows": len(store)})

    def evaluate(self, k: int, checkpoint: Path) -> dict:
        return asdict(evaluate(self.args, checkpoint, f"{self.args.method} r{k}"))

    def said(self, record: RoundRecord, reused: bool) -> None:
        stage = StageResult(**record.evaluate)
        if reused:
            self.say(f"round {record.round}: reused its record (success {stage.rate_text()})")
        else:
            self.say(f"round {record.round}: success {stage.rate_text()} (95 % interval)")


def plot(stages: list[StageResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.stage for s in stages]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    from habc_learner.protocol import wilson_interval

    ci = np.array([wilson_interval(s.successes, s.episodes) for s in stages]).T * 100
    rates = np.array([100 * s.success_rate for s in stages])
    ax1.bar(names, rates, color="#3a7", yerr=[rates - ci[0], ci[1] - rates], capsize=4)
    ax1.set_ylabel("success rate (%)")
    ax1.set_ylim(0, 100)
    ax1.set_title(f"success over {stages[0].episodes} held-out episodes (95 % Wilson)")
    for i, s in enumerate(stages):
        ax1.text(i, 100 * s.success_rate + 2, f"{100 * s.success_rate:.0f}%", ha="center")
    ax2.bar(names, [s.mean_success_length for s in stages], color="#37a")
    ax2.set_ylabel("steps")
    ax2.set_title("mean length of successful episodes")
    for i, s in enumerate(stages):
        if np.isfinite(s.mean_success_length):
            ax2.text(i, s.mean_success_length * 1.01, f"{s.mean_success_length:.0f}", ha="center")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Policy actions slightly past a joint limit are clamped by the backend every step; the
    # per-step warning would drown the progress output.
    logging.getLogger("arx_x5_driver").setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    say = lambda msg: print(f"[habc-main {time.monotonic() - t0:6.1f}s] {msg}", flush=True)  # noqa: E731

    say(f"{args.demos} scripted demonstrations on {args.backend}:{args.task} -> {out}/bags/demos")
    demo_seeds = [args.seed * 10_000 + i for i in range(args.demos)]
    record_episodes(
        args,
        out / "bags" / "demos",
        demo_seeds,
        source="demo",
        desc="demonstrations",
        expert_noise=args.demo_noise,
    )
    episodes, report = read_episodes(out / "bags" / "demos")
    say(report.format().splitlines()[0])
    demos_ok = [e for e in episodes if e.outcome.value == "success"]
    if not demos_ok:
        say("no successful demonstration: nothing to learn from")
        return 1
    store = ReplayStore(TrainerConfig(method="sft").replay_config())
    store.add_episodes(demos_ok)
    proprio_dim, action_dim = demos_ok[0].proprio_dim, demos_ok[0].action_dim

    say(f"SFT: {args.sft_steps} steps on {len(demos_ok)} successful demonstrations")
    with _trainer(args, "sft", store, proprio_dim, action_dim, "sft", args.sft_steps) as sft:
        if sft.learner_step < args.sft_steps:
            summary = sft.run_round(args.sft_steps - sft.learner_step)
            say(summary.line())
        sft_ckpt = sft.save_checkpoint()
    stages = [evaluate(args, sft_ckpt, "SFT")]
    say(
        f"SFT: success {stages[-1].rate_text()} (95 % interval) "
        f"({stages[-1].checkpoint_id}, step {stages[-1].learner_step})"
    )

    rounds = OnlineRounds(args, demos_ok, (proprio_dim, action_dim), sft_ckpt, stages[0], say)
    outcome = RoundEngine(
        rounds.collect,
        rounds.learn,
        rounds.evaluate,
        JsonRoundRecords(out / "rounds", round_key(args)),
        on_round=rounds.said,
    ).run(range(1, args.rounds + 1), sft_ckpt)
    if outcome.failure is not None:  # recorded in <out>/rounds/error.json; the rounds before
        raise outcome.failure.exception  # it keep their records and are reused next time
    stages += [StageResult(**r.evaluate) for r in outcome.records]

    summary_path = out / "summary.json"
    summary_path.write_text(
        json.dumps([{**s.__dict__, "successes": s.successes} for s in stages], indent=2)
    )
    plot(stages, out / "summary.png")
    say(f"results ({args.eval_episodes} held-out object poses, 95 % Wilson interval):")
    for s in stages:
        print(
            f"  {s.stage:<12} success {s.rate_text():<16}  "
            f"mean successful length {s.mean_success_length:6.1f}  checkpoint {s.checkpoint_id}"
        )
    say(f"wrote {summary_path}, {out / 'summary.png'}, TensorBoard logs in {out / 'tensorboard'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

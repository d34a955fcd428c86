"""The main job through the real node graph: the sim bringup, end to end.

    habc-bringup-job --out runs/bringup          # what `bash scripts/main.sh` runs

1. Scripted demonstrations on the simulated robot → episode bags (``<out>/bags/demos``).
2. The bags → an SFT checkpoint (``<out>/checkpoints/sft``).
3. The bringup graph of ``config/graph.yaml`` starts under ``habc-launch``, as separate
   processes talking over DDS: driver (sim), policy server (serving the SFT checkpoint),
   intervention arbiter, scripted operator (acting only through ``/joy`` and the teleop topic),
   episode recorder, learner (starting from the SFT checkpoint).
4. K online rounds: each round runs E episodes through the graph — the driver resets the
   scene, the recorder records, the operator takes over in part of the episodes heading for
   failure and marks every outcome — then the learner, triggered by the E new bags, runs a
   HABC round and announces the checkpoint, and the policy server hot-swaps it.
5. Every round's checkpoint is also evaluated in-process on held-out object poses without
   takeovers. ``<out>/report.md`` and ``<out>/report.png`` (success per round; p_v and g_t
   along one recorded episode) stay behind with the bags, checkpoints and logs.

Parameters for the graph are written to ``<out>/config`` (a copy of ``config/`` with this
job's values), so the graph itself is the one users launch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from habc_learner.bringup import default_config_dir
from habc_learner.core.bag_reader import read_episode, read_episodes
from habc_learner.core.episode import AUTHORITY_NAMES, HANDBACK, HUMAN, POLICY
from habc_learner.core.labeling import segment_controllers
from habc_learner.core.replay import ReplayStore
from habc_learner.core.rounds import (
    Collected,
    JsonRoundRecords,
    Learned,
    RoundEngine,
    RoundRecord,
)
from habc_learner.core.trainer import TrainerConfig
from habc_learner.protocol import fmt_rate


@dataclass(frozen=True)
class RoundResult:
    round: int
    checkpoint_id: str  # the checkpoint that drove this round's episodes
    learner_step: int
    episodes: int
    success: int  # episodes that ended in success
    autonomous_success: int  # ... without any takeover
    takeovers: int
    aborted: int
    eval_success_rate: float  # this checkpoint, in-process, held-out poses, no takeover
    eval_mean_length: float


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="habc-bringup-job", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bringup"))
    p.add_argument("--task", default="transfer_cube", choices=("transfer_cube", "insertion"))
    p.add_argument("--demos", type=int, default=20)
    p.add_argument("--demo-noise", type=float, default=0.0, help="expert waypoint noise σ (m)")
    p.add_argument("--sft-steps", type=int, default=1500)
    p.add_argument("--rounds", type=int, default=3, help="online rounds K")
    p.add_argument("--episodes", type=int, default=8, help="episodes per round E")
    p.add_argument("--round-steps", type=int, default=400, help="learner steps per round")
    p.add_argument("--method", default="habc")
    p.add_argument("--intervention-rate", type=float, default=0.5)
    p.add_argument(
        "--eval-episodes", type=int, default=50, help="held-out poses per checkpoint (in-process)"
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    p.add_argument(
        "--policy",
        default="state",
        choices=("state", "vision"),
        help="state: joints + the simulator's privileged object state; vision: cameras + "
        "joints, /habc/env_state neither published nor read in the graph",
    )
    p.add_argument(
        "--cameras",
        default="top,left_wrist,right_wrist",
        help="cameras of --policy vision (comma-separated)",
    )
    p.add_argument("--image-size", type=int, default=96, help="px the vision policy sees")
    p.add_argument(
        "--camera-size",
        type=int,
        nargs=2,
        default=(224, 224),
        metavar=("H", "W"),
        help="px the simulated cameras render and publish",
    )
    p.add_argument(
        "--round-timeout",
        type=float,
        default=900.0,
        help="seconds to wait for the learner's checkpoint after a round",
    )
    args = p.parse_args(argv)
    if min(args.demos, args.sft_steps, args.rounds, args.episodes, args.round_steps) < 1:
        p.error("--demos, --sft-steps, --rounds, --episodes, --round-steps must be >= 1")
    args.backend = "sim"  # the graph's scripted operator and sim driver
    cams = tuple(c.strip() for c in args.cameras.split(",") if c.strip())
    args.cameras = cams if args.policy == "vision" else ()
    if args.policy == "vision" and not cams:
        p.error("--policy vision needs --cameras")
    return args


def write_job_config(args: argparse.Namespace) -> Path:
    """``<out>/config``: the repository's parameter files with this job's values."""
    src, dst = default_config_dir(), args.out / "config"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)

    def edit(name: str, node: str, values: dict) -> None:
        path = dst / name
        doc = yaml.safe_load(path.read_text())
        doc[node]["ros__parameters"].update(values)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))

    edit(
        "learner.yaml",
        "learner",
        {
            "method": args.method,
            "steps_per_round": args.round_steps,
            "min_new_episodes": args.episodes,
            "batch_size": args.batch_size,
            "torch_threads": 1,
            "poll_period_s": 1.0,
            "count_demos": False,
        },
    )
    edit(
        "scripted_operator.yaml",
        "scripted_operator",
        {
            "intervention_rate": args.intervention_rate,
            "seed": args.seed,
            "mark_outcome": True,
        },
    )
    if args.cameras:  # policy:=vision sets cameras and drops env_state; the size is ours
        edit(
            "driver.yaml",
            "arx_x5_driver",
            {"seed": args.seed * 10_000 + 5000, "image_size": list(args.camera_size)},
        )
    else:
        edit("driver.yaml", "arx_x5_driver", {"seed": args.seed * 10_000 + 5000, "cameras": ""})
        edit("recorder.yaml", "episode_recorder", {"cameras": ""})
    edit("policy_server.yaml", "policy_server", {"torch_threads": 1})
    return dst


class Graph:
    """The bringup under ``habc-launch``, its output in ``<out>/launch.log``."""

    def __init__(self, args: argparse.Namespace, config_dir: Path, sft: Path) -> None:
        self.log = (args.out / "launch.log").open("a")
        cmd = [
            sys.executable,
            "-m",
            "habc_learner.launcher",
            "--config-dir",
            str(config_dir),
            f"run_dir:={args.out.resolve()}",
            f"task:={args.task}",
            "learner:=true",
            "operator:=scripted",
            f"policy_checkpoint:={sft.resolve()}",
            f"init_checkpoint:={sft.resolve()}",
            f"policy:={args.policy}",
        ]
        if args.cameras:
            cmd += [f"cameras:={','.join(args.cameras)}", f"image_size:={args.image_size}"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"the node graph stopped (code {self.proc.returncode}); see {self.log.name}"
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _eval_text(r: RoundResult, n: int) -> str:
    return fmt_rate(round(r.eval_success_rate * n), n)


def _took_over(bag: Path) -> bool:
    try:
        return bool((read_episode(bag).authority == HUMAN).any())
    except Exception:  # an aborted bag is skipped by the reader
        return False


def _checkpoint_for(root: Path, checkpoint_id: str) -> Path | None:
    for manifest in root.rglob("manifest.json"):
        if json.loads(manifest.read_text()).get("checkpoint_id") == checkpoint_id:
            return manifest.parent
    return None


def plot_report(
    args: argparse.Namespace, rounds: list[RoundResult], trace: dict | None, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    x = np.arange(1, len(rounds) + 1)
    ax.plot(
        x, [100 * r.eval_success_rate for r in rounds], "o-", label="held-out eval, no takeover"
    )
    ax.plot(
        x,
        [100 * r.autonomous_success / r.episodes for r in rounds],
        "s--",
        label="graph episodes, no takeover",
    )
    ax.plot(
        x,
        [100 * r.success / r.episodes for r in rounds],
        "^:",
        label="graph episodes, incl. operator",
    )
    ax.set_xticks(x, [f"r{r.round}\n{r.checkpoint_id[:6]}" for r in rounds])
    ax.set_ylim(0, 105)
    ax.set_ylabel("success (%)")
    ax.set_title("success per round (checkpoint driving it)")
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    if trace:
        t = np.asarray(trace["anchor"])
        ax.plot(t, trace["p_v"], color="k", label="p_v (viability)")
        ax.plot(t, trace["g"], color="tab:orange", lw=0.8, label="g_t (gate)")
        ax.set_ylim(0, 2)
        from matplotlib.patches import Patch

        seen = []
        for name, a, b in trace.get("segments", []):
            ax.axvspan(a, b, ymin=0.0, ymax=0.06, color=AUTHORITY_COLORS.get(name, "k"), lw=0)
            if name not in seen:
                seen.append(name)
        handles, labels = ax.get_legend_handles_labels()
        handles += [Patch(color=AUTHORITY_COLORS.get(n, "k")) for n in seen]
        labels += [f"authority: {n}" for n in seen]
        ax.set_xlabel("control step")
        ax.set_title(f"critic along {trace['episode_id']} ({trace['outcome']})")
        ax.legend(handles, labels, fontsize=7, loc="upper left")
    else:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def critic_trace(args: argparse.Namespace, proprio_dim: int, action_dim: int) -> dict | None:
    """p_v and g_t along one recorded rollout, under the learner's latest checkpoint."""
    from habc_learner.main_job import _trainer
    from habc_learner.protocol import critic_outputs
    from habc_policy.core.checkpoint import latest_checkpoint

    ckpt_root = args.out / "learner" / "checkpoints"
    if latest_checkpoint(ckpt_root) is None:
        return None
    policy = vision_policy_config(args, proprio_dim, action_dim) if args.cameras else None
    read = episode_reader(args)
    demos, _ = read(args.out / "bags" / "demos")
    rollouts, _ = read(args.out / "bags" / "rollouts")
    if not rollouts:
        return None
    store = ReplayStore(
        TrainerConfig(method=args.method, **({"policy": policy} if policy else {})).replay_config()
    )
    store.add_episodes([e for e in demos if e.outcome.value == "success"] + rollouts)
    pick = pick_trace_episode(rollouts)
    index = next(i for i, e in enumerate(store.episodes) if e.episode_id == pick.episode_id)
    rows = np.flatnonzero(store.table.episode_index == index)
    trainer = _trainer(args, args.method, store, proprio_dim, action_dim, "report", 1, policy)
    trainer.load_checkpoint(latest_checkpoint(ckpt_root))
    out = critic_outputs(trainer, store, rows)
    trainer.close()
    if "p_v" not in out:
        return None
    human = np.flatnonzero((pick.authority == HUMAN).any(axis=1))
    return {
        "episode_id": pick.episode_id,
        "outcome": pick.outcome.value,
        "anchor": out["anchor"].tolist(),
        "p_v": out["p_v"].tolist(),
        "g": out["g"].tolist(),
        "takeover": int(human[0]) if human.size else None,
        "segments": [
            (AUTHORITY_NAMES[seg.controller], seg.start, seg.stop)
            for seg in segment_controllers(pick.authority)
        ],
    }


def pick_trace_episode(rollouts: list) -> Any:
    """The episode to draw: one whose policy took over again after a hand-back (policy,
    takeover, ramp, suffix), else one with a takeover, else the last one."""

    def kinds(e: Any) -> list[int]:
        return [seg.controller for seg in segment_controllers(e.authority)]

    for e in rollouts:
        k = kinds(e)
        if HANDBACK in k and k.index(HANDBACK) < len(k) - 1 and k[-1] == POLICY:
            return e
    return next((e for e in rollouts if (e.authority == HUMAN).any()), rollouts[-1])


#: Colour of each authority tag in the timelines.
AUTHORITY_COLORS = {
    "policy": "tab:blue",
    "human": "tab:red",
    "handback": "tab:purple",
    "none": "0.6",
}


def segments_text(segments: list) -> str:
    """``policy 0–119, human 120–184, …`` (inclusive step ranges)."""
    return ", ".join(f"{name} {a}–{b - 1}" for name, a, b in segments)


def vision_policy_config(args: argparse.Namespace, proprio_dim: int, action_dim: int):
    """The image policy of ``--policy vision``: the learner's defaults for a new one."""
    from habc_learner.learn import LearnerJobConfig
    from habc_policy.core.configuration_flow import FlowPolicyConfig

    job = LearnerJobConfig(bag_dirs=(args.out,), out_dir=args.out)  # its augmentation defaults
    return FlowPolicyConfig(
        action_dim=action_dim,
        proprio_dim=proprio_dim,
        camera_names=args.cameras,
        image_size=(args.image_size, args.image_size),
        image_augment=job.image_augment,
        augment_pad=job.augment_pad,
    )


def episode_reader(args: argparse.Namespace):
    """``folder -> (episodes, report)``: state runs read the privileged state; vision runs read
    joints + cameras through the learner's decode-once image cache (``<out>/image_cache``)."""
    if not args.cameras:
        return read_episodes
    from habc_learner.core.image_cache import ImageCache

    cache = ImageCache(args.out / "image_cache")
    size = (args.image_size, args.image_size)

    def read(folder: Path):
        return read_episodes(
            folder, use_env_state=False, cameras=args.cameras, image_cache=cache, image_size=size
        )

    return read


class GraphRounds:
    """The bringup job's online rounds as the phases of a
    :class:`~habc_learner.core.rounds.RoundEngine`: the node graph collects (``--episodes``
    episodes of the checkpoint the policy server serves, the scripted operator taking over),
    the learner node learns (the job waits for the checkpoint it announces and the server
    hot-swaps), and the new checkpoint is evaluated in-process on held-out poses."""

    def __init__(self, args: argparse.Namespace, graph: Any, runner: Any, say: Any) -> None:
        self.args = args
        self.graph = graph
        self.runner = runner
        self.say = say
        self.serving = runner.serving  # the checkpoint id driving the current round

    def collect(self, k: int, policy: Path) -> Collected:
        args = self.args
        outcomes = []
        for i in range(args.episodes):
            self.graph.check()
            o = self.runner.run_episode(args.task)
            took = _took_over(args.out / "bags" / "rollouts" / o.episode_id)
            outcomes.append((o, took))
            self.say(
                f"round {k} episode {i + 1}/{args.episodes}: {o.outcome}"
                f"{' after a takeover' if took else ''} ({o.seconds:.1f} s)"
            )
        return Collected(
            {
                "checkpoint_id": self.serving,
                "episodes": len(outcomes),
                "success": sum(o.outcome == "success" for o, _ in outcomes),
                "autonomous_success": sum(o.outcome == "success" and not t for o, t in outcomes),
                "takeovers": sum(t for _, t in outcomes),
                "aborted": sum(o.outcome == "aborted" for o, _ in outcomes),
            }
        )

    def learn(self, k: int, start: Path, collected: Collected) -> Learned:
        from habc_policy.core.checkpoint import load_policy

        self.say(
            f"round {k}: waiting for the learner's checkpoint (round of "
            f"{self.args.round_steps} steps)"
        )
        new = self.runner.wait_serving(self.serving, timeout_s=self.args.round_timeout)
        self.serving = new
        ckpt = _checkpoint_for(self.args.out / "learner", new)
        if ckpt is None:
            return Learned(Path(), -1, {"serving": new})
        return Learned(ckpt, load_policy(ckpt).learner_step, {"serving": new})

    def evaluate(self, k: int, checkpoint: Path) -> dict[str, Any]:
        from habc_learner.main_job import evaluate

        if not checkpoint.name:  # the served checkpoint is not on this machine
            return {"success_rate": float("nan"), "mean_success_length": float("nan")}
        stage = f"r{k + 1}" if k < self.args.rounds else "final"
        return asdict(evaluate(self.args, checkpoint, stage))

    def said(self, record: RoundRecord, reused: bool) -> None:
        c = record.collect
        rate = record.evaluate["success_rate"]
        n = self.args.eval_episodes
        self.say(
            f"round {record.round} ({c['checkpoint_id']}): {c['success']}/{c['episodes']} "
            f"successes, {c['autonomous_success']} without takeover, {c['takeovers']} "
            f"takeovers; now serving {record.learn['serving']} (step {record.learner_step}), "
            f"held-out eval {fmt_rate(round(rate * n), n) if rate == rate else 'n/a'}"
        )


class GraphRoundRecords(JsonRoundRecords):
    """One record per round in ``<out>/rounds``, never reused: a round of the graph cannot be
    resumed from its record (the learner node and the policy server keep their own state)."""

    def load(self, round_index: int) -> RoundRecord | None:
        return None


def round_results(records: list[RoundRecord], sft_eval: Any) -> list[RoundResult]:
    """The report's rows: round k with the evaluation of the checkpoint that drove it (the
    SFT one for round 1, round k−1's for the others), then the final checkpoint's row."""
    rows = []
    driver_eval, driver_step = asdict(sft_eval), sft_eval.learner_step
    for rec in records:
        c = rec.collect
        rows.append(
            RoundResult(
                round=rec.round,
                checkpoint_id=c["checkpoint_id"],
                learner_step=driver_step,
                episodes=c["episodes"],
                success=c["success"],
                autonomous_success=c["autonomous_success"],
                takeovers=c["takeovers"],
                aborted=c["aborted"],
                eval_success_rate=driver_eval["success_rate"],
                eval_mean_length=driver_eval["mean_success_length"],
            )
        )
        driver_eval, driver_step = rec.evaluate, rec.learner_step
    if records and records[-1].checkpoint.name:
        last = records[-1]
        rows.append(
            RoundResult(
                last.round + 1,
                last.learn["serving"],
                last.learner_step,
                0,
                0,
                0,
                0,
                0,
                last.evaluate["success_rate"],
                last.evaluate["mean_success_length"],
            )
        )
    return rows


def demos_and_sft(args: argparse.Namespace, say: Any) -> Path | None:
    """Steps 1-2: ``args.demos`` scripted demonstrations into ``<out>/bags/demos`` and an SFT
    checkpoint of ``args.sft_steps`` steps on the successful ones (``None``: none succeeded).
    Bags and checkpoints already there are reused."""
    from habc_learner.main_job import _trainer, record_episodes

    out: Path = args.out
    say(f"{args.demos} scripted demonstrations -> {out}/bags/demos")
    seeds = [args.seed * 10_000 + i for i in range(args.demos)]
    record_episodes(
        args,
        out / "bags" / "demos",
        seeds,
        source="demo",
        desc="demonstrations",
        expert_noise=args.demo_noise,
    )
    demos, _report = episode_reader(args)(out / "bags" / "demos")
    demos = [e for e in demos if e.outcome.value == "success"]
    if not demos:
        say("no successful demonstration: nothing to learn from")
        return None
    proprio_dim, action_dim = demos[0].proprio_dim, demos[0].action_dim
    policy = vision_policy_config(args, proprio_dim, action_dim) if args.cameras else None
    kind = f"vision ({', '.join(args.cameras)} at {args.image_size}px)" if policy else "state"
    say(f"SFT of a {kind} policy: {args.sft_steps} steps on {len(demos)} demonstrations")
    store = ReplayStore(
        TrainerConfig(method="sft", **({"policy": policy} if policy else {})).replay_config()
    )
    store.add_episodes(demos)
    with _trainer(
        args, "sft", store, proprio_dim, action_dim, "sft", args.sft_steps, policy
    ) as sft:
        if sft.learner_step < args.sft_steps:
            say(sft.run_round(args.sft_steps - sft.learner_step).line())
        sft_ckpt = sft.save_checkpoint()
    return sft_ckpt


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch

    torch.set_num_threads(args.threads)
    from habc_learner.graph_job import EpisodeRunner
    from habc_learner.main_job import evaluate
    from habc_policy.core.checkpoint import load_policy

    t0 = time.monotonic()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        print(f"[habc-bringup-job {time.monotonic() - t0:6.1f}s] {msg}", flush=True)

    sft_ckpt = demos_and_sft(args, say)
    if sft_ckpt is None:
        return 1

    config_dir = write_job_config(args)
    sft_eval = evaluate(args, sft_ckpt, "r1")  # round 1's policy, before the graph loads the CPU
    say(f"SFT checkpoint: held-out eval {sft_eval.rate_text()} (95 % interval)")
    say(f"starting the node graph (config {config_dir}, log {out / 'launch.log'})")
    graph = Graph(args, config_dir, sft_ckpt)
    runner = None
    try:
        runner = EpisodeRunner(timeout_s=60.0)
        runner.wait_ready(timeout_s=180.0)
        say(f"graph up; policy server serves {runner.serving} (SFT)")
        phases = GraphRounds(args, graph, runner, say)
        outcome = RoundEngine(
            phases.collect,
            phases.learn,
            phases.evaluate,
            GraphRoundRecords(out / "rounds", {"args": vars(args)}),
            on_round=phases.said,
        ).run(range(1, args.rounds + 1), sft_ckpt)
    finally:
        if runner is not None:
            runner.close()
        graph.stop()
    if outcome.failure is not None:
        raise outcome.failure.exception
    rounds = round_results(outcome.records, sft_eval)
    sft_config = load_policy(sft_ckpt).config
    trace = critic_trace(args, sft_config.proprio_dim, sft_config.action_dim)
    (out / "report.json").write_text(
        json.dumps(
            {
                "rounds": [asdict(r) for r in rounds],
                "trace": trace,
                "args": {k: str(v) for k, v in vars(args).items()},
            },
            indent=1,
        )
    )
    plot_report(args, [r for r in rounds if r.episodes], trace, out / "report.png")
    lines = [
        f"# habc bringup job: {args.task}, {args.method}",
        "",
        f"{args.demos} demonstrations, SFT {args.sft_steps} steps; {args.rounds} rounds of "
        f"{args.episodes} episodes through the node graph, {args.round_steps} learner steps "
        f"per round; intervention rate {args.intervention_rate}. Wall time "
        f"{time.monotonic() - t0:.0f} s.",
        "",
        "| round | checkpoint | learner step | graph success | no takeover | takeovers "
        "| held-out eval (95 % interval) | mean successful length |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        graph_cols = (
            f"{r.success}/{r.episodes} | {r.autonomous_success}/{r.episodes} | {r.takeovers}"
            if r.episodes
            else "— | — | —"
        )
        name = f"r{r.round}" if r.episodes else "final"
        lines.append(
            f"| {name} | {r.checkpoint_id} | {r.learner_step} | {graph_cols} | "
            f"{_eval_text(r, args.eval_episodes)} | {r.eval_mean_length:.0f} |"
        )
    lines += [
        "",
        "![success per round and critic trace](report.png)",
        "",
        *(
            [
                f"Authority along `{trace['episode_id']}` ({trace['outcome']}): "
                f"{segments_text(trace['segments'])}.",
                "",
            ]
            if trace and trace.get("segments")
            else []
        ),
        f"Bags: `{out}/bags`, checkpoints: `{out}/checkpoints/sft`, `{out}/learner/checkpoints`, "
        f"graph log: `{out}/launch.log`, TensorBoard: `{out}/learner/tensorboard`.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    say(f"report: {out / 'report.md'}, {out / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

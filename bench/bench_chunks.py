"""Chunk-execution benchmark: holds, seam smoothness, clamps, graph vs in-process success.

For each seam mode (``switch``, ``ensemble``, ``rtc``) the sim node graph (driver, policy
server, intervention arbiter, scripted operator that never takes over but marks every outcome,
episode recorder; ``habc-launch`` from ``config/graph.yaml``) runs ``--episodes`` episodes on
one checkpoint while a learner trains beside it (``habc-learn``: an SFT round on the
demonstrations, one torch thread, as the graph's learner node trains, so the machine carries
the main job's load). The same checkpoint then runs in-process (``run_rollout``, the same seam
mode and chunk-safety limits) on the same object poses (the driver's reset seeds). Printed per
mode, measured in this run:

- holds per episode: steps of the episode on which the arbiter held an arm (any reason), and
  the episodes whose step 0 was a hold; and overrun steps (a policy row past ``execute_rows``
  ran because the next chunk was late: open-loop time instead of a hold);
- seam vs inside: the joint-space jump ``‖a_t − a_{t−1}‖`` and jerk
  ``‖a_t − 3a_{t−1} + 3a_{t−2} − a_{t−3}‖`` (14 action dims, per tick) where the chunk changes
  between ``t−1`` and ``t`` (seam) and where the whole window lies in one chunk (inside), over
  policy ticks of the graph's episodes, and their ratio (1 = seams as smooth as the inside);
- clamps: the arbiter's chunk-safety clamps, the ticks held for a refusal (``chunk_jump``:
  the running plan ran out after the newest chunk was dropped by the jump limit, which is no
  scheduling hold), and the driver's own clamps;
- success through the graph and in-process on the same poses, side by side.

Needs the built workspace; a checkpoint (``--checkpoint``) or it records demonstrations and
trains one (``--demos``, ``--sft-steps``; reused when already under ``--out``)::

    source env.sh && python bench/bench_chunks.py --out runs/bench_chunks --episodes 50
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import _claim_ros_domain  # noqa: E402

MODES = ("switch", "ensemble", "rtc")
DRIVER_SEED = 5000  # the driver's first reset uses seed 5001, then 5002, ...


@dataclass
class Figures:
    """What one path (graph or in-process) did under one seam mode."""

    episodes: int = 0
    success: int = 0
    steps: int = 0
    hold_steps: int = 0
    overrun_steps: int = 0  # policy rows past execute_rows (the next chunk was late)
    episodes_starting_held: int = 0
    clamped: int = 0  # the arbiter's chunk-safety clamps (ExecutedCommand.clamped)
    refused: int = 0  # the arbiter's chunk-safety refusals (hold chunk_jump)
    driver_clamped: int = 0  # the driver's safety layer (applied_command.clamped)
    seam_jump: list[float] = field(default_factory=list)
    inside_jump: list[float] = field(default_factory=list)
    seam_jerk: list[float] = field(default_factory=list)
    inside_jerk: list[float] = field(default_factory=list)
    hold_reasons: dict[str, int] = field(default_factory=dict)
    seam_rows: list[int] = field(default_factory=list)  # first row run of each new chunk
    chunks: int = 0  # chunks that ran
    learner_steps: int | None = None  # the learner's steps while the graph ran (None: none ran)


def _say(t0: float, msg: str) -> None:
    print(f"[bench_chunks {time.monotonic() - t0:7.1f}s] {msg}", flush=True)


def read_ticks(bag: Path) -> tuple[list[Any], dict[int, Any]]:
    """The arbiter's executed commands (by step) and the driver's applied ones of a bag."""
    from rosbags.rosbag2 import Reader

    from habc_common import bag_format as bf

    store = bf.typestore()
    commands, applied = [], {}
    with Reader(bag) as reader:
        conns = [
            c
            for c in reader.connections
            if c.topic in (bf.TOPIC_EXECUTED_COMMAND, bf.TOPIC_APPLIED_COMMAND)
        ]
        for conn, _t, raw in reader.messages(connections=conns):
            msg = store.deserialize_cdr(raw, conn.msgtype)
            if conn.topic == bf.TOPIC_EXECUTED_COMMAND:
                commands.append(msg)
            else:
                applied[int(msg.step_index)] = msg
    commands.sort(key=lambda m: m.step_index)
    return commands, applied


#: The arbiter's execute_rows (config/arbiter.yaml, which the graph here runs with).
EXECUTE_ROWS = int(
    yaml.safe_load((ROOT / "config" / "arbiter.yaml").read_text())["intervention_arbiter"][
        "ros__parameters"
    ]["execute_rows"]
)


def add_episode(fig: Figures, bag: Path, success: bool) -> None:
    """Add one recorded episode's figures (its steps as the learner reads them)."""
    from habc_common import bag_format as bf
    from habc_learner.core.bag_reader import BagSkipped, read_episode

    fig.episodes += 1
    fig.success += int(success)
    try:
        length = read_episode(bag, use_env_state=False).length
    except BagSkipped as exc:
        print(f"  (bag {bag.name} skipped: {exc})")
        return
    commands, applied = read_ticks(bag)
    commands = commands[:length]
    fig.steps += len(commands)
    fig.episodes_starting_held += int(bool(commands) and commands[0].hold)
    for m in commands:
        if m.hold:
            fig.hold_steps += 1
            fig.hold_reasons[m.hold_reason] = fig.hold_reasons.get(m.hold_reason, 0) + 1
        fig.clamped += int(m.clamped)
        ran_policy = any(c in (bf.CONTROLLER_POLICY, bf.CONTROLLER_HANDBACK) for c in m.controller)
        fig.overrun_steps += int(ran_policy and int(m.chunk_row) >= EXECUTE_ROWS)
        fig.refused += int(m.hold_reason == "chunk_jump")
        a = applied.get(int(m.step_index))
        fig.driver_clamped += int(a is not None and a.clamped)
    policy = [all(c == 1 for c in m.controller) for m in commands]
    acts = np.array([np.asarray(m.action, dtype=np.float64) for m in commands])
    seqs = [int(m.chunk_seq) for m in commands]
    ran = [s for s, p in zip(seqs, policy) if p]
    fig.chunks += len(set(ran))
    fig.seam_rows += [
        int(commands[t].chunk_row)
        for t in range(1, len(commands))
        if policy[t] and policy[t - 1] and seqs[t] != seqs[t - 1]
    ]
    for t in range(1, len(commands)):
        if policy[t] and policy[t - 1]:
            jump = float(np.linalg.norm(acts[t] - acts[t - 1]))
            (fig.seam_jump if seqs[t] != seqs[t - 1] else fig.inside_jump).append(jump)
        if t >= 3 and all(policy[t - 3 : t + 1]):
            jerk = float(np.linalg.norm(acts[t] - 3 * acts[t - 1] + 3 * acts[t - 2] - acts[t - 3]))
            if seqs[t] != seqs[t - 1]:
                fig.seam_jerk.append(jerk)
            elif len(set(seqs[t - 3 : t + 1])) == 1:
                fig.inside_jerk.append(jerk)


def _outcome(bag: Path) -> str:
    from habc_common import bag_format as bf

    return bf.read_custom_data(bag).get(bf.KEY_OUTCOME, "")


def _ratio(seam: list[float], inside: list[float]) -> str:
    if not seam or not inside:
        return "n/a"
    return f"{np.mean(seam) / np.mean(inside):.2f}"


def summary(mode: str, path: str, f: Figures) -> str:
    n = max(f.episodes, 1)
    reasons = ", ".join(f"{k or '?'} {v}" for k, v in sorted(f.hold_reasons.items())) or "none"
    return (
        f"  {mode:8s} {path:10s} success {f.success}/{f.episodes} ({100 * f.success / n:.0f} %)"
        f"  holds/episode {f.hold_steps / n:.2f} (step 0 held in {f.episodes_starting_held};"
        f" {reasons}); overrun steps/episode {f.overrun_steps / n:.2f}\n"
        f"  {'':8s} {'':10s} jump seam/inside {np.mean(f.seam_jump or [np.nan]):.4f}/"
        f"{np.mean(f.inside_jump or [np.nan]):.4f} = {_ratio(f.seam_jump, f.inside_jump)}"
        f"  jerk seam/inside {np.mean(f.seam_jerk or [np.nan]):.4f}/"
        f"{np.mean(f.inside_jerk or [np.nan]):.4f} = {_ratio(f.seam_jerk, f.inside_jerk)}"
        f"  ({len(f.seam_jump)} seams)\n"
        f"  {'':8s} {'':10s} chunk-safety clamps {f.clamped}, held for refusals {f.refused}, "
        f"driver clamps {f.driver_clamped}, over {f.steps} steps"
        + (f"; learner steps beside it {f.learner_steps}" if f.learner_steps is not None else "")
    )


def write_config(out: Path, mode: str, seed: int) -> Path:
    """``<out>/config``: the repository's files with this run's values (as the bringup job)."""
    import shutil

    from habc_learner.bringup import default_config_dir

    dst = out / "config"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(default_config_dir(), dst)

    def edit(name: str, node: str, values: dict) -> None:
        path = dst / name
        doc = yaml.safe_load(path.read_text())
        doc[node]["ros__parameters"].update(values)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))

    edit("arbiter.yaml", "intervention_arbiter", {"seam": mode})
    edit(
        "scripted_operator.yaml",
        "scripted_operator",
        {"intervention_rate": 0.0, "seed": seed, "mark_outcome": True},
    )
    edit("driver.yaml", "arx_x5_driver", {"seed": DRIVER_SEED, "cameras": ""})
    edit("recorder.yaml", "episode_recorder", {"cameras": ""})
    edit("policy_server.yaml", "policy_server", {"torch_threads": 1})
    return dst


def chunk_safety_config(config_dir: Path) -> Any:
    """The arbiter's chunk-safety limits of ``arbiter.yaml`` + ``arbiter_sim.yaml``."""
    from habc_policy.core.chunk_safety import ChunkSafetyConfig

    params: dict[str, Any] = {}
    for name in ("arbiter.yaml", "arbiter_sim.yaml"):
        doc = yaml.safe_load((config_dir / name).read_text())["intervention_arbiter"]
        for k, v in doc["ros__parameters"].get("chunk_safety", {}).items():
            params[k] = v
    if not params.get("enabled", True):
        return None
    return ChunkSafetyConfig(
        action_dim=14,
        max_jump=params["max_jump"],
        max_velocity=params["max_velocity"],
        max_acceleration=params["max_acceleration"],
        period_s=0.02,
    )


def run_graph(args: argparse.Namespace, mode: str, ckpt: Path, env: dict, t0: float) -> Figures:
    from habc_learner.graph_job import EpisodeRunner

    out = args.out / f"graph_{mode}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    config_dir = write_config(out, mode, args.seed)
    log = (out / "launch.log").open("a")
    cmd = [
        sys.executable,
        "-m",
        "habc_learner.launcher",
        "--config-dir",
        str(config_dir),
        f"run_dir:={out.resolve()}",
        f"task:={args.task}",
        "learner:=false",
        "operator:=scripted",
        f"policy_checkpoint:={ckpt.resolve()}",
        "policy:=state",
    ]
    graph = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    fig = Figures()
    runner = None
    try:
        runner = EpisodeRunner(timeout_s=120.0)
        runner.wait_ready(timeout_s=240.0)
        _say(t0, f"{mode}: graph up, serving {runner.serving}")
        for i in range(args.episodes):
            if graph.poll() is not None:
                raise RuntimeError(f"the graph stopped ({graph.returncode}); see {log.name}")
            o = runner.run_episode(args.task)
            add_episode(fig, out / "bags" / "rollouts" / o.episode_id, o.outcome == "success")
            if (i + 1) % 10 == 0 or i + 1 == args.episodes:
                _say(
                    t0,
                    f"{mode}: graph episode {i + 1}/{args.episodes}: {fig.success} successes, "
                    f"{fig.hold_steps} hold steps so far",
                )
    finally:
        if runner is not None:
            runner.close()
        if graph.poll() is None:
            graph.send_signal(signal.SIGINT)
            try:
                graph.wait(timeout=60)
            except subprocess.TimeoutExpired:
                graph.kill()
        log.close()
    return fig


def graph_schedule(fig: Figures, execute_rows: int = EXECUTE_ROWS) -> tuple[int, int]:
    """``(latency_rows, lead_rows)`` of the graph's chunks: the median first row run of a new
    chunk (rows overdue on arrival) and the rows left in the running chunk when the next was
    requested (``E − rows per chunk + latency``)."""
    latency = int(np.median(fig.seam_rows)) if fig.seam_rows else 0
    per_chunk = fig.steps / max(fig.chunks, 1)
    lead = round(execute_rows - per_chunk + latency)
    return latency, min(max(lead, latency), execute_rows - 1)


def run_in_process(
    args: argparse.Namespace,
    mode: str,
    ckpt: Path,
    schedule: tuple[int, int] = (0, 0),
    tag: str = "",
) -> Figures:
    from arx_x5_driver.core.factory import make_backend
    from habc_policy.core.checkpoint import load_policy
    from habc_sim.core.rollouts import run_rollout

    policy = load_policy(ckpt)
    limits = chunk_safety_config(args.out / f"graph_{mode}" / "config")
    folder = args.out / f"inproc{tag}_{mode}"
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    fig = Figures()
    with make_backend("sim", task=args.task, max_steps=400) as robot:
        for i in range(args.episodes):
            seed = DRIVER_SEED + 1 + i
            r = run_rollout(
                robot,
                seed=seed,
                policy=policy,
                episode_id=f"inproc-{seed}",
                task=args.task,
                prompt=robot.prompt,
                bag_path=folder / f"inproc-{seed}",
                sample_seed=seed,
                seam=mode,
                chunk_safety=limits,
                latency_rows=schedule[0],
                lead_rows=schedule[1],
            )
            add_episode(fig, folder / f"inproc-{seed}", r.success)
    return fig


def learner_bags(args: argparse.Namespace, ckpt: Path) -> Path:
    """The demonstrations the learner beside the graph trains on: ``--learner-bags``, else
    ``<out>/bags/demos`` (recorded when the bench trains its own checkpoint), else the
    ``bags/demos`` of the run a ``--checkpoint`` came from."""
    if args.learner_bags is not None:
        candidates = [args.learner_bags]
    else:
        candidates = [args.out / "bags" / "demos"]
        candidates += [parent / "bags" / "demos" for parent in ckpt.resolve().parents]
    for folder in candidates:
        if folder.is_dir() and any(folder.iterdir()):
            return folder
    raise SystemExit(
        f"bench_chunks: no demonstrations for the learner beside the graph (looked in "
        f"{[str(c) for c in candidates[:3]]}...): pass --learner-bags DIR, or --no-learner"
    )


def learner_steps(log: Path) -> int:
    """The learner's last reported step (its progress bar, ``N/total``), 0 before the first."""
    text = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    found = re.findall(r"(\d+)/\d+ \[", text)
    return int(found[-1]) if found else 0


def check_learner(learner: subprocess.Popen | None, log: Path) -> None:
    """Fail the run when the learner that should load the machine is gone: figures measured
    without it are not the ones this bench reports."""
    if learner is None or learner.poll() is None:
        return
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise RuntimeError(f"the learner beside the graph exited ({learner.returncode}):\n{tail}")


def start_learner(
    args: argparse.Namespace, ckpt: Path, env: dict, t0: float
) -> subprocess.Popen | None:
    """A learner training beside the graph: an SFT round on the demonstrations, one thread.
    Returns once it has taken its first steps (or raises: it exited)."""
    if args.no_learner:
        return None
    bags = learner_bags(args, ckpt)
    out = args.out / "learner_load"
    log_path = args.out / "learner_load.log"
    log = log_path.open("a")
    cmd = [
        sys.executable,
        "-m",
        "habc_learner.learn",
        "--bags",
        str(bags),
        "--out",
        str(out),
        "--method",
        "sft",
        "--steps",
        "1000000",
        "--init",
        str(ckpt),
        "--threads",
        "1",
        "--nice",
        str(args.learner_nice),
    ]
    learner = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180.0
    while learner_steps(log_path) == 0:
        check_learner(learner, log_path)
        if time.monotonic() > deadline:
            learner.kill()
            raise RuntimeError(f"the learner took no step in 180 s; see {log_path}")
        time.sleep(1.0)
    _say(t0, f"learner training beside the graph on {bags} (nice {args.learner_nice})")
    return learner


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_chunks"))
    p.add_argument("--episodes", type=int, default=50, help="episodes per mode and path")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {MODES}")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: train an SFT one")
    p.add_argument("--demos", type=int, default=20)
    p.add_argument("--sft-steps", type=int, default=1000)
    p.add_argument("--task", default="transfer_cube")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--reuse-graph", action="store_true", help="read the graph's bags of an earlier run"
    )
    p.add_argument("--no-learner", action="store_true", help="no learner training beside it")
    p.add_argument(
        "--learner-bags",
        type=Path,
        default=None,
        help="demonstrations the learner trains on (default: <out>/bags/demos, else the "
        "checkpoint's run's bags/demos)",
    )
    p.add_argument(
        "--learner-nice",
        type=int,
        default=10,
        help="the learner's cpu_nice (config/learner.yaml: 10; 0: as before the setting existed)",
    )
    args = p.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        p.error(f"--modes must name some of {MODES}")
    import torch

    torch.set_num_threads(1)
    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(_claim_ros_domain())
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_LOCALHOST_ONLY", "1")
    os.environ.update(env)
    ckpt = args.checkpoint
    if ckpt is None:
        from habc_learner.bringup_job import _parse, demos_and_sft

        job = _parse(
            ["--out", str(args.out), "--demos", str(args.demos), "--sft-steps", str(args.sft_steps)]
        )
        ckpt = demos_and_sft(job, lambda m: _say(t0, m))
        if ckpt is None:
            return 1
    _say(t0, f"checkpoint {ckpt}; modes {modes}; {args.episodes} episodes each")
    learner = start_learner(args, ckpt, env, t0)
    load_log = args.out / "learner_load.log"
    results: dict[str, dict[str, Figures]] = {}
    try:
        for mode in modes:
            if args.reuse_graph:
                graph = Figures()
                for bag in sorted((args.out / f"graph_{mode}" / "bags" / "rollouts").iterdir()):
                    add_episode(graph, bag, _outcome(bag) == "success")
            else:
                steps_before = learner_steps(load_log)
                graph = run_graph(args, mode, ckpt, env, t0)
                check_learner(learner, load_log)
                if learner is not None:
                    graph.learner_steps = learner_steps(load_log) - steps_before
            _say(t0, f"{mode}: graph done; in-process on the same poses")
            inproc = run_in_process(args, mode, ckpt)
            schedule = graph_schedule(graph)
            _say(t0, f"{mode}: in-process on the graph's schedule (latency, lead) {schedule}")
            timed = run_in_process(args, mode, ckpt, schedule, "_graph_schedule")
            results[mode] = {"graph": graph, "in-process": inproc, "in-process*": timed}
            for path, fig in results[mode].items():
                print(summary(mode, path, fig), flush=True)
            (args.out / "results.json").write_text(
                json.dumps({m: {k: asdict(v) for k, v in r.items()} for m, r in results.items()})
            )
    finally:
        if learner is not None and learner.poll() is None:
            learner.send_signal(signal.SIGINT)
            try:
                learner.wait(timeout=60)
            except subprocess.TimeoutExpired:
                learner.kill()
    print(
        f"== chunk execution, {args.episodes} episodes per mode, learner "
        f"{'off' if args.no_learner else f'training beside the graph (nice {args.learner_nice})'}, "
        f"{time.monotonic() - t0:.0f} s wall"
    )
    print(
        "  (in-process*: in-process on the graph's chunk schedule: its measured latency and lead)"
    )
    for mode, r in results.items():
        for path, fig in r.items():
            print(summary(mode, path, fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())

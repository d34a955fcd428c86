"""Record N scripted demonstrations straight into rosbag2 episode bags (for SFT).

Example::

    habc-record-demos --task transfer_cube --num-episodes 50 --out data/demos --seed 0 \\
        --noise 0.01 --cameras top left_wrist right_wrist --image-size 224 224

One bag per episode (``<out>/<episode_id>/``), in the format of
:mod:`habc_common.bag_format`; per control step ``t`` (stamped ``base + t × period``):
``/joint_states``, ``/habc/env_state``, the camera images asked for, then
``/habc/executed_command`` (controller = human on every arm: the scripted operator stands in for
the person); ``EpisodeEvent`` start and end. Failed demonstrations are written too, with
outcome ``failure``. Needs no ROS: the bags are written by ``rosbags``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arx_x5_driver.core.config import ALOHA_CAMERAS, METAWORLD_CAMERAS, did_you_mean
from arx_x5_driver.core.factory import make_backend
from arx_x5_driver.core.robot import ArmBackend
from habc_sim.core.expert import make_expert
from habc_sim.core.operator import ScriptedOperator

LOG = logging.getLogger("habc-record-demos")


@dataclass(frozen=True)
class EpisodeResult:
    episode_id: str
    path: Path
    success: bool
    num_steps: int
    success_step: int | None


def record_episode(
    robot: ArmBackend,
    expert: Any,
    out_dir: Path,
    task: str,
    prompt: str,
    seed: int,
    base_ns: int,
) -> EpisodeResult:
    """Run the expert for one episode on ``robot`` and write it as one bag.

    The expert drives through the scripted operator, in control from the first step, and the
    episode runs through the same rollout loop (and bag writer) as every learner rollout.
    """
    from habc_sim.core.rollouts import run_rollout

    episode_id = f"{task}_demo_seed{seed:06d}_{base_ns}"
    operator = ScriptedOperator(expert, arm_names=tuple(n for n, _lo, _hi in robot.arm_slices))
    result = run_rollout(
        robot,
        seed=seed,
        operator=operator,
        episode_id=episode_id,
        task=task,
        prompt=prompt,
        bag_path=out_dir / episode_id,
        source="demo",
        base_time_ns=base_ns,
    )
    return EpisodeResult(
        episode_id, out_dir / episode_id, result.success, result.steps, result.success_step
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="habc-record-demos",
        description="Record scripted demonstrations into rosbag2 episode bags.",
    )
    p.add_argument("--backend", choices=("sim", "metaworld"), default="sim")
    p.add_argument(
        "--task",
        default=None,
        help="sim: transfer_cube | insertion (default transfer_cube); metaworld: any MT1 task "
        "(default assembly-v3)",
    )
    p.add_argument("--num-episodes", "-n", type=int, default=10)
    p.add_argument(
        "--out", type=Path, required=True, help="directory receiving one bag per episode"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode (then +1 each)")
    p.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="quality knob: waypoint offset σ in m (sim) / action noise σ (metaworld)",
    )
    p.add_argument("--cameras", nargs="*", default=[], help="cameras to record (default none)")
    p.add_argument("--image-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    p.add_argument("--max-steps", type=int, default=None, help="episode limit override")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    task = args.task or ("transfer_cube" if args.backend == "sim" else "assembly-v3")
    valid_cams = ALOHA_CAMERAS if args.backend == "sim" else METAWORLD_CAMERAS
    for cam in args.cameras:
        if cam not in valid_cams:
            print(
                f"error: unknown camera {cam!r} for backend {args.backend}; choose from "
                f"{valid_cams}{did_you_mean(cam, valid_cams)}",
                file=sys.stderr,
            )
            return 2
    if args.num_episodes < 1:
        print(f"error: --num-episodes must be >= 1, got {args.num_episodes}", file=sys.stderr)
        return 2
    fields: dict[str, Any] = {
        "task": task,
        "cameras": tuple(args.cameras),
        "image_size": tuple(args.image_size),
    }
    if args.max_steps is not None:
        fields["max_steps"] = args.max_steps
    try:
        robot = make_backend(args.backend, **fields)
        expert = make_expert(args.backend, task, noise_std=args.noise)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    prompt = getattr(robot, "prompt", task)
    successes = 0
    t0 = time.monotonic()
    with robot:
        bar = tqdm(range(args.num_episodes), desc=f"{task} demos", unit="ep", disable=args.quiet)
        for i in bar:
            result = record_episode(
                robot, expert, args.out, task, prompt, args.seed + i, time.time_ns()
            )
            successes += result.success
            bar.set_postfix(success=f"{successes}/{i + 1}")
    elapsed = time.monotonic() - t0
    print(
        f"{task}: {successes}/{args.num_episodes} successful demonstrations in {elapsed:.1f} s "
        f"-> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

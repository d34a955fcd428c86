"""Record N scripted demonstrations straight into rosbag2 episode bags (for SFT).

Example::

    habc-record-demos --task transfer_cube --num-episodes 50 --out data/demos --seed 0 \\
        --noise 0.01 --cameras top left_wrist right_wrist --image-size 224 224

One bag per episode (``<out>/<episode_id>/``), in the format of
:mod:`habc_learner.core.bag_format`; per control step ``t`` (stamped ``base + t × period``):
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

import numpy as np

from arx_x5_driver.core.config import ALOHA_CAMERAS, METAWORLD_CAMERAS, did_you_mean
from arx_x5_driver.core.expert import make_expert
from arx_x5_driver.core.factory import make_backend
from arx_x5_driver.core.robot import ArmBackend, Observation

LOG = logging.getLogger("habc-record-demos")


@dataclass(frozen=True)
class EpisodeResult:
    episode_id: str
    path: Path
    success: bool
    num_steps: int
    success_step: int | None


def _bag_format() -> Any:
    from habc_learner.core import bag_format

    return bag_format


def _write_observation(
    writer: Any, bf: Any, robot: ArmBackend, obs: Observation, t_ns: int
) -> None:
    spec = robot.spec
    writer.write(
        bf.TOPIC_JOINT_STATES,
        bf.MSGTYPE_JOINT_STATE,
        t_ns,
        writer.msg(
            bf.MSGTYPE_JOINT_STATE,
            header=bf.header(t_ns),
            name=list(spec.joint_names),
            position=np.asarray(obs.joint_positions, dtype=np.float64),
            velocity=np.asarray(obs.joint_velocities, dtype=np.float64),
            effort=np.zeros(0, dtype=np.float64),
        ),
    )
    if obs.env_state is not None:
        layout = writer.msg("std_msgs/msg/MultiArrayLayout", dim=[], data_offset=0)
        writer.write(
            bf.TOPIC_ENV_STATE,
            bf.MSGTYPE_FLOAT32_MULTI_ARRAY,
            t_ns,
            writer.msg(
                bf.MSGTYPE_FLOAT32_MULTI_ARRAY,
                layout=layout,
                data=np.asarray(obs.env_state, dtype=np.float32),
            ),
        )
    for cam, img in obs.images.items():
        h, w = img.shape[:2]
        writer.write(
            bf.camera_topic(cam),
            bf.MSGTYPE_IMAGE,
            t_ns,
            writer.msg(
                bf.MSGTYPE_IMAGE,
                header=bf.header(t_ns, frame_id=f"{cam}_optical_frame"),
                height=h,
                width=w,
                encoding="rgb8",
                is_bigendian=0,
                step=3 * w,
                data=np.ascontiguousarray(img, dtype=np.uint8).reshape(-1),
            ),
        )


def _event(
    writer: Any, bf: Any, t_ns: int, meta: Any, event: int, outcome: str, reason: str
) -> None:
    writer.write(
        bf.TOPIC_EPISODE_EVENT,
        bf.MSGTYPE_EPISODE_EVENT,
        t_ns,
        writer.msg(
            bf.MSGTYPE_EPISODE_EVENT,
            header=bf.header(t_ns),
            episode_id=meta.episode_id,
            event=event,
            outcome=bf.OUTCOME_CODES[outcome],
            marked_by="" if event == bf.EVENT_START else "simulator",
            task=meta.task,
            prompt=meta.prompt,
            reason=reason,
        ),
    )


def record_episode(
    robot: ArmBackend,
    expert: Any,
    out_dir: Path,
    task: str,
    prompt: str,
    seed: int,
    base_ns: int,
) -> EpisodeResult:
    """Run the expert for one episode on ``robot`` and write it as one bag."""
    bf = _bag_format()
    episode_id = f"{task}_demo_seed{seed:06d}_{base_ns}"
    meta = bf.EpisodeMeta(
        episode_id=episode_id, task=task, prompt=prompt, source="demo", arms=robot.arm_slices
    )
    path = out_dir / episode_id
    period_ns = round(1e9 / robot.spec.control_hz)
    n_arms = len(robot.arm_slices)
    obs = robot.reset(seed)
    expert.reset(obs, seed)
    with bf.EpisodeBagWriter(path, meta) as writer:
        _event(writer, bf, base_ns, meta, bf.EVENT_START, "unknown", f"scripted demo, seed {seed}")
        step = 0
        while not robot.status().done:
            t_ns = base_ns + step * period_ns
            _write_observation(writer, bf, robot, obs, t_ns)
            action = np.asarray(expert.act(obs), dtype=np.float64)
            robot.command(action)
            writer.write(
                bf.TOPIC_EXECUTED_COMMAND,
                bf.MSGTYPE_EXECUTED_COMMAND,
                t_ns,
                writer.msg(
                    bf.MSGTYPE_EXECUTED_COMMAND,
                    header=bf.header(t_ns),
                    episode_id=episode_id,
                    step_index=step,
                    controller=np.full(n_arms, bf.CONTROLLER_HUMAN, dtype=np.uint8),
                    action=action.astype(np.float32),
                    hold=False,
                    hold_reason="",
                    checkpoint_id="",
                    chunk_seq=0,
                    chunk_row=0,
                    learner_step=-1,
                ),
            )
            writer.count_step()
            step += 1
            obs = robot.observe()
        status = robot.status()
        outcome = "success" if status.success else "failure"
        reason = "task criterion reached" if status.success else (status.failure or "failed")
        end_ns = base_ns + step * period_ns
        _event(writer, bf, end_ns, meta, bf.EVENT_END, outcome, reason)
        writer.finish(
            outcome,
            marked_by="simulator",
            success_step=status.success_step if status.success else None,
        )
    return EpisodeResult(
        episode_id,
        path,
        bool(status.success),
        step,
        status.success_step if status.success else None,
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

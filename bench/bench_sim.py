"""Simulation benchmark: control steps/s of the simulated ALOHA robot, state only and with the
three cameras (top, left_wrist, right_wrist) at 224×224 and 640×480, plus Meta-World and the
scripted expert's cost per step.

Prints the rates measured in this run (no asserts). Example::

    MUJOCO_GL=egl python bench/bench_sim.py --steps 300
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src" / "arx_x5_driver"))
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from arx_x5_driver.core.factory import make_backend  # noqa: E402
from habc_sim.core.expert import AlohaExpert, MetaWorldExpert  # noqa: E402

CAMERAS = ("top", "left_wrist", "right_wrist")


def rate_sim(task: str, steps: int, cameras: tuple[str, ...], size: tuple[int, int]) -> float:
    """Steps/s of command + observe (rendering the cameras every step) with a fixed action."""
    with make_backend("sim", task=task, cameras=cameras, image_size=size) as robot:
        obs = robot.reset(0)
        hold = obs.joint_positions.copy()
        robot.command(hold)
        robot.observe()  # warm-up (GL context, buffers)
        t0 = time.perf_counter()
        for i in range(steps):
            if robot.status().done:
                robot.reset(i)
            robot.command(hold)
            robot.observe()
        return steps / (time.perf_counter() - t0)


def rate_expert(task: str, episodes: int) -> tuple[float, float, int]:
    """(steps/s, s/episode, successes) of the replanning expert driving the sim, state only."""
    with make_backend("sim", task=task) as robot:
        expert = AlohaExpert(task)
        steps = successes = 0
        t0 = time.perf_counter()
        for seed in range(episodes):
            obs = robot.reset(seed)
            expert.reset(obs, seed)
            while not robot.status().done:
                robot.command(expert.act(obs))
                obs = robot.observe()
            steps += robot.status().step
            successes += bool(robot.status().success)
        dt = time.perf_counter() - t0
        return steps / dt, dt / episodes, successes


def rate_metaworld(task: str, steps: int) -> float:
    with make_backend("metaworld", task=task) as robot:
        expert = MetaWorldExpert(task)
        obs = robot.reset(0)
        expert.reset(obs, 0)
        t0 = time.perf_counter()
        for i in range(steps):
            if robot.status().done:
                obs = robot.reset(i % 50)  # one MT1 seed: its 50 tasks are sampled once
            robot.command(expert.act(obs))
            obs = robot.observe()
        return steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--episodes", type=int, default=5)
    args = parser.parse_args()
    print(f"MUJOCO_GL={os.environ['MUJOCO_GL']}, {os.cpu_count()} CPUs, numpy {np.__version__}")
    for task in ("transfer_cube", "insertion"):
        state = rate_sim(task, args.steps * 4, (), (224, 224))
        small = rate_sim(task, args.steps, CAMERAS, (224, 224))
        large = rate_sim(task, max(50, args.steps // 2), CAMERAS, (480, 640))
        print(
            f"sim {task:13s}: state only {state:7.0f} steps/s | 3 cams 224x224 {small:5.1f} "
            f"steps/s | 3 cams 640x480 {large:5.1f} steps/s"
        )
        eps, spe, ok = rate_expert(task, args.episodes)
        print(
            f"expert {task:10s}: {eps:7.0f} steps/s with IK, {spe:.2f} s/episode, "
            f"{ok}/{args.episodes} successes"
        )
    mw = rate_metaworld("assembly-v3", args.steps * 2)
    print(f"metaworld assembly-v3 + expert: {mw:.0f} steps/s")


if __name__ == "__main__":
    main()

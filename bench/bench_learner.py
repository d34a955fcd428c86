"""Learner benchmark: learner steps/s at batch 256 (state-only and 3 × 96² cameras), windows/s
for labeling + windowing, batch gathering, and single-chunk inference latency.

Prints the rates measured in this run (no asserts). Example::

    python bench/bench_learner.py --threads 2 --steps 20
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for pkg in ("habc_policy", "habc_learner"):
    sys.path.insert(0, str(ROOT / "src" / pkg))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from habc_learner.core.episode import SCENARIOS, scenario_episode  # noqa: E402
from habc_learner.core.labeling import label_episode  # noqa: E402
from habc_learner.core.replay import ReplayStore  # noqa: E402
from habc_learner.core.trainer import Trainer, TrainerConfig  # noqa: E402
from habc_learner.core.windows import WindowConfig, episode_windows  # noqa: E402
from habc_policy.core.configuration_flow import FlowPolicyConfig  # noqa: E402

CAMERAS = ("top", "left_wrist", "right_wrist")


def build_store(config: TrainerConfig, episodes: int, length: int) -> ReplayStore:
    store = ReplayStore(config.replay_config())
    for i in range(episodes):
        store.add_episode(
            scenario_episode(
                SCENARIOS[i % len(SCENARIOS)],
                seed=i,
                length=length,
                cameras=config.policy.camera_names,
                image_size=config.policy.image_size,
            )
        )
    return store


def bench_steps(method: str, cameras: tuple[str, ...], steps: int, warmup: int) -> float:
    policy = FlowPolicyConfig(
        action_dim=14, proprio_dim=15, camera_names=cameras, image_size=(96, 96)
    )
    config = TrainerConfig(method=method, policy=policy, batch_size=256, progress=False)
    store = build_store(config, episodes=32, length=300)
    trainer = Trainer(config, store)
    for _ in range(warmup):
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return steps / (time.perf_counter() - start)


def bench_windowing(episodes: int, length: int) -> float:
    eps = [
        scenario_episode(SCENARIOS[i % len(SCENARIOS)], seed=i, length=length)
        for i in range(episodes)
    ]
    config = WindowConfig()
    start = time.perf_counter()
    n = 0
    for ep in eps:
        labels = label_episode(ep, config.labeling_config)
        n += len(episode_windows(ep, config, labels=labels))
    return n / (time.perf_counter() - start)


def bench_gather(batches: int) -> float:
    config = TrainerConfig(method="habc", policy=FlowPolicyConfig(proprio_dim=15), progress=False)
    store = build_store(config, episodes=64, length=300)
    rng = np.random.default_rng(0)
    mixing = config.method_config.mixing_dict
    start = time.perf_counter()
    for _ in range(batches):
        store.sample(256, mixing, rng, proportional=True)
    return batches * 256 / (time.perf_counter() - start)


def bench_inference(repeats: int) -> float:
    torch.manual_seed(0)
    from habc_policy.core.modeling_flow import FlowPolicy

    policy = FlowPolicy(FlowPolicyConfig(proprio_dim=15)).eval()
    q = torch.zeros(1, 15)
    tokens = torch.zeros(1, 16, dtype=torch.int64)
    policy.sample_actions(q, tokens)
    start = time.perf_counter()
    for _ in range(repeats):
        policy.sample_actions(q, tokens)
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=20, help="timed learner steps per case")
    parser.add_argument("--image-steps", type=int, default=5, help="timed steps with cameras")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    n_params = sum(
        p.numel()
        for p in __import__("habc_policy.core.modeling_flow", fromlist=["FlowPolicy"])
        .FlowPolicy(FlowPolicyConfig(proprio_dim=15))
        .parameters()
    )
    print(f"actor: {n_params / 1e6:.2f} M parameters (default config, d = 14, H = 50)")
    for method in ("sft", "habc"):
        rate = bench_steps(method, (), args.steps, warmup=3)
        print(
            f"learner steps/s, batch 256, state-only, {method:5s}: {rate:7.2f}  "
            f"({1000 / rate:6.1f} ms/step)"
        )
    rate = bench_steps("habc", CAMERAS, args.image_steps, warmup=1)
    print(
        f"learner steps/s, batch 256, 3 x 96x96 cameras, habc: {rate:7.2f}  "
        f"({1000 / rate:6.1f} ms/step)"
    )
    print(f"labeling + windowing: {bench_windowing(400, 400):,.0f} windows/s")
    print(f"batch gathering (state-only): {bench_gather(50):,.0f} windows/s")
    print(f"inference, one 50x14 chunk, 10 Euler steps: {bench_inference(20):.1f} ms")


if __name__ == "__main__":
    main()

"""Vision benchmark: the learner's data path with and without the image cache, and serving.

    source env.sh && python bench/bench_vision.py --threads 2 [--sizes 96 224] [--batches 64 256]
    source env.sh && python bench/bench_vision.py --serve-only     # policy server latency only

1. Writes ``--episodes`` episode bags of ``--length`` steps with three 224×224 rgb8 cameras
   (the driver's default size) — real rosbag2 files, as the recorder writes them.
2. Bag → image windows: decode + resize every frame into the image cache, frames/s, against
   the frames the learner consumes per second (batch × 3 cameras × 2 for s and s').
3. Learner step (method ``habc``: actor + critic, images of s and s'), 3 cameras at each
   ``--sizes`` px, batch ``--batches``: time per step split into data (sample, image load,
   augment) and compute (forward, backward, optimizer), **before** (lazy loaders that reopen
   the bag for every batch, as before the cache) and **after** (memory maps of the cache +
   shift augmentation).
4. Policy inference through the node: the real ``policy_server`` serving a 3-camera 96² policy
   (default model size), fed joint states at 50 Hz and three 224² cameras at 30 Hz from this
   process; observation → chunk latency p50/p99 (chunk stamp = observation stamp).

Prints what it measured in this one run; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

CAMERAS = ("top", "left_wrist", "right_wrist")


def write_bags(folder: Path, episodes: int, length: int) -> list[Path]:
    from habc_learner.core.bag_reader import write_episode
    from habc_learner.core.episode import SCENARIOS, scenario_episode

    paths = []
    rng = np.random.default_rng(0)
    for i in range(episodes):
        ep = scenario_episode(SCENARIOS[i % len(SCENARIOS)], seed=i, length=length)
        base = rng.integers(0, 256, (length, 224, 224, 3), dtype=np.uint8)
        images = {c: np.roll(base, k, axis=2) for k, c in enumerate(CAMERAS)}
        path = folder / f"ep-{i:03d}"
        write_episode(path, ep, joint_dim=14, images=images)
        paths.append(path)
    return paths


def read_all(paths: list[Path], cache, size: int):
    from habc_learner.core.bag_reader import read_episode

    return [
        read_episode(
            p,
            use_env_state=False,
            cameras=CAMERAS,
            image_cache=cache,
            image_size=None if cache is None else (size, size),
        )
        for p in paths
    ]


def resized_lazy(episode, size: int):
    """The pre-cache data path: each call reopens the bag and decodes (then resizes, so the
    policy gets its configured size as it does now)."""
    import dataclasses

    from habc_policy.core.images import resize_rgb

    def wrap(loader):
        def load(steps):
            return np.stack([resize_rgb(img, (size, size)) for img in loader(steps)])

        return load

    return dataclasses.replace(episode, images={c: wrap(f) for c, f in episode.images.items()})


def step_times(episodes, size: int, batch: int, steps: int, augment: str) -> tuple[float, float]:
    from habc_learner.core.replay import ReplayStore
    from habc_learner.core.trainer import Trainer, TrainerConfig
    from habc_policy.core.configuration_flow import FlowPolicyConfig

    policy = FlowPolicyConfig(
        proprio_dim=14,
        camera_names=CAMERAS,
        image_size=(size, size),
        image_augment=augment,
    )
    config = TrainerConfig(method="habc", policy=policy, batch_size=batch, progress=False)
    store = ReplayStore(config.replay_config())
    store.add_episodes(episodes)
    trainer = Trainer(config, store)
    data, compute = [], []
    for i in range(steps + 1):
        info = trainer.train_step()
        if i:  # the first step warms allocations up
            data.append(info["time/data_s"])
            compute.append(info["time/compute_s"])
    return float(np.median(data)), float(np.median(compute))


def bench_learner(args: argparse.Namespace, root: Path) -> None:
    from habc_learner.core.image_cache import ImageCache

    paths = write_bags(root / "bags", args.episodes, args.length)
    frames = args.episodes * args.length * len(CAMERAS)
    mb = sum(f.stat().st_size for p in paths for f in p.iterdir()) / 1e6
    print(
        f"{args.episodes} bags × {args.length} steps × 3 cameras 224² rgb8 ({mb:.0f} MB); "
        f"torch threads {args.threads}"
    )
    for size in args.sizes:
        cache = ImageCache(root / f"cache{size}")
        t0 = time.perf_counter()
        cached = read_all(paths, cache, size)
        t_decode = time.perf_counter() - t0
        lazy = [resized_lazy(e, size) for e in read_all(paths, None, size)]
        print(
            f"\n[{size}²] bag → image cache: {frames} frames in {t_decode:.1f} s "
            f"({frames / t_decode:,.0f} frames/s, decode + resize + write, once per bag)"
        )
        for batch in args.batches:
            rows = []
            for name, episodes, aug, n in (
                ("before (lazy bag reads)", lazy, "none", args.before_steps),
                ("after (cache + shift)", cached, "shift", args.steps),
            ):
                data, compute = step_times(episodes, size, batch, n, aug)
                rows.append((name, data, compute))
            for name, data, compute in rows:
                total = data + compute
                print(
                    f"  batch {batch:3d} {name:24s}: step {total:6.3f} s = data {data:6.3f} s "
                    f"({100 * data / total:4.1f} %) + compute {compute:6.3f} s"
                )
            consumed = batch * len(CAMERAS) * 2 / (rows[1][1] + rows[1][2])
            print(
                f"  batch {batch:3d} the learner consumes {consumed:,.0f} frames/s; the cache "
                f"decodes {frames / t_decode:,.0f} frames/s "
                f"({frames / t_decode / consumed:.1f}× ahead; once per bag, then reused)"
            )


def bench_serving(args: argparse.Namespace, root: Path) -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image, JointState

    from habc_msgs.msg import ActionChunk
    from habc_policy.core import checkpoint as ckpt
    from habc_policy.core.configuration_flow import FlowPolicyConfig
    from habc_policy.core.modeling_flow import FlowPolicy
    from habc_policy.core.normalize import NormalizationStats, Normalizer

    cfg = FlowPolicyConfig(proprio_dim=14, camera_names=CAMERAS, image_size=(96, 96))
    stats = NormalizationStats(np.zeros(14, np.float32), np.ones(14, np.float32))
    ckpt.save_policy(root / "serve", FlowPolicy(cfg), Normalizer(stats, stats), learner_step=1)
    config = Path(__file__).resolve().parents[1] / "config" / "policy_server.yaml"
    cmd = ["policy_server", "--ros-args", "--params-file", str(config)]
    cmd += ["-p", f"checkpoint:={root / 'serve'}", "-p", "max_camera_joint_skew_s:=0.05"]
    cmd += ["-p", f"torch_threads:={args.threads}"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    rclpy.init()
    node = rclpy.create_node("bench_vision_feeder")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    joints = node.create_publisher(JointState, "/joint_states", 10)
    cams = [node.create_publisher(Image, f"/cameras/{c}/image_raw", 5) for c in CAMERAS]
    latencies: list[float] = []

    def on_chunk(msg: ActionChunk) -> None:
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        latencies.append(node.get_clock().now().nanoseconds * 1e-9 - stamp)

    node.create_subscription(ActionChunk, "/habc/action_chunk", on_chunk, 10)
    frame = np.random.default_rng(0).integers(0, 256, 224 * 224 * 3, dtype=np.uint8).tobytes()
    t0 = time.monotonic()
    next_cam = next_tick = t0
    try:
        while len(latencies) < args.chunks and time.monotonic() - t0 < 300:
            now = time.monotonic()
            stamp = node.get_clock().now().to_msg()
            if now >= next_tick:
                js = JointState(position=[0.0] * 14)
                js.header.stamp = stamp
                joints.publish(js)
                next_tick += 0.02
            if now >= next_cam:
                for pub in cams:
                    img = Image(height=224, width=224, encoding="rgb8", step=672, data=frame)
                    img.header.stamp = stamp
                    pub.publish(img)
                next_cam += 1 / 30
            ex.spin_once(timeout_sec=0.002)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=20)
        node.destroy_node()
        rclpy.try_shutdown()
    lat = np.asarray(latencies[2:]) * 1e3  # the first chunks include warm-up
    if lat.size:
        print(
            f"\npolicy_server, 3 cameras 224² → 96², default model, {args.threads} thread(s): "
            f"observation → chunk p50 {np.percentile(lat, 50):.0f} ms, p99 "
            f"{np.percentile(lat, 99):.0f} ms over {lat.size} chunks"
        )
    else:
        print("\npolicy_server published no chunk (see its log)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=6)
    p.add_argument("--length", type=int, default=100)
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--steps", type=int, default=5, help="timed learner steps (after the cache)")
    p.add_argument("--before-steps", type=int, default=2, help="timed steps before the cache")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    p.add_argument("--chunks", type=int, default=60, help="chunks timed through the node")
    p.add_argument("--serve-only", action="store_true")
    p.add_argument("--skip-serve", action="store_true")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="habc_bench_vision_"))
    try:
        if not args.serve_only:
            bench_learner(args, root)
        if not args.skip_serve:
            bench_serving(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Control-path benchmark: inference latency, stalled ticks, camera message loss.

1. Policy inference latency per chunk (p50 / p99), the default-size FlowPolicy (H = 50, d = 14),
   state-only and with three 224×224 cameras, in-process on CPU.
2. Stalled ticks over a long sim run: driver (sim) + policy server (default-size state-only
   policy) + arbiter as separate processes; every tick the arbiter had no fresh chunk for
   (``policy_stale``) after the policy first ran is a stall (goal: zero). Also the tick period
   jitter and the driver's hold-on-silence ticks.
3. Camera message loss between processes: a publisher process sends three 640×480 rgb8 images
   at 30 Hz, this process counts what arrives (reliable and best-effort), with the Fast DDS
   profile of ``env.sh`` (``config/fastdds_localhost.xml``: 16 MiB shared-memory segments).

Prints the figures measured in this run (no asserts). Needs the built workspace::

    source env.sh && python bench/bench_control.py --run-s 60 --camera-s 10
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import _claim_ros_domain  # noqa: E402

PERIOD = 0.02


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(_claim_ros_domain())
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_LOCALHOST_ONLY", "1")
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_localhost.xml"))
    os.environ.update(env)  # this process's own rclpy context uses the same domain
    return env


def bench_inference(reps: int, threads: int) -> None:
    import torch

    from habc_policy.core.checkpoint import load_policy
    from tests.nodes.conftest import make_checkpoint

    torch.set_num_threads(threads)
    print(f"== inference latency per chunk (CPU, {threads} torch threads, {reps} chunks)")
    with tempfile.TemporaryDirectory() as tmp:
        for label, cameras, size in (
            ("state-only", (), (224, 224)),
            ("3 cameras 224x224", ("top", "left_wrist", "right_wrist"), (224, 224)),
        ):
            path = Path(tmp) / label.replace(" ", "_")
            make_checkpoint(path, cameras=cameras, image_size=size, tiny=False)
            policy = load_policy(path)
            rng = np.random.default_rng(0)
            images = {c: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for c in cameras}
            q = rng.standard_normal(21).astype(np.float32)
            prompt = "pick up the red cube"
            for _ in range(3):
                policy.sample_actions(q, prompt, images=images or None)
            lat = []
            for _ in range(reps):
                t0 = time.perf_counter()
                policy.sample_actions(q, prompt, images=images or None)
                lat.append(time.perf_counter() - t0)
            ms = np.asarray(lat) * 1e3
            params_m = sum(p.numel() for p in policy.model.parameters()) / 1e6
            print(
                f"  {label:20s} p50 {np.percentile(ms, 50):7.1f} ms   p99 "
                f"{np.percentile(ms, 99):7.1f} ms   (num_inference_steps "
                f"{policy.config.num_inference_steps}, {params_m:.2f} M params)"
            )


def bench_run(env: dict[str, str], seconds: float) -> None:
    from habc_msgs.msg import ActionChunk, ExecutedCommand
    from tests.nodes.conftest import NodeProcess, RosClient, make_checkpoint

    print(f"== stalled ticks: driver (sim) + policy server + arbiter, {seconds:.0f} s")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        make_checkpoint(ckpt, tiny=False)
        logs = Path(tmp)
        procs = [
            NodeProcess("driver_node", env, logs, cameras="", sim__max_steps=10**7),
            NodeProcess("policy_server", env, logs, checkpoint=str(ckpt), torch_threads=1),
            NodeProcess("arbiter_node", env, logs),
        ]
        client = RosClient("bench_control")
        cmds = client.record(ExecutedCommand, "/habc/executed_command", 500)
        applied = client.record(ExecutedCommand, "/arx_x5_driver/applied_command", 500)
        chunks = client.record(ActionChunk, "/habc/action_chunk", 50)
        try:
            client.spin_until(
                lambda: any(list(m.controller) == [1, 1] for _, m in cmds),
                120.0,
                lambda: "the policy\n" + "\n".join(p.log()[-2000:] for p in procs),
            )
            n0, a0, c0 = len(cmds), len(applied), len(chunks)
            client.spin_for(seconds)
            run = [m for _, m in cmds[n0:]]
            app = [m for _, m in applied[a0:]]
            ch = [m for _, m in chunks[c0:]]
        finally:
            for p in procs:
                p.stop()
            client.close()
    stamps = np.array([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in run])
    gaps = np.diff(stamps) * 1e3
    stale = sum(m.hold_reason == "policy_stale" for m in run)
    rows = [m.chunk_row for m in run if list(m.controller) == [1, 1]]
    first_rows = {}
    for m in run:
        if list(m.controller) == [1, 1]:
            first_rows.setdefault(m.chunk_seq, m.chunk_row)
    print(
        f"  ticks {len(run)} (expected {seconds / PERIOD:.0f}), stalled (policy_stale) {stale}, "
        f"chunks {len(ch)}, rows per chunk used {len(rows) / max(len(ch), 1):.1f}"
    )
    print(
        f"  tick period p50 {np.percentile(gaps, 50):.1f} ms  p99 {np.percentile(gaps, 99):.1f} "
        f"ms  max {gaps.max():.1f} ms;  first row run of each chunk (latency in ticks) p50 "
        f"{np.percentile(list(first_rows.values()), 50):.0f} max {max(first_rows.values())}"
    )
    print(
        f"  driver: executed {len(app)}, held for silence "
        f"{sum(m.hold_reason == 'no_command' for m in app)}, rejected "
        f"{sum(m.hold and m.hold_reason not in ('no_command',) for m in app)}"
    )


PUBLISHER = textwrap.dedent(
    """
    import sys, time
    import numpy as np, rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    reliable, seconds = sys.argv[1] == "reliable", float(sys.argv[2])
    rclpy.init()
    node = rclpy.create_node("bench_camera_pub")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE if reliable
                     else ReliabilityPolicy.BEST_EFFORT)
    cams = ("top", "left_wrist", "right_wrist")
    pubs = [node.create_publisher(Image, f"/bench/cameras/{c}/image_raw", qos) for c in cams]
    data = np.random.default_rng(0).integers(0, 256, 480 * 640 * 3, dtype=np.uint8).tobytes()
    time.sleep(2.0)  # discovery
    n = int(seconds * 30)
    t0 = time.perf_counter()
    for i in range(n):
        for c, pub in zip(cams, pubs):
            msg = Image(height=480, width=640, encoding="rgb8", step=1920, data=data)
            msg.header.stamp = node.get_clock().now().to_msg()
            msg.header.frame_id = str(i)
            pub.publish(msg)
        time.sleep(max(0.0, t0 + (i + 1) / 30.0 - time.perf_counter()))
    print(n, flush=True)
    time.sleep(1.0)
    node.destroy_node()
    rclpy.try_shutdown()
    """
)


def bench_cameras(env: dict[str, str], seconds: float) -> None:
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from tests.nodes.conftest import RosClient

    profile = env.get("FASTDDS_DEFAULT_PROFILES_FILE", "(Fast DDS default)")
    print(f"== camera loss: 3 x 640x480 rgb8 @ 30 Hz for {seconds:.0f} s, profile {profile}")
    for mode in ("reliable", "best_effort"):
        client = RosClient(f"bench_camera_sub_{mode}")
        qos = QoSProfile(
            depth=5,
            reliability=ReliabilityPolicy.RELIABLE
            if mode == "reliable"
            else ReliabilityPolicy.BEST_EFFORT,
        )
        got = {
            c: client.record(Image, f"/bench/cameras/{c}/image_raw", qos)
            for c in ("top", "left_wrist", "right_wrist")
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, mode, str(seconds)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            client.spin_until(lambda p=proc: p.poll() is not None, seconds + 30, "the publisher")
            client.spin_for(0.5)
            sent = int((proc.stdout.read() if proc.stdout else "0").strip() or 0)
        finally:
            if proc.poll() is None:
                proc.kill()
            client.close()
        lat = [
            (t - (m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)) * 1e3
            for recs in got.values()
            for t, m in recs
        ]
        counts = ", ".join(f"{c} {len(r)}/{sent}" for c, r in got.items())
        lost = 3 * sent - sum(len(r) for r in got.values())
        print(
            f"  {mode:11s} received {counts}; lost {lost} of {3 * sent}; latency p50 "
            f"{np.percentile(lat, 50):.1f} ms p99 {np.percentile(lat, 99):.1f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="chunks per inference figure")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for inference")
    parser.add_argument("--run-s", type=float, default=60.0, help="seconds of the sim run")
    parser.add_argument("--camera-s", type=float, default=10.0, help="seconds of camera traffic")
    args = parser.parse_args()
    env = _env()
    bench_inference(args.reps, args.threads)
    bench_run(env, args.run_s)
    bench_cameras(env, args.camera_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())

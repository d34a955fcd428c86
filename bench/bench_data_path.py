"""Data-path benchmark: bag → labeled windows per second, and recorder drops under load.

    source env.sh && python bench/bench_data_path.py [--episodes 20] [--seconds 30]

1. Writes ``--episodes`` synthetic 400-step episode bags (14-dim bimanual, one takeover each),
   then times bag reading (every topic decoded) + intervention-aware labeling + windowing.
2. Starts the real ``episode_recorder`` node, publishes three 640×480 rgb8 cameras at 30 Hz and
   joint states + executed commands at 50 Hz from this process for ``--seconds`` inside one
   episode, ends it, and counts what the bag holds against what was published (goal: zero
   drops). Loopback only, a private ROS domain.

Prints rates measured in this one run; asserts nothing.
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


def bench_windows(n_episodes: int, folder: Path) -> None:
    from habc_learner.core.bag_reader import read_episodes, write_episode
    from habc_learner.core.episode import synthetic_episode
    from habc_learner.core.labeling import LabelingConfig, label_episode
    from habc_learner.core.windows import WindowConfig, episode_windows

    for i in range(n_episodes):
        ep = synthetic_episode(
            [("policy", 200), ("human", 60), ("policy", 140)],
            "success",
            seed=i,
            episode_id=f"ep-{i:03d}",
        )
        write_episode(folder / f"ep-{i:03d}", ep)
    t0 = time.perf_counter()
    episodes, report = read_episodes(folder)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    windows = 0
    for ep in episodes:
        label_episode(ep, LabelingConfig())
        windows += len(episode_windows(ep, WindowConfig()))
    t_label = time.perf_counter() - t0
    steps = sum(e.length for e in episodes)
    print(
        f"bag -> episodes: {len(episodes)} bags, {steps} steps in {t_read:.2f} s "
        f"({steps / t_read:,.0f} steps/s); skipped {len(report.skipped)}"
    )
    print(
        f"labeling + windowing: {windows} windows in {t_label:.3f} s "
        f"({windows / t_label:,.0f} windows/s)"
    )
    print(f"bag -> labeled windows, end to end: {windows / (t_read + t_label):,.0f} windows/s")


def bench_recorder(seconds: float, folder: Path) -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState

    from habc_common import bag_format as bf
    from habc_learner.core.bag_reader import read_episode
    from habc_msgs.msg import ExecutedCommand
    from habc_msgs.srv import EndEpisode, StartEpisode

    env = dict(os.environ, ROS_DOMAIN_ID=os.environ.get("ROS_DOMAIN_ID", "77"))
    os.environ.update(env)
    cams = ["top", "left_wrist", "right_wrist"]
    rec = subprocess.Popen(
        [
            "episode_recorder",
            "--ros-args",
            "-p",
            f"bag_dir:={folder}",
            "-p",
            f"cameras:={','.join(cams)}",
            "-p",
            "min_free_gb:=0.5",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    rclpy.init()
    node = rclpy.create_node("bench_publisher")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    cam_pubs = [node.create_publisher(Image, bf.camera_topic(c), qos) for c in cams]
    joint_pub = node.create_publisher(JointState, bf.TOPIC_JOINT_STATES, qos)
    cmd_pub = node.create_publisher(ExecutedCommand, bf.TOPIC_EXECUTED_COMMAND, qos)
    start_cli = node.create_client(StartEpisode, "/habc/start_episode")
    end_cli = node.create_client(EndEpisode, "/habc/end_episode")

    def call(cli, req):
        while not cli.wait_for_service(timeout_sec=0.5):
            pass
        fut = cli.call_async(req)
        while not fut.done():
            ex.spin_once(timeout_sec=0.05)
        return fut.result()

    while min(p.get_subscription_count() for p in [*cam_pubs, joint_pub, cmd_pub]) == 0:
        ex.spin_once(timeout_sec=0.1)
    episode = call(start_cli, StartEpisode.Request(task="bench")).episode_id
    frame = np.random.default_rng(0).integers(0, 256, 480 * 640 * 3, dtype=np.uint8).tobytes()
    image = Image(height=480, width=640, encoding="rgb8", step=640 * 3, data=frame)
    joints = JointState(name=[f"j{i}" for i in range(14)], position=[0.0] * 14)
    sent_images = sent_ticks = 0
    t0 = time.monotonic()
    next_cam, next_tick = t0, t0
    while time.monotonic() - t0 < seconds:
        now = time.monotonic()
        if now >= next_cam:
            for pub in cam_pubs:
                pub.publish(image)
            sent_images += len(cam_pubs)
            next_cam += 1 / 30
        if now >= next_tick:
            joint_pub.publish(joints)
            cmd_pub.publish(
                ExecutedCommand(
                    episode_id=episode, step_index=sent_ticks, controller=[1, 1], action=[0.0] * 14
                )
            )
            sent_ticks += 1
            next_tick += 1 / 50
        ex.spin_once(timeout_sec=0.001)
    time.sleep(1.0)
    res = call(end_cli, EndEpisode.Request(outcome=1, marked_by="bench"))
    rec.send_signal(signal.SIGINT)
    rec.wait(timeout=20)
    node.destroy_node()
    rclpy.try_shutdown()
    ep = read_episode(folder / episode)
    from rosbags.rosbag2 import Reader

    with Reader(folder / episode) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    got_images = sum(counts.get(bf.camera_topic(c), 0) for c in cams)
    print(f"recorder, {seconds:.0f} s, 3×640×480 rgb8 @ 30 Hz + joints/commands @ 50 Hz:")
    print(f"  images: {got_images}/{sent_images} recorded ({sent_images - got_images} dropped)")
    print(
        f"  commands: {res.num_steps}/{sent_ticks} recorded; joint states "
        f"{counts.get(bf.TOPIC_JOINT_STATES, 0)}/{sent_ticks}; episode of {ep.length} steps"
    )
    size = sum(p.stat().st_size for p in (folder / episode).iterdir())
    print(f"  bag size {size / 1e6:.0f} MB ({size / 1e6 / seconds:.0f} MB/s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--skip-recorder", action="store_true")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="habc_bench_"))
    try:
        (root / "windows").mkdir()
        bench_windows(args.episodes, root / "windows")
        if not args.skip_recorder:
            (root / "rec").mkdir()
            bench_recorder(args.seconds, root / "rec")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

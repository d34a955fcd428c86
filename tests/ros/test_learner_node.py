"""The learner node over real DDS: new bags → a training round → an announced checkpoint."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from habc_learner.core.bag_reader import write_episode
from habc_learner.core.episode import scenario_episode

pytestmark = pytest.mark.ros
TIMEOUT_S = 120.0


def _bag(folder: Path, scenario: str, seed: int) -> None:
    write_episode(folder / f"{scenario}-{seed}", scenario_episode(scenario, seed=seed, length=80))


def test_learner_node_trains_and_announces(ros_env: dict[str, str], tmp_path: Path) -> None:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    from habc_msgs.srv import AnnounceCheckpoint

    bags, out = tmp_path / "bags", tmp_path / "learner"
    bags.mkdir()
    _bag(bags, "demo", 0)
    _bag(bags, "takeover_success", 1)
    _bag(bags, "autonomous_success", 4)  # with the demo: 3 bags, but only 2 rollouts count

    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("fake_policy_server", context=context)
    announced: list[Any] = []

    def serve(req: Any, res: Any) -> Any:
        announced.append(req)
        res.accepted, res.active_checkpoint_id = True, req.checkpoint_id
        return res

    node.create_service(AnnounceCheckpoint, "/habc/announce_checkpoint", serve)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    params = {
        "bag_dirs": f"['{bags}']",
        "out_dir": str(out),
        "method": "habc",
        "steps_per_round": "3",
        "min_new_episodes": "2",
        "poll_period_s": "0.3",
        "batch_size": "16",
    }
    cmd = ["learner", "--ros-args"]
    for key, value in params.items():
        cmd += ["-p", f"{key}:={value}"]
    proc = subprocess.Popen(
        cmd, env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while len(announced) < n:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, f"no announcement #{n}"
            executor.spin_once(timeout_sec=0.1)

    try:
        wait_for(1)
        first = announced[0]
        manifest = json.loads((Path(first.path) / "manifest.json").read_text())
        assert first.learner_step == 3 == manifest["learner_step"]
        model = Path(first.path) / "model.safetensors"
        assert first.sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
        assert first.checkpoint_id == manifest["checkpoint_id"]
        # One new rollout is not enough for a round (min 2), nor is a new demonstration.
        _bag(bags, "autonomous_failure", 2)
        _bag(bags, "demo", 5)
        time.sleep(1.5)
        for _ in range(10):
            executor.spin_once(timeout_sec=0.1)
        assert len(announced) == 1
        _bag(bags, "one_arm_takeover", 3)
        wait_for(2)
        assert announced[1].learner_step == 6
        assert announced[1].checkpoint_id != first.checkpoint_id
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_image_size_parameter_forms(ros_env: dict[str, str]) -> None:
    from habc_learner.core.learner_config import parse_image_size

    assert parse_image_size(96) == (96, 96)
    assert parse_image_size([48, 64]) == (48, 64)
    assert parse_image_size("32") == (32, 32)  # what `image_size:=32` of the graph passes
    assert parse_image_size("48x64") == (48, 64)
    with pytest.raises(ValueError, match="image_size must be"):
        parse_image_size("big")

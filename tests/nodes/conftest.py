"""Helpers of the node tests: node processes, an in-test ROS client, tiny checkpoints.

Every node runs as its own OS process started from its installed console script with the
project's parameter file plus ``-p`` overrides, in the environment of ``ros_env`` (a ROS domain
id of this test run's own, loopback only). The test talks to them through a private rclpy
``Context`` with a ``SingleThreadedExecutor``; every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import REPO_ROOT

CONFIG = REPO_ROOT / "config"
PACKAGE_OF = {
    "driver_node": "arx_x5_driver",
    "scripted_operator_node": "habc_sim",
    "policy_server": "habc_policy",
    "arbiter_node": "habc_policy",
    "episode_recorder": "habc_learner",
    "learner": "habc_learner",
}
PARAMS_FILE = {  # the sim bringup's files, as graph.yaml gives them (backend:=sim)
    "driver_node": ("driver.yaml", "driver_sim.yaml"),
    "scripted_operator_node": ("scripted_operator.yaml",),
    "policy_server": ("policy_server.yaml", "policy_server_sim.yaml"),
    "arbiter_node": ("arbiter.yaml", "arbiter_sim.yaml"),
    "episode_recorder": ("recorder.yaml",),
    "learner": ("learner.yaml",),
}
# Sim home pose (after reset): the tiny test policies act around it.
SIM_HOME = np.array(
    [0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.1, 0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.1],
    dtype=np.float32,
)


def executable(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    path = REPO_ROOT / "install" / "lib" / PACKAGE_OF[name] / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed (run scripts/setup.sh)")
    return str(path)


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return "''"  # YAML for the empty string (a bare ":=" is not a value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_param(v) for v in value) + "]"
    return str(value)


class NodeProcess:
    """One node as an OS process (console script + params file + overrides)."""

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        log_dir: Path,
        *,
        extra_params_files: tuple[str, ...] = (),
        log_name: str = "",
        **overrides: Any,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{log_name or name}.log"
        cmd = [executable(name), "--ros-args"]
        for file in (*PARAMS_FILE[name], *extra_params_files):  # e.g. + driver_arx.yaml
            cmd += ["--params-file", str(CONFIG / file)]
        for key, value in overrides.items():
            cmd += ["-p", f"{key.replace('__', '.')}:={_param(value)}"]
        self.cmd = cmd
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self._log.close()

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)


class RosClient:
    """An in-test node with a private context; records topics, calls services."""

    def __init__(self, name: str) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def now_s(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def record(self, msg_type: Any, topic: str, qos: Any = 50) -> list[tuple[float, Any]]:
        """Every message of ``topic`` as (receive time s, message)."""
        received: list[tuple[float, Any]] = []
        self.node.create_subscription(
            msg_type, topic, lambda m: received.append((self.now_s(), m)), qos
        )
        return received

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.01)

    def spin_until(
        self, done: Callable[[], bool], timeout: float, what: str | Callable[[], str]
    ) -> None:
        """Spin until ``done()``; on timeout fail with ``what`` (a callable: evaluated then)."""
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() > end:
                text = what() if callable(what) else what
                raise AssertionError(f"timed out after {timeout} s waiting for {text}")
            self.executor.spin_once(timeout_sec=0.01)

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 30.0) -> Any:
        client = self.node.create_client(srv_type, name)
        try:
            self.spin_until(client.service_is_ready, timeout, f"service {name}")
            future = client.call_async(request)
            self.spin_until(future.done, timeout, f"the response of {name}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def make_checkpoint(
    path: Path,
    *,
    learner_step: int = 100,
    action_dim: int = 14,
    proprio_dim: int = 21,
    horizon: int = 50,
    cameras: tuple[str, ...] = (),
    image_size: tuple[int, int] = (64, 64),
    seed: int = 0,
    tiny: bool = True,
) -> dict[str, Any]:
    """A randomly initialised FlowPolicy checkpoint whose actions stay near the sim home pose
    (action mean = home, std 0.01 rad). Returns the manifest."""
    import torch

    from habc_policy.core import checkpoint as ckpt
    from habc_policy.core.configuration_flow import FlowPolicyConfig
    from habc_policy.core.modeling_flow import FlowPolicy
    from habc_policy.core.normalize import NormalizationStats, Normalizer

    size = (
        dict(
            cnn_channels=(8, 16),
            feature_dim=32,
            hidden_dim=32,
            num_blocks=1,
            time_embed_dim=16,
            prompt_dim=8,
            num_inference_steps=4,
        )
        if tiny
        else {}
    )
    config = FlowPolicyConfig(
        horizon=horizon,
        action_dim=action_dim,
        proprio_dim=proprio_dim,
        camera_names=cameras,
        image_size=image_size,
        **size,
    )
    torch.manual_seed(seed)
    policy = FlowPolicy(config)
    mean = np.resize(SIM_HOME, action_dim).astype(np.float32)
    normalizer = Normalizer(
        NormalizationStats(np.zeros(proprio_dim, np.float32), np.ones(proprio_dim, np.float32)),
        NormalizationStats(mean, np.full(action_dim, 0.01, np.float32)),
    )
    return ckpt.save_policy(path, policy, normalizer, learner_step=learner_step)

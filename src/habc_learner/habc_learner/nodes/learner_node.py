"""Learner node: watches the bag folder, trains a round per N new episodes, announces results.

The work is :class:`habc_learner.learn.LearnerJob` — the same code path as ``habc-learn`` — run
in a worker thread so the node stays responsive. After each round the checkpoint (written
atomically by the trainer) is announced to the policy server through
``habc_msgs/srv/AnnounceCheckpoint``; the server verifies and hot-swaps it.
Parameters: the keys of :class:`~habc_learner.core.learner_config.LearnerConfig` (see
``config/learner.yaml``) plus ``announce_service``.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

from habc_common import topics
from habc_learner.core.learner_config import (
    from_node_parameters,
    node_parameter_defaults,
    yield_cpu,
)
from habc_learner.learn import LearnerJob
from habc_learner.nodes import run_node
from habc_msgs.srv import AnnounceCheckpoint


class LearnerNode(Node):
    def __init__(self) -> None:
        super().__init__("learner")
        # Every learner knob is a parameter, under its LearnerConfig key (critic.lr, policy.
        # cameras, …); learner_config is the one mapping between the two.
        any_type = ParameterDescriptor(dynamic_typing=True)
        values = {
            key: self.declare_parameter(key, default, any_type).value
            for key, default in node_parameter_defaults().items()
        }
        config = from_node_parameters(values)
        service = str(self.declare_parameter("announce_service", topics.ANNOUNCE_CHECKPOINT).value)
        self.poll_period_s = config.poll_period_s
        bag_dirs = list(config.bag_dirs)
        for d in bag_dirs:
            d.mkdir(parents=True, exist_ok=True)
        self.job = LearnerJob(config)
        import torch

        torch.set_num_threads(config.torch_threads)
        # Before the worker starts: the training thread (and torch's pool it creates) inherit
        # the niceness; this node's ROS threads, already running, keep theirs.
        yield_cpu(config.cpu_nice)
        self.announce = self.create_client(AnnounceCheckpoint, service)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="learner", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"learner: {self.job.config.method}, round per {self.job.config.min_new_episodes} "
            f"new episode(s) in {[str(d) for d in bag_dirs]}, announcing to {service}; "
            + (
                f"image policy, cameras {list(self.job.config.cameras)} at "
                f"{self.job.config.image_size} (joints-only proprio)"
                if self.job.config.cameras
                else f"state-only policy (env_state: {self.job.uses_env_state})"
            )
        )

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                found = self.job.scan()
                for path, reason in found.skipped:
                    self.get_logger().warn(f"skipped bag {path.name}: {reason}")
                for path, episode_id, first in found.duplicates:
                    self.get_logger().warn(f"duplicate episode {episode_id}: {path} (of {first})")
                if found.used:
                    self.get_logger().info(
                        f"{len(found.used)} new episode(s), {len(self.job.pending)} pending"
                    )
                if self.job.ready:
                    summary = self.job.run_round()
                    self.get_logger().info(summary.line())
                    self._announce(summary.checkpoint)
            except Exception as exc:  # keep the node alive; the next poll retries
                self.get_logger().error(f"learner round failed: {type(exc).__name__}: {exc}")
            self._stop.wait(self.poll_period_s)

    def _announce(self, checkpoint: Path) -> None:
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        request = AnnounceCheckpoint.Request(
            checkpoint_id=manifest["checkpoint_id"],
            path=str(checkpoint.resolve()),
            sha256=manifest["files"]["model.safetensors"],  # the service's contract
            learner_step=int(manifest["learner_step"]),
        )
        if not self.announce.wait_for_service(timeout_sec=5.0):
            self.get_logger().warn(
                f"no policy server answers {self.announce.srv_name}; checkpoint {checkpoint} "
                "is written and will be picked up when announced again"
            )
            return
        done = threading.Event()
        future = self.announce.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout=30.0):
            self.get_logger().warn("the policy server did not answer the announcement in 30 s")
            return
        res = future.result()
        if res.accepted:
            self.get_logger().info(f"policy server now serves {res.active_checkpoint_id}")
        else:
            self.get_logger().error(
                f"policy server refused {request.checkpoint_id}: {res.message} "
                f"(still serving {res.active_checkpoint_id})"
            )

    def destroy_node(self) -> None:
        self._stop.set()
        self._worker.join(timeout=5.0)
        self.job.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node("learner", LearnerNode, (ValueError, FileNotFoundError), args, threads=2)


if __name__ == "__main__":
    sys.exit(main())

"""Learner node: watches the bag folder, trains a round per N new episodes, announces results.

The work is :class:`habc_learner.learn.LearnerJob` — the same code path as ``habc-learn`` — run
in a worker thread so the node stays responsive. After each round the checkpoint (written
atomically by the trainer) is announced to the policy server through
``habc_msgs/srv/AnnounceCheckpoint``; the server verifies and hot-swaps it.
Parameters: see ``config/learner.yaml``.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

from habc_learner.learn import LearnerJob, LearnerJobConfig
from habc_learner.nodes import run_node
from habc_msgs.srv import AnnounceCheckpoint


def parse_image_size(value: object) -> tuple[int, int]:
    """``image_size`` as N, [H, W], "N" or "HxW" -> (H, W); ValueError naming the forms."""
    try:
        if isinstance(value, str):
            parts = [int(v) for v in value.lower().replace("x", " ").split()]
        elif isinstance(value, int):
            parts = [value]
        else:
            parts = [int(v) for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise ValueError(f"image_size must be N, [H, W], 'N' or 'HxW', got {value!r}")
    return parts[0], parts[1]


class LearnerNode(Node):
    def __init__(self) -> None:
        super().__init__("learner")
        p = self.declare_parameter
        bag_dirs = [Path(d) for d in p("bag_dirs", ["runs/bags"]).value]
        init = str(p("init_checkpoint", "").value)
        self.poll_period_s = float(p("poll_period_s", 5.0).value)
        service = str(p("announce_service", "/habc/announce_checkpoint").value)
        threads = int(p("torch_threads", 1).value)
        for d in bag_dirs:
            d.mkdir(parents=True, exist_ok=True)
        self.job = LearnerJob(
            LearnerJobConfig(
                bag_dirs=tuple(bag_dirs),
                out_dir=Path(str(p("out_dir", "runs/learner").value)),
                method=str(p("method", "habc").value),
                steps_per_round=int(p("steps_per_round", 1000).value),
                min_new_episodes=int(p("min_new_episodes", 10).value),
                init_checkpoint=Path(init) if init else None,
                batch_size=int(p("batch_size", 256).value),
                device=str(p("device", "cpu").value),
                use_env_state=bool(p("use_env_state", True).value),
                count_demos=bool(p("count_demos", False).value),
                cameras=tuple(
                    c.strip() for c in str(p("cameras", "").value).split(",") if c.strip()
                ),
                image_size=parse_image_size(
                    p(
                        "image_size",
                        [96, 96],
                        ParameterDescriptor(dynamic_typing=True),  # N, [H, W] or "N" / "HxW"
                    ).value
                ),
                image_augment=str(p("image_augment", "shift").value),
                augment_pad=int(p("augment_pad", 4).value),
                progress=False,
            )
        )
        import torch

        torch.set_num_threads(threads)
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

"""Episode recorder node: one rosbag2 (MCAP) episode per StartEpisode/EndEpisode pair.

Subscribes (serialized, no deserialization on the hot path) to the joint states, the executed
commands with their authority tags, the driver's applied commands (what the arm was really
sent), the action chunks, the joystick, the episode events, the
privileged sim state and every configured camera, and writes them into the running episode's
bag through :class:`habc_learner.core.recorder.EpisodeRecorder`.

Services: ``/habc/start_episode`` (habc_msgs/StartEpisode), ``/habc/end_episode``
(habc_msgs/EndEpisode). Publishes ``/habc/episode_event`` at start and end.
Parameters: see ``config/recorder.yaml``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image, JointState, Joy
from std_msgs.msg import Float32MultiArray

from habc_common import bag_format as bf
from habc_common import topics
from habc_learner.core.recorder import EpisodeRecorder, RecorderConfig, RecorderError
from habc_learner.nodes import run_node
from habc_msgs.msg import ActionChunk, EpisodeEvent, ExecutedCommand
from habc_msgs.srv import EndEpisode, StartEpisode

OUTCOME_NAMES = {
    EpisodeEvent.OUTCOME_SUCCESS: "success",
    EpisodeEvent.OUTCOME_FAILURE: "failure",
    EpisodeEvent.OUTCOME_ABORTED: "aborted",
}


class RecorderNode(Node):
    def __init__(self) -> None:
        super().__init__("episode_recorder")
        bag_dir = self.declare_parameter("bag_dir", "runs/bags").value
        min_free_gb = float(self.declare_parameter("min_free_gb", 2.0).value)
        cameras_text = str(self.declare_parameter("cameras", "top,left_wrist,right_wrist").value)
        cameras = [c.strip() for c in cameras_text.split(",") if c.strip()]
        compressed = bool(self.declare_parameter("compressed_images", False).value)
        self.default_task = str(self.declare_parameter("task", "transfer_cube").value)
        self.default_prompt = str(self.declare_parameter("prompt", "").value)
        source = str(self.declare_parameter("source", "rollout").value)
        arm_names = list(self.declare_parameter("arm_names", ["left", "right"]).value)
        arm_dims = list(self.declare_parameter("arm_dims", [7, 7]).value)
        if len(arm_names) != len(arm_dims):
            raise ValueError(f"arm_names {arm_names} and arm_dims {arm_dims} differ in length")
        arms, lo = [], 0
        for name, dim in zip(arm_names, arm_dims):
            arms.append((name, lo, lo + int(dim)))
            lo += int(dim)
        self.recorder = EpisodeRecorder(
            RecorderConfig(
                bag_dir=Path(bag_dir),
                min_free_bytes=int(min_free_gb * 1024**3),
                arms=tuple(arms),
                source=source,
            )
        )
        for path in self.recorder.recovered:
            self.get_logger().warn(f"partial bag of a killed recorder marked incomplete: {path}")

        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        recorded = [
            (bf.TOPIC_JOINT_STATES, JointState, bf.MSGTYPE_JOINT_STATE, reliable),
            (bf.TOPIC_EXECUTED_COMMAND, ExecutedCommand, bf.MSGTYPE_EXECUTED_COMMAND, reliable),
            (bf.TOPIC_APPLIED_COMMAND, ExecutedCommand, bf.MSGTYPE_EXECUTED_COMMAND, reliable),
            (bf.TOPIC_ACTION_CHUNK, ActionChunk, bf.MSGTYPE_ACTION_CHUNK, reliable),
            (bf.TOPIC_JOY, Joy, bf.MSGTYPE_JOY, reliable),
            (bf.TOPIC_ENV_STATE, Float32MultiArray, bf.MSGTYPE_FLOAT32_MULTI_ARRAY, reliable),
        ]
        image_type, image_msgtype = (
            (CompressedImage, bf.MSGTYPE_COMPRESSED_IMAGE)
            if compressed
            else (Image, bf.MSGTYPE_IMAGE)
        )
        for cam in cameras:
            recorded.append(
                (
                    bf.camera_topic(cam, compressed),
                    image_type,
                    image_msgtype,
                    qos_profile_sensor_data,
                )
            )
        for topic, msg_cls, msgtype, qos in recorded:
            self.create_subscription(
                msg_cls, topic, self._writer_for(topic, msgtype), qos, raw=True
            )
        self.events = self.create_publisher(EpisodeEvent, bf.TOPIC_EPISODE_EVENT, 10)
        self.create_service(StartEpisode, topics.START_EPISODE, self._start)
        self.create_service(EndEpisode, topics.END_EPISODE, self._end)
        self.get_logger().info(
            f"recording into {self.recorder.bag_dir} ({len(recorded)} topics, cameras {cameras})"
        )

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _writer_for(self, topic: str, msgtype: str) -> Callable[[bytes], None]:
        if topic in (bf.TOPIC_EXECUTED_COMMAND, bf.TOPIC_APPLIED_COMMAND):

            def write_command(cdr: bytes) -> None:
                # Only the running episode's ticks: the arbiter learns of a new episode from
                # its start event, a few ticks after the recording began (the driver's applied
                # commands carry the episode id of the command they executed).
                running = self.recorder.episode_id
                if running and deserialize_message(cdr, ExecutedCommand).episode_id == running:
                    self._write(topic, msgtype, cdr)

            return write_command

        def write(cdr: bytes) -> None:
            self._write(topic, msgtype, cdr)

        return write

    def _write(self, topic: str, msgtype: str, cdr: bytes) -> None:
        task = self.recorder.task
        if self.recorder.write(topic, msgtype, self._now_ns(), cdr):
            return
        # The disk filled (or another write error): the episode is lost, the node lives on.
        assert self.recorder.lost is not None
        episode_id, why, path = self.recorder.lost
        self.get_logger().error(
            f"episode {episode_id} lost: {why}; bag closed and kept as {path} (the learner "
            "skips it); earlier episodes are intact; free disk space before the next episode"
        )
        self._event(
            episode_id,
            EpisodeEvent.EVENT_END,
            EpisodeEvent.OUTCOME_ABORTED,
            "recorder",
            task,
            "",
            f"recording failed: {why}",
            self._now_ns(),
        )

    def _event(
        self,
        episode_id: str,
        event: int,
        outcome: int,
        marked_by: str,
        task: str,
        prompt: str,
        reason: str,
        t_ns: int,
    ) -> None:
        msg = EpisodeEvent()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t_ns, 1_000_000_000)
        msg.episode_id = episode_id
        msg.event, msg.outcome, msg.marked_by = event, outcome, marked_by
        msg.task, msg.prompt, msg.reason = task, prompt, reason
        self.events.publish(msg)

    def _start(
        self, req: StartEpisode.Request, res: StartEpisode.Response
    ) -> StartEpisode.Response:
        t_ns = self._now_ns()
        task = req.task or self.default_task
        prompt = req.prompt or self.default_prompt  # recorded, announced, served
        try:
            res.episode_id = self.recorder.start(task, prompt, req.episode_id, t_ns)
        except (RecorderError, ValueError) as exc:
            res.success, res.message = False, str(exc)
            self.get_logger().error(f"start refused: {exc}")
            return res
        res.success = True
        self._event(
            res.episode_id,
            EpisodeEvent.EVENT_START,
            EpisodeEvent.OUTCOME_UNKNOWN,
            "",
            task,
            prompt,
            "start requested",
            t_ns,
        )
        self.get_logger().info(f"episode {res.episode_id} started ({task})")
        return res

    def _end(self, req: EndEpisode.Request, res: EndEpisode.Response) -> EndEpisode.Response:
        t_ns = self._now_ns()
        outcome = OUTCOME_NAMES.get(req.outcome)
        if outcome is None:
            res.success, res.message = (
                False,
                f"outcome {req.outcome} is not success/failure/aborted",
            )
            return res
        task = self.recorder.task
        try:
            res.episode_id, res.num_steps = self.recorder.end(
                outcome, req.marked_by or "operator", req.reason, t_ns, req.episode_id
            )
        except RecorderError as exc:
            res.success, res.message = False, str(exc)
            return res
        res.success = True
        self._event(
            res.episode_id,
            EpisodeEvent.EVENT_END,
            req.outcome,
            req.marked_by or "operator",
            task,
            "",
            req.reason,
            t_ns,
        )
        self.get_logger().info(f"episode {res.episode_id} ended: {outcome}, {res.num_steps} steps")
        return res

    def destroy_node(self) -> None:
        self.recorder.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node("episode_recorder", RecorderNode, (RecorderError, ValueError), args)


if __name__ == "__main__":
    sys.exit(main())

"""Echo process for tests/ros/test_msgs_roundtrip.py (runs as its own OS process).

Republishes every message received on /roundtrip/in/<Type> to /roundtrip/out/<Type> unchanged,
and answers each habc_msgs service with a response computed from the request, so the test can
check that every field crossed DDS twice (there and back).
"""

from __future__ import annotations

import sys

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState, Joy

from habc_msgs.msg import ActionChunk, EpisodeEvent, ExecutedCommand
from habc_msgs.srv import AnnounceCheckpoint, EndEpisode, StartEpisode

MESSAGE_TYPES = (
    ActionChunk,
    ExecutedCommand,
    EpisodeEvent,
    Image,
    CompressedImage,
    JointState,
    Joy,
    DiagnosticArray,
)


def start_episode(req: StartEpisode.Request, res: StartEpisode.Response) -> StartEpisode.Response:
    res.success = bool(req.task)
    res.episode_id = req.episode_id or f"ep-{req.task}"
    res.message = f"{req.task}|{req.prompt}"
    return res


def end_episode(req: EndEpisode.Request, res: EndEpisode.Response) -> EndEpisode.Response:
    res.success = req.outcome in (
        EpisodeEvent.OUTCOME_SUCCESS,
        EpisodeEvent.OUTCOME_FAILURE,
        EpisodeEvent.OUTCOME_ABORTED,
    )
    res.episode_id = req.episode_id
    res.num_steps = len(req.reason)
    res.message = req.marked_by
    return res


def announce(
    req: AnnounceCheckpoint.Request, res: AnnounceCheckpoint.Response
) -> AnnounceCheckpoint.Response:
    res.accepted = bool(req.sha256)
    res.active_checkpoint_id = req.checkpoint_id
    res.message = f"{req.path}@{req.learner_step}"
    return res


class Echo(Node):
    def __init__(self) -> None:
        super().__init__("roundtrip_echo")
        self._pubs = []
        for msg_type in MESSAGE_TYPES:
            name = msg_type.__name__
            pub = self.create_publisher(msg_type, f"/roundtrip/out/{name}", 10)
            self._pubs.append(pub)
            self.create_subscription(msg_type, f"/roundtrip/in/{name}", pub.publish, 10)
        self.create_service(StartEpisode, "/roundtrip/start_episode", start_episode)
        self.create_service(EndEpisode, "/roundtrip/end_episode", end_episode)
        self.create_service(AnnounceCheckpoint, "/roundtrip/announce_checkpoint", announce)
        self.get_logger().info("echo ready")


def main() -> int:
    rclpy.init()
    node = Echo()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Episodes through the running node graph: the ROS side of the main job.

:class:`EpisodeRunner` is a small rclpy client of a running bringup (``habc-launch`` or
``ros2 launch habc bringup.launch.py``): per episode it resets the simulated robot
(``/arx_x5_driver/reset_episode``), starts recording (``/habc/start_episode``), and waits for
the episode's end event, which the operator's mark button produces (the scripted operator
presses it when the simulator says the episode is over; the arbiter then calls
``/habc/end_episode``). It also follows ``/habc/action_chunk`` to know which checkpoint the
policy server serves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from habc_common import topics

OUTCOMES = {1: "success", 2: "failure", 3: "aborted"}


@dataclass(frozen=True)
class EpisodeOutcome:
    episode_id: str
    outcome: str  # success | failure | aborted
    marked_by: str
    checkpoint_id: str  # the checkpoint serving when the episode ended
    seconds: float


class EpisodeRunner:
    """Drives episodes of a running sim bringup (see the module docstring)."""

    def __init__(self, driver_node: str = "arx_x5_driver", timeout_s: float = 60.0) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from std_srvs.srv import Trigger

        from habc_common import bag_format as bf
        from habc_msgs.msg import ActionChunk, EpisodeEvent
        from habc_msgs.srv import EndEpisode, StartEpisode

        self.timeout_s = timeout_s
        self._context = Context()
        rclpy.init(context=self._context)
        self.node = rclpy.create_node("habc_episode_runner", context=self._context)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self.node)
        self._reset = self.node.create_client(Trigger, f"/{driver_node}/reset_episode")
        self._start = self.node.create_client(StartEpisode, topics.START_EPISODE)
        self._end = self.node.create_client(EndEpisode, topics.END_EPISODE)
        self._types = (Trigger, StartEpisode, EndEpisode)
        self.events: list[Any] = []
        self.serving = ""  # checkpoint id of the newest action chunk
        self.node.create_subscription(EpisodeEvent, bf.TOPIC_EPISODE_EVENT, self.events.append, 50)
        self.node.create_subscription(ActionChunk, bf.TOPIC_ACTION_CHUNK, self._on_chunk, 10)

    def _on_chunk(self, msg: Any) -> None:
        self.serving = msg.checkpoint_id

    def spin_until(self, done: Any, what: str, timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            self._executor.spin_once(timeout_sec=0.05)

    def _call(self, client: Any, request: Any) -> Any:
        self.spin_until(client.service_is_ready, f"service {client.srv_name}")
        future = client.call_async(request)
        self.spin_until(future.done, f"the answer of {client.srv_name}")
        return future.result()

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until every service answers and the policy server publishes chunks."""
        for client in (self._reset, self._start, self._end):
            self.spin_until(client.service_is_ready, f"service {client.srv_name}", timeout_s)
        self.spin_until(lambda: bool(self.serving), "the first action chunk", timeout_s)

    def wait_serving(self, checkpoint_id_not: str, timeout_s: float) -> str:
        """Until the policy server serves a checkpoint other than ``checkpoint_id_not``."""
        self.spin_until(
            lambda: self.serving and self.serving != checkpoint_id_not,
            f"a checkpoint other than {checkpoint_id_not}",
            timeout_s,
        )
        return self.serving

    def run_episode(self, task: str, prompt: str = "") -> EpisodeOutcome:
        """Reset the robot, record one episode, wait until the operator marks its outcome."""
        trigger, start_type, end_type = self._types
        t0 = time.monotonic()
        reset = self._call(self._reset, trigger.Request())
        if not reset.success:
            raise RuntimeError(f"driver refused to reset: {reset.message}")
        started = self._call(self._start, start_type.Request(task=task, prompt=prompt))
        if not started.success:
            raise RuntimeError(f"recorder refused to start: {started.message}")
        episode = started.episode_id

        def ended() -> Any:
            return next((e for e in self.events if e.event == 1 and e.episode_id == episode), None)

        try:
            self.spin_until(lambda: ended() is not None, f"the end of {episode}")
        except TimeoutError:
            # Nobody marked it: close it as aborted (never learned from) and say so.
            self._call(
                self._end,
                end_type.Request(
                    episode_id=episode,
                    outcome=3,
                    marked_by="episode_runner",
                    reason="no outcome marked in time",
                ),
            )
            self.spin_until(lambda: ended() is not None, f"the end event of {episode}")
        event = ended()
        return EpisodeOutcome(
            episode_id=episode,
            outcome=OUTCOMES.get(event.outcome, "unknown"),
            marked_by=event.marked_by,
            checkpoint_id=self.serving,
            seconds=time.monotonic() - t0,
        )

    def close(self) -> None:
        import rclpy

        self.node.destroy_node()
        rclpy.try_shutdown(context=self._context)

"""The arbiter node at an episode's start, with the operator's deadman held over from the
previous scene (as the scripted operator does when it took over before the episode and learns
of the start a few ticks after the arbiter does).

The arbiter runs as its own process over DDS (loopback); this test stands in for everybody
else: the driver's measured position, the policy server's heartbeat and chunks, the recorder's
start and end events, the joystick and the teleop topic. What it pins:

- nothing computed on the previous scene drives the arm in the episode: neither the
  operator's last command (stamped before the start) nor the previous scene's hold position;
- a claim without a command computed after the start keeps the episode waiting; the
  operator's first command computed after the start starts it, and reaches the arm at step 0;
- if the operator lets go instead, the policy's chunk starts the episode from a clean
  authority state: policy at step 0, no hand-back ramp for a takeover that was not the
  episode's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from arx_x5_driver.core.robot import bimanual_action_names
from tests.nodes.conftest import SIM_HOME, NodeProcess, RosClient

pytestmark = [pytest.mark.ros]

PERIOD = 0.02
DEADMAN = 4  # config/arbiter.yaml joy.deadman
NAMES = list(bimanual_action_names())  # the simulated arms' layout, as the arbiter's default
OLD_Q = SIM_HOME + np.float32(0.3)  # the previous scene's arm
OLD_TELEOP = SIM_HOME + np.float32(0.5)  # the operator's command computed on it
NEW_TELEOP = SIM_HOME + np.float32(0.05)  # the operator's command computed on the new scene
HUMAN_HOLDS = {"teleop_stale", "joystick_silent"}


def stamp_s(msg: Any) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def _set_stamp(msg: Any, t: float) -> None:
    sec = int(t)
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, int((t - sec) * 1e9)


class Scene:
    """The arbiter process and the test's publishers, republished each spin step."""

    def __init__(self, env: dict[str, str], root: Path) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import JointState, Joy
        from std_msgs.msg import Header

        from habc_msgs.msg import ActionChunk, EpisodeEvent, ExecutedCommand

        self.c = c = RosClient("episode_start_test")
        self.commands = c.record(ExecutedCommand, "/habc/executed_command", 200)
        self.refused = c.record(Header, "/habc/chunk_refused")
        self.diags = c.record(DiagnosticArray, "/diagnostics")
        self.pubs = {
            "measured": c.node.create_publisher(JointState, "/arx_x5_driver/measured_command", 10),
            "heartbeat": c.node.create_publisher(Header, "/habc/policy_heartbeat", 10),
            "joy": c.node.create_publisher(Joy, "/joy", 10),
            "teleop": c.node.create_publisher(JointState, "/habc/teleop_command", 10),
            "event": c.node.create_publisher(EpisodeEvent, "/habc/episode_event", 10),
            "chunk": c.node.create_publisher(ActionChunk, "/habc/action_chunk", 10),
        }
        self.q = OLD_Q
        self.deadman = True
        self.teleop: tuple[np.ndarray, float] | None = None  # (action, header stamp)
        self.rows: np.ndarray | None = None  # the policy's chunk, re-sent every 10 steps
        self.chunk_seq = 0
        self._steps = 0
        # Generous freshness windows (not what is tested here): a loaded machine may stall
        # this test's publishing for a while.
        self.proc = NodeProcess(
            "arbiter_node",
            env,
            root,
            first_chunk_timeout_s=30.0,
            joy_timeout_s=0.5,
            teleop_timeout_s=0.5,
            policy_heartbeat_ticks=50,
        )

    def close(self) -> None:
        self.proc.stop()
        self.c.close()

    def publish(self) -> None:
        from sensor_msgs.msg import JointState, Joy
        from std_msgs.msg import Header

        now = self.c.now_s()
        hb = Header()
        hb.stamp.sec, hb.stamp.nanosec = int(now), int((now - int(now)) * 1e9)
        self.pubs["heartbeat"].publish(hb)
        measured = JointState(name=NAMES, position=self.q.astype(np.float64).tolist())
        _set_stamp(measured, now)
        self.pubs["measured"].publish(measured)
        joy = Joy(axes=[0.0] * 8, buttons=[int(i == DEADMAN and self.deadman) for i in range(11)])
        _set_stamp(joy, now)
        self.pubs["joy"].publish(joy)
        if self.teleop is not None:
            action, stamp = self.teleop
            teleop = JointState(name=NAMES, position=action.astype(np.float64).tolist())
            _set_stamp(teleop, stamp)
            self.pubs["teleop"].publish(teleop)
        if self.rows is not None and self._steps % 10 == 0:
            self.chunk(self.rows)
        self._steps += 1

    def run(self, seconds: float) -> None:
        end = self.c.now_s() + seconds
        while self.c.now_s() < end:
            self.publish()
            self.c.spin_for(PERIOD)

    def run_until(self, done: Any, timeout: float, what: str) -> None:
        def step() -> bool:
            self.publish()
            self.c.spin_for(PERIOD)
            return bool(done())

        self.c.spin_until(step, timeout, lambda: f"{what}\n{self.proc.log()[-3000:]}")

    def event(self, episode_id: str, event: int) -> float:
        from habc_msgs.msg import EpisodeEvent

        now = self.c.now_s()
        msg = EpisodeEvent(episode_id=episode_id, event=event)
        _set_stamp(msg, now)
        self.pubs["event"].publish(msg)
        return now

    def chunk(self, rows: np.ndarray) -> Any:
        """Publish a chunk stamped now; returns its stamp."""
        from habc_msgs.msg import ActionChunk

        self.chunk_seq += 1
        msg = ActionChunk(checkpoint_id="ckpt", learner_step=7, chunk_seq=self.chunk_seq)
        _set_stamp(msg, self.c.now_s())
        msg.horizon, msg.action_dim, msg.control_period = rows.shape[0], rows.shape[1], PERIOD
        msg.actions = rows.astype(np.float32).reshape(-1).tolist()
        self.pubs["chunk"].publish(msg)
        return msg.header.stamp

    def of(self, episode_id: str) -> list[Any]:
        return sorted(
            (m for _, m in self.commands if m.episode_id == episode_id),
            key=lambda m: m.step_index,
        )


@pytest.fixture(scope="module")
def scene(ros_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    s = Scene(ros_env, tmp_path_factory.mktemp("episode_start"))
    try:
        yield s
    finally:
        s.close()


def _near(a: Any, b: np.ndarray) -> bool:
    return bool(np.allclose(np.asarray(a, np.float32), b, atol=1e-4))


def _previous_scene(scene: Scene) -> None:
    """Between episodes, the operator holds the deadman and drives the previous scene."""
    scene.q, scene.deadman = OLD_Q, True
    scene.teleop = (OLD_TELEOP, scene.c.now_s())
    scene.run_until(
        lambda: any(
            m.episode_id == "" and list(m.controller) == [2, 2] and _near(m.action, OLD_TELEOP)
            for _, m in scene.commands[-5:]
        ),
        60.0,
        "the operator driving the previous scene (no episode)",
    )


def _start(scene: Scene, episode_id: str) -> None:
    """The driver resets the scene (the arm measures the new pose), the recorder starts the
    episode; the operator's last command, computed on the previous scene, keeps arriving
    (stamped before the start), the deadman still held."""
    from habc_msgs.msg import EpisodeEvent

    old_stamp = scene.teleop[1] if scene.teleop else scene.c.now_s()
    scene.teleop = (OLD_TELEOP, old_stamp)
    scene.q = SIM_HOME.copy()
    scene.event(episode_id, EpisodeEvent.EVENT_START)
    scene.run(0.6)  # 30 ticks with the held-over claim


def _summary(cmds: list[Any]) -> list[tuple[int, list[int], str, bool]]:
    """(step, tags, hold reason, carries the previous scene's teleop) of each command."""
    return [
        (m.step_index, list(m.controller), m.hold_reason, _near(m.action, OLD_TELEOP))
        for m in cmds[:10]
    ]


def _nothing_of_the_previous_scene(cmds: list[Any]) -> None:
    bad = [
        (m.step_index, list(m.controller))
        for m in cmds
        if _near(m.action, OLD_TELEOP) or _near(m.action, OLD_Q)
    ]
    assert not bad, f"commands of the previous scene in the episode: {bad}"


def test_held_over_takeover_waits_for_a_command_of_the_new_scene(scene: Scene) -> None:
    _previous_scene(scene)
    _start(scene, "ep-a")
    # The claim has no command computed on the new scene: the episode has not started.
    assert not scene.of("ep-a"), _summary(scene.of("ep-a"))
    # The operator's first command computed on the new scene: the takeover reaches the arm.
    scene.teleop = (NEW_TELEOP, scene.c.now_s())
    scene.run_until(lambda: len(scene.of("ep-a")) > 20, 30.0, "the episode's steps")
    cmds = scene.of("ep-a")
    assert cmds[0].step_index == 0
    assert list(cmds[0].controller) == [2, 2] and _near(cmds[0].action, NEW_TELEOP)
    assert all(
        (list(m.controller) == [2, 2] and _near(m.action, NEW_TELEOP))
        or (list(m.controller) == [0, 0] and m.hold_reason in HUMAN_HOLDS)
        for m in cmds
    ), [(m.step_index, list(m.controller), m.hold_reason) for m in cmds]
    _nothing_of_the_previous_scene(cmds)


def test_held_over_takeover_let_go_starts_with_the_policy(scene: Scene) -> None:
    from habc_msgs.msg import EpisodeEvent

    scene.event("ep-a", EpisodeEvent.EVENT_END)
    _previous_scene(scene)
    _start(scene, "ep-b")
    assert not scene.of("ep-b"), _summary(scene.of("ep-b"))
    # The operator lets go (it learned of the start); the policy's chunk from the new scene.
    scene.deadman = False
    scene.teleop = None
    rows = np.tile(SIM_HOME, (50, 1))
    rows[:, 0] += np.linspace(0.0, 0.049, 50, dtype=np.float32)  # row i: +0.001·i rad
    scene.run(0.1)
    scene.rows = rows
    scene.run_until(lambda: len(scene.of("ep-b")) > 20, 30.0, "the episode's steps")
    scene.rows = None
    cmds = scene.of("ep-b")
    assert cmds[0].step_index == 0
    # Step 0 runs the chunk's row 0; no hand-back ramp, no human tick in the episode.
    assert list(cmds[0].controller) == [1, 1] and _near(cmds[0].action, rows[0])
    assert cmds[0].chunk_row == 0
    assert all(
        list(m.controller) == [1, 1] or (list(m.controller) == [0, 0] and m.hold_reason)
        for m in cmds
    ), [(m.step_index, list(m.controller), m.hold_reason) for m in cmds]
    _nothing_of_the_previous_scene(cmds)


def test_a_chunk_dropped_on_arrival_is_reported_to_the_server(scene: Scene) -> None:
    """A chunk whose first row is past the jump limit (``arbiter_sim.yaml``: 1 rad) from the
    last executed action is dropped, and its stamp goes out on ``/habc/chunk_refused`` (the
    server then replans at once); chunks the arbiter takes are not reported."""
    near = np.tile(SIM_HOME, (50, 1))
    scene.rows = near  # re-sent every 10 ticks, from the arm's own position
    scene.run(1.0)
    assert not scene.refused, [(stamp_s(m), m.frame_id) for _, m in scene.refused]
    scene.rows = None
    last = np.asarray(scene.commands[-1][1].action, np.float32)
    far = last + np.float32(1.5)
    far[12] += np.float32(0.3)  # right_wrist_rotate the farthest: 1.8 rad
    stamp = scene.chunk(np.tile(far, (50, 1)))
    scene.run_until(lambda: scene.refused, 30.0, "the dropped chunk reported")
    (_, msg), *more = scene.refused
    assert not more
    assert (msg.stamp.sec, msg.stamp.nanosec) == (stamp.sec, stamp.nanosec)
    # why, with the farthest dimension (relative to its limit) and its distance
    assert msg.frame_id == "max_jump: right_wrist_rotate by 1.80", msg.frame_id
    # The arm never went there.
    assert all(np.max(np.abs(np.asarray(m.action) - last)) < 1.0 for _, m in scene.commands[-20:])
    # Once the taken chunk's 50 rows have run out, the arm holds for the refusal
    # (``chunk_jump``), not for a late policy (``policy_stale``).
    scene.run(1.5)
    tail = [m.hold_reason for _, m in scene.commands[-10:]]
    assert tail == ["chunk_jump"] * 10, tail

    # Held for a second or more: the dashboard says the policy is stuck and names the joint.
    from diagnostic_msgs.msg import DiagnosticStatus

    def stuck() -> list[Any]:
        return [
            st
            for _, arr in scene.diags
            for st in arr.status
            if st.name.endswith("chunks") and st.level == DiagnosticStatus.WARN
        ]

    scene.run_until(lambda: stuck(), 10.0, "a policy-stuck warning on /diagnostics")
    assert stuck()[-1].message.startswith("policy stuck: held "), stuck()[-1].message
    assert "right_wrist_rotate by 1.80" in stuck()[-1].message, stuck()[-1].message

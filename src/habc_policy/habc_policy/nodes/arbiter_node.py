"""The intervention arbiter: owns the control tick and decides, per arm, who drives.

Thin adapter around :class:`~habc_policy.core.chunking.ChunkScheduler` and
:class:`~habc_policy.core.authority.AuthorityArbiter` (and, optionally,
:class:`~habc_policy.core.jog.EndEffectorJog`). Node ``intervention_arbiter``:

===============================  ==============================  ==================================
name                             type                            what
===============================  ==============================  ==================================
``/habc/action_chunk`` (sub)     ``habc_msgs/ActionChunk``       policy chunks (newest wins)
``/joy`` (sub)                   ``sensor_msgs/Joy``             the standard ``joy`` node: deadman,
                                                                 per-arm takeover, mark buttons,
                                                                 jog axes (``joy.*`` parameters)
``/habc/teleop_command`` (sub)   ``sensor_msgs/JointState``      the operator's action (leader arms,
                                                                 VR): ``position`` = joint targets
                                                                 in rad / gripper 0…1, in the
                                                                 action layout, or named joints
                                                                 (a subset: the others unset)
``<measured_topic>`` (sub)       ``sensor_msgs/JointState``      the driver's measured position
                                                                 in the command space (cartesian:
                                                                 FK pose): the hold position
                                                                 before any command
``<policy_heartbeat_topic>``     ``std_msgs/Header``             the policy server's heartbeat;
(sub)                                                            silent ``policy_heartbeat_ticks``
                                                                 ticks -> policy arms hold
``/estop`` (sub)                 ``std_msgs/Bool``               ``true``: hold at once (latched)
``<estop_state_topic>`` (sub)    ``std_msgs/Bool``               the driver's latch: ``true``
                                                                 latches; ``false`` after a
                                                                 ``true`` (a reset) clears
``/habc/episode_event`` (sub)    ``habc_msgs/EpisodeEvent``      episode id + step index reset
``/habc/executed_command``       ``habc_msgs/ExecutedCommand``   one per tick, with per-arm
(pub)                                                            authority tags; ``clamped`` when
                                                                 the chunk safety step changed
                                                                 the policy row
``/diagnostics`` (pub)           ``diagnostic_msgs/               seam mode, chunk-safety clamps
                                 DiagnosticArray``               per limit, episode-start waits
``/habc/episode_mark`` (pub)     ``habc_msgs/EpisodeEvent``      the operator's mark (END +
                                                                 outcome), for the record
``/habc/chunk_refused`` (pub)    ``std_msgs/Header``             a chunk dropped on arrival
                                                                 (its stamp; frame_id: why): the
                                                                 server replans at once
``/habc/end_episode`` (client)   ``habc_msgs/EndEpisode``        called on a mark button
===============================  ==============================  ==================================

Received times (this node's clock) decide freshness: the joystick is silent when its last
message is older than ``joy_timeout_s`` — a human-held arm then holds (``joystick_silent``).
With ``teleop_source: jog`` the operator's action comes from the joystick jog instead of the
teleop topic, on the kinematics the backend provides (``jog.kinematics``: ``sim_aloha``, the
scene's MuJoCo model; ``x5``, the X5 SDK's solver and joint limits, the arx default:
:mod:`arx_x5_driver.core.kinematics`). A pad alone then corrects the real arms.

Chunks run in the ``seam`` mode of :mod:`habc_policy.core.chunking` (``switch`` | ``ensemble`` |
``rtc``), and every policy row passes the chunk-level safety step
(:mod:`habc_policy.core.chunk_safety`: jump, velocity, acceleration limits against the last
executed action) before the authority state machine. An episode's clock starts at the first
tick with a row of a chunk computed after the episode's start event (``step_index`` 0): the
ticks before it hold and belong to no episode, so an episode never starts with a hold. The
operator claiming an arm with a teleop command computed after the start (its header stamp),
or ``first_chunk_timeout_s`` of waiting, starts it at once; a claim without one (a deadman
held over from the previous scene) keeps it waiting (:func:`~habc_policy.core.authority.
episode_starts`). Nothing from before the start drives the arm in the episode: teleop
commands stamped before it are dropped, and the hold position is the first measurement
stamped after it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import Bool, Header

from arx_x5_driver.core.kinematics import JOG_KINEMATICS as KINEMATICS
from arx_x5_driver.core.kinematics import ArmKinematics, jog_kinematics
from arx_x5_driver.core.robot import bimanual_action_names
from habc_common import topics
from habc_msgs.msg import ActionChunk, EpisodeEvent, ExecutedCommand
from habc_msgs.srv import EndEpisode
from habc_policy.core.authority import (
    DEFAULT_HANDBACK_TICKS,
    ArbiterConfig,
    AuthorityArbiter,
    Controller,
    JoyMapping,
    JoyState,
    TeleopCommand,
    episode_starts,
    heartbeat_alive,
)
from habc_policy.core.chunk_safety import (
    HOLD_CHUNK_JUMP,
    ChunkSafety,
    ChunkSafetyConfig,
)
from habc_policy.core.chunking import (
    DEFAULT_OVERRUN_ROWS,
    DEFAULT_SEAM,
    SEAM_MODES,
    Chunk,
    ChunkScheduler,
    ScheduledRow,
)
from habc_policy.core.jog import EndEffectorJog, JogConfig
from habc_policy.nodes import declare

NODE_NAME = "intervention_arbiter"
TELEOP_SOURCES = ("topic", "jog")
JOG_KINEMATICS = tuple(KINEMATICS)  # every backend provides its arms' kinematics
DEFAULT_ACTION_NAMES = ",".join(bimanual_action_names())  # the simulated arms' layout


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


@dataclass(frozen=True)
class ArbiterParams:
    """Every parameter of the node (``config/arbiter.yaml``)."""

    control_hz: float
    action_names: tuple[str, ...]
    arm_names: tuple[str, ...]
    arbiter: ArbiterConfig
    execute_rows: int
    overrun_rows: int
    teleop_source: str
    teleop_topic: str
    estop_state_topic: str
    end_episode_service: str
    jog_axes: tuple[int, int, int]
    jog_axis_gripper: int
    jog_kinematics: str
    jog_task: str
    jog_robot_model: str
    jog_linear_speed: float
    jog_gripper_speed: float
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    measured_topic: str = topics.MEASURED_COMMAND
    policy_heartbeat_topic: str = topics.POLICY_HEARTBEAT
    policy_heartbeat_ticks: int = 2
    seam: str = DEFAULT_SEAM
    ensemble_decay: float = 0.01
    first_chunk_timeout_s: float = 5.0
    chunk_safety: ChunkSafetyConfig | None = None
    diagnostics_hz: float = 1.0

    @classmethod
    def declare(cls, node: Any) -> ArbiterParams:
        d = declare
        action_names = _names(d(node, "action_names", DEFAULT_ACTION_NAMES, "action layout"))
        arm_names = _names(d(node, "arm_names", "left,right", "arms, in action order"))
        bounds = [int(v) for v in d(node, "arm_bounds", [0, 7, 14], "arm slice boundaries")]
        if len(bounds) != len(arm_names) + 1 or bounds[-1] != len(action_names):
            raise ValueError(
                f"arm_bounds {bounds} must have one more entry than arms {arm_names} and end at "
                f"{len(action_names)} (the number of action_names)"
            )
        takeover = [int(v) for v in d(node, "joy.takeover_buttons", [6, 7], "per arm, -1 none")]
        if len(takeover) != len(arm_names):
            raise ValueError(f"joy.takeover_buttons needs one entry per arm {arm_names}")
        if all(b < 0 for b in takeover):
            takeover = []
        elif any(b < 0 for b in takeover):
            raise ValueError("joy.takeover_buttons: give a button for every arm, or -1 for all")
        mapping = JoyMapping(
            deadman=int(d(node, "joy.deadman", 4, "button held to take authority")),
            takeover_buttons=tuple(takeover),
            mark_success=int(d(node, "joy.mark_success", 0, "button: episode succeeded")),
            mark_failure=int(d(node, "joy.mark_failure", 1, "button: episode failed")),
        )
        arbiter = ArbiterConfig(
            arm_slices=tuple((bounds[i], bounds[i + 1]) for i in range(len(arm_names))),
            handback_ticks=int(
                d(node, "handback_ticks", DEFAULT_HANDBACK_TICKS, "ticks of the hand-back ramp")
            ),
            joy_timeout_s=float(d(node, "joy_timeout_s", 0.1, "joystick silence → hold (s)")),
            teleop_timeout_s=float(d(node, "teleop_timeout_s", 0.1, "teleop age → hold (s)")),
            mapping=mapping,
            pad_supervision_s=float(
                d(node, "pad_supervision_s", 0.0, "pad silent this long → every arm holds (0 off)")
            ),
        )
        low = d(node, "jog.action_low", [-3.14] * len(action_names), "jog joint limits low")
        high = d(node, "jog.action_high", [3.14] * len(action_names), "jog joint limits high")
        p = cls(
            control_hz=float(d(node, "control_hz", 50.0, "control tick rate (Hz)")),
            action_names=action_names,
            arm_names=arm_names,
            arbiter=arbiter,
            execute_rows=int(d(node, "execute_rows", 25, "rows of each chunk that may run")),
            overrun_rows=int(
                d(
                    node,
                    "overrun_rows",
                    DEFAULT_OVERRUN_ROWS,
                    "rows past execute_rows a chunk runs while the next is late",
                )
            ),
            teleop_source=d(node, "teleop_source", "topic", f"one of {TELEOP_SOURCES}"),
            teleop_topic=d(node, "teleop_topic", topics.TELEOP_COMMAND, "teleop JointState"),
            estop_state_topic=d(
                node, "estop_state_topic", topics.ESTOP_LATCHED, "driver's e-stop latch"
            ),
            end_episode_service=d(
                node, "end_episode_service", topics.END_EPISODE, "EndEpisode on mark buttons"
            ),
            jog_axes=tuple(int(v) for v in d(node, "joy.jog_axes", [1, 0, 4], "x, y, z axes")),
            jog_axis_gripper=int(d(node, "joy.jog_axis_gripper", 3, "gripper axis (-1 none)")),
            jog_kinematics=d(node, "jog.kinematics", "sim_aloha", f"one of {JOG_KINEMATICS}"),
            jog_task=d(node, "jog.task", "transfer_cube", "sim_aloha scene"),
            jog_robot_model=d(node, "jog.robot_model", "X5", "x5: the SDK's robot model"),
            jog_linear_speed=float(d(node, "jog.linear_speed", 0.1, "m/s at full stick")),
            jog_gripper_speed=float(d(node, "jog.gripper_speed", 1.0, "1/s at full stick")),
            action_low=tuple(float(v) for v in low),
            action_high=tuple(float(v) for v in high),
            measured_topic=d(
                node, "measured_topic", topics.MEASURED_COMMAND, "hold position source"
            ),
            policy_heartbeat_topic=d(
                node, "policy_heartbeat_topic", topics.POLICY_HEARTBEAT, "server heartbeat"
            ),
            policy_heartbeat_ticks=int(
                d(node, "policy_heartbeat_ticks", 2, "heartbeat silent this many ticks → hold")
            ),
        )
        n = len(action_names)
        safety = None
        if bool(d(node, "chunk_safety.enabled", True, "bound policy rows before the driver")):
            safety = ChunkSafetyConfig(
                action_dim=n,
                max_jump=[float(v) for v in d(node, "chunk_safety.max_jump", [1.0], "rad")],
                max_velocity=[
                    float(v) for v in d(node, "chunk_safety.max_velocity", [30.0], "rad/s")
                ],
                max_acceleration=[
                    float(v) for v in d(node, "chunk_safety.max_acceleration", [1250.0], "rad/s^2")
                ],
                period_s=1.0 / p.control_hz,
            )
        p = replace(
            p,
            seam=d(node, "seam", DEFAULT_SEAM, f"chunk seam mode, one of {SEAM_MODES}"),
            ensemble_decay=float(d(node, "ensemble_decay", 0.01, "ACT ensembling decay m")),
            first_chunk_timeout_s=float(
                d(node, "first_chunk_timeout_s", 5.0, "episode starts without a chunk after (s)")
            ),
            chunk_safety=safety,
            diagnostics_hz=float(d(node, "diagnostics_hz", 1.0, "/diagnostics rate (Hz)")),
        )
        if p.seam not in SEAM_MODES:
            raise ValueError(f"seam must be one of {SEAM_MODES}, got {p.seam!r}")
        if not (math.isfinite(p.first_chunk_timeout_s) and p.first_chunk_timeout_s > 0):
            raise ValueError(f"first_chunk_timeout_s must be > 0, got {p.first_chunk_timeout_s}")
        if not (math.isfinite(p.diagnostics_hz) and p.diagnostics_hz > 0):
            raise ValueError(f"diagnostics_hz must be > 0, got {p.diagnostics_hz}")
        if p.policy_heartbeat_ticks < 0:
            raise ValueError(
                f"policy_heartbeat_ticks must be >= 0 (0 = off), got {p.policy_heartbeat_ticks}"
            )
        if not (math.isfinite(p.control_hz) and p.control_hz > 0):
            raise ValueError(f"control_hz must be > 0, got {p.control_hz}")
        if p.teleop_source not in TELEOP_SOURCES:
            raise ValueError(f"teleop_source must be one of {TELEOP_SOURCES}")
        if len(p.jog_axes) != 3:
            raise ValueError(f"joy.jog_axes needs 3 axes (x, y, z), got {p.jog_axes}")
        if p.teleop_source == "jog" and p.jog_kinematics not in JOG_KINEMATICS:
            raise ValueError(f"jog.kinematics must be one of {JOG_KINEMATICS}")
        return p


def jog_arm_kinematics(p: ArbiterParams) -> ArmKinematics:
    """The arms' kinematics the jog runs on (``jog.kinematics``: the sim scene's MuJoCo model or
    the X5's SDK solver, :mod:`arx_x5_driver.core.kinematics`)."""
    options = {"sim_aloha": {"task": p.jog_task}, "x5": {"robot_model": p.jog_robot_model}}
    return jog_kinematics(p.jog_kinematics, **options.get(p.jog_kinematics, {}))


class ArbiterNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.params = p = ArbiterParams.declare(self)
        self._period = 1.0 / p.control_hz
        self._scheduler = ChunkScheduler(
            p.arbiter.action_dim,
            p.execute_rows,
            seam=p.seam,
            ensemble_decay=p.ensemble_decay,
            overrun_rows=p.overrun_rows,
        )
        self._safety = None if p.chunk_safety is None else ChunkSafety(p.chunk_safety)
        self._pending: tuple[str, float] | None = None  # (episode id, start) until step 0
        self._counts = {
            "clamped_ticks": 0,
            "refused_ticks": 0,
            "overrun_ticks": 0,  # rows past execute_rows run while the next chunk was late
            "dropped_chunks": 0,  # chunks dropped on arrival (jump limit, no row left, ...)
            "episodes": 0,
            "start_waits": 0,
        }
        self._arbiter = AuthorityArbiter(p.arbiter)
        self._chunk_learner_step: dict[tuple[str, int], int] = {}
        self._newest_refused = False  # the newest chunk was dropped by the jump limit
        self._refused_run = 0  # consecutive ticks held for refused chunks (``chunk_jump``)
        #: A hold this long for refused chunks is the policy stuck, not a seam: warn (1 s).
        self._stuck_ticks = max(1, round(p.control_hz))
        self._joy: JoyState | None = None
        self._axes: tuple[float, ...] = ()
        self._teleop: TeleopCommand | None = None
        self._teleop_after = -math.inf  # teleop stamped before an episode's start
        self._measured: np.ndarray | None = None
        self._measured_after = -math.inf  # measurements stamped before an episode's start
        self._last_action: np.ndarray | None = None
        self._estop = False
        self._episode_id = ""
        self._step = 0
        self._jog: EndEffectorJog | None = None
        kinematics = None
        if p.teleop_source == "jog":
            try:
                kinematics = jog_arm_kinematics(p)
            except (RuntimeError, OSError, ValueError) as exc:  # e.g. no SDK on this machine
                self.get_logger().error(
                    f"joystick jog unavailable ({exc}): a takeover uses {p.teleop_topic}, and "
                    "holds while nothing publishes there"
                )
        if kinematics is not None:
            low, high = kinematics.action_limits(p.action_low, p.action_high, p.arbiter.arm_slices)
            self._jog = EndEffectorJog(
                JogConfig(
                    arm_slices=p.arbiter.arm_slices,
                    low=low,
                    high=high,
                    linear_speed=p.jog_linear_speed,
                    gripper_speed=p.jog_gripper_speed,
                    control_period_s=self._period,
                ),
                kinematics.fk,
            )
            self.get_logger().info(f"joystick jog on {p.jog_kinematics} kinematics")
        latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self._pub = self.create_publisher(ExecutedCommand, topics.EXECUTED_COMMAND, 10)
        self._mark_pub = self.create_publisher(EpisodeEvent, topics.EPISODE_MARK, 10)
        self._refused_pub = self.create_publisher(Header, topics.CHUNK_REFUSED, 10)
        self.create_subscription(ActionChunk, topics.ACTION_CHUNK, self._on_chunk, 10)
        self.create_subscription(Joy, topics.JOY, self._on_joy, 10)
        self.create_subscription(JointState, p.measured_topic, self._on_joints, 10)
        self._heartbeat_s: float | None = None
        self._driver_latched = False
        self._heartbeat_sub = self.create_subscription(
            Header, p.policy_heartbeat_topic, self._on_heartbeat, 10
        )
        if self._jog is None:  # teleop_source topic, or a jog without kinematics
            self.create_subscription(JointState, p.teleop_topic, self._on_teleop, 10)
        self.create_subscription(Bool, topics.ESTOP, self._on_estop, 10)
        self.create_subscription(Bool, p.estop_state_topic, self._on_estop_state, latched)
        self.create_subscription(EpisodeEvent, topics.EPISODE_EVENT, self._on_episode_event, 10)
        self._end_client = self.create_client(EndEpisode, p.end_episode_service)
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
        self.create_timer(1.0 / p.diagnostics_hz, self._publish_diagnostics)
        self._timer = self.create_timer(self._period, self._on_tick)
        self.get_logger().info(
            f"ticking at {p.control_hz:g} Hz; teleop from {p.teleop_source}; hand-back over "
            f"{p.arbiter.handback_ticks} ticks; seam {p.seam}; chunk safety "
            f"{'on' if self._safety else 'off'}"
        )

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # Inputs -------------------------------------------------------------------------------
    def _on_chunk(self, msg: ActionChunk) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        try:
            chunk = Chunk.from_flat(
                np.asarray(msg.actions, dtype=np.float32),
                int(msg.horizon),
                int(msg.action_dim),
                stamp,
                float(msg.control_period),
                msg.checkpoint_id,
                int(msg.chunk_seq),
            )
        except ValueError as exc:
            self.get_logger().warning(f"dropped chunk: {exc}", throttle_duration_sec=1.0)
            return
        now = self._now_s()
        first = self._scheduler.first_row(chunk, now)
        if self._safety is not None and not self._safety.admits(first, self._arbiter.policy_dims()):
            where = self._refusal_detail()
            self.get_logger().warning(
                f"dropped chunk {chunk.seq}: its first row to run is past the jump limit from "
                f"the last executed action (chunk_safety.max_jump; {where}); the running chunk "
                "runs on",
                throttle_duration_sec=1.0,
            )
            self._refused(msg, f"max_jump: {where}")
            self._newest_refused = True
            return
        self._newest_refused = False  # (a chunk dropped below is late, not refused)
        # An arm the operator drives (or that ramps back) keeps the new chunk's own rows: the
        # held chunk's plan for it never ran, so it is no seam to inpaint or average toward.
        if why := self._scheduler.offer(chunk, now, fresh_dims=~self._arbiter.policy_dims()):
            self.get_logger().warning(f"dropped chunk: {why}", throttle_duration_sec=1.0)
            self._refused(msg, why)
            return
        self._chunk_learner_step = {(chunk.checkpoint_id, chunk.seq): int(msg.learner_step)}

    def _refusal_detail(self) -> str:
        """``"<action name> by <distance>"`` of the chunk-safety step's last refusal."""
        if self._safety is None or self._safety.last_refusal is None:
            return "no detail"
        dim, distance = self._safety.last_refusal
        names = self.params.action_names
        name = names[dim] if dim < len(names) else f"dim {dim}"
        return f"{name} by {distance:.2f}"

    def _refused(self, msg: ActionChunk, why: str) -> None:
        """Tell the server its chunk was dropped: it computes the next one at once, so the
        running chunk's last rows (and its overrun rows) need not run out first."""
        self._counts["dropped_chunks"] += 1
        self._refused_pub.publish(Header(stamp=msg.header.stamp, frame_id=why[:64]))

    def _on_joy(self, msg: Joy) -> None:
        self._joy = JoyState(stamp_s=self._now_s(), buttons=tuple(int(b) for b in msg.buttons))
        self._axes = tuple(float(a) for a in msg.axes)

    def _on_teleop(self, msg: JointState) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        if stamp and stamp < self._teleop_after:
            # Computed on an observation from before the episode's start: the previous scene.
            self.get_logger().info(
                "teleop command stamped before the episode's start: ignored",
                throttle_duration_sec=1.0,
            )
            return
        names = self.params.action_names
        pos = np.asarray(msg.position, dtype=np.float32)
        if not msg.name:
            action = pos
        else:
            if len(msg.name) != len(pos) or not set(msg.name) <= set(names):
                self.get_logger().warning(
                    f"teleop command names {list(msg.name)} not in {list(names)}",
                    throttle_duration_sec=1.0,
                )
                return
            action = np.full(len(names), np.nan, dtype=np.float32)
            for n, v in zip(msg.name, pos):
                action[names.index(n)] = v
        if action.shape != (len(names),):
            self.get_logger().warning(
                f"teleop command has {action.shape[0]} values, expected {len(names)}",
                throttle_duration_sec=1.0,
            )
            return
        self._teleop = TeleopCommand(stamp_s=self._now_s(), action=action)

    def _on_joints(self, msg: JointState) -> None:
        if msg.name and tuple(msg.name) != self.params.action_names:
            self.get_logger().error(
                f"{self.params.measured_topic} names {list(msg.name)[:3]}… are not the action "
                f"layout {list(self.params.action_names)[:3]}…: not a hold position",
                throttle_duration_sec=5.0,
            )
            return
        q = np.asarray(msg.position, dtype=np.float32)
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        if stamp and stamp < self._measured_after:
            return
        if q.shape == (self.params.arbiter.action_dim,) and np.all(np.isfinite(q)):
            self._measured = q

    def _drain_heartbeats(self) -> None:
        """Take every heartbeat already delivered before deciding a tick: a tick that runs
        late (this process descheduled) must not judge the server by a queued, older one."""
        sub = self._heartbeat_sub
        try:
            with sub.handle:
                while (taken := sub.handle.take_message(Header, False)) is not None:
                    self._on_heartbeat(taken[0])
        except Exception as exc:  # an rclpy without take_message: the callback still runs
            self.get_logger().debug(f"heartbeat drain unavailable: {exc}")

    def _on_heartbeat(self, msg: Header) -> None:
        stamp = msg.stamp.sec + msg.stamp.nanosec * 1e-9
        if self._heartbeat_s is None or stamp > self._heartbeat_s:
            self._heartbeat_s = stamp

    def _on_estop(self, msg: Bool) -> None:
        if msg.data and not self._estop:
            self._estop = True
            self.get_logger().error("e-stop: holding every arm")

    def _on_estop_state(self, msg: Bool) -> None:
        # Only a reset clears the latch: ``false`` after this driver's ``true``. A driver that
        # (re)starts unlatched publishes ``false`` too, and must not un-e-stop the arbiter.
        if msg.data:
            self._driver_latched = True
            if not self._estop:
                self._estop = True
                self.get_logger().warning("driver e-stop latch set")
        elif self._driver_latched:
            self._driver_latched = False
            if self._estop:
                self._estop = False
                self.get_logger().warning("driver e-stop latch cleared (reset)")

    def _on_episode_event(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.EVENT_START:
            # Step 0 is the first tick with a chunk from after this start (see _on_tick).
            start = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            self._episode_id, self._step = "", 0
            self._pending = (msg.episode_id, start if start > 0 else self._now_s())
            # The hold position is the first measurement stamped after the start: one from
            # before it may show the arm before the driver reset the scene.
            self._measured, self._measured_after = None, self._pending[1]
            # Nothing computed on the previous scene drives the arm in this episode: not the
            # last executed action (the hold position), not the operator's last command (one
            # stamped before the start is dropped on arrival, see _on_teleop).
            self._last_action, self._teleop, self._teleop_after = None, None, self._pending[1]
            self._arbiter.reset(hold_position=None)
            self._scheduler.begin_episode(self._pending[1])
            self._newest_refused = False
            if self._safety is not None:
                self._safety.reset(None)
            if self._jog is not None:
                self._jog.reset(None)
        elif msg.event == EpisodeEvent.EVENT_END:
            if msg.episode_id == self._episode_id:
                self._episode_id = ""
            if self._pending is not None and self._pending[0] == msg.episode_id:
                self._pending = None

    # Tick ---------------------------------------------------------------------------------
    def _jog_command(self, now: float) -> TeleopCommand | None:
        assert self._jog is not None
        arms = self._arbiter.requested_arms(self._joy, now)
        if arms is None or not any(arms):
            self._jog.reset(None)
            return None
        if not self._jog.active:
            start = self._last_action if self._last_action is not None else self._measured
            if start is None:
                return None
            self._jog.reset(start)
        axes = self._axes

        def axis(i: int) -> float:
            return axes[i] if 0 <= i < len(axes) else 0.0

        stick = [axis(i) for i in self.params.jog_axes]
        action = self._jog.step(arms, stick, axis(self.params.jog_axis_gripper))
        return TeleopCommand(stamp_s=now, action=action.astype(np.float32))

    def _on_tick(self) -> None:
        self._drain_heartbeats()
        now = self._now_s()
        teleop = self._jog_command(now) if self._jog is not None else self._teleop
        if self._pending is None:
            row = self._scheduler.select(now)
        else:
            claimed = self._arbiter.requested_arms(self._joy, now)
            claiming = claimed is not None and any(claimed)
            # While an arm is claimed the first chunk is not taken (anchored) yet: it runs
            # from its row 0 at step 0, whenever the claim lets the episode start.
            row = None if claiming else self._scheduler.select(now)
            if episode_starts(
                chunk_ready=row is not None,
                claiming=claiming,
                operator_acting=claiming and self._arbiter.teleop_fresh(teleop, now),
                waited_s=now - self._pending[1],
                timeout_s=self.params.first_chunk_timeout_s,
            ):
                self._episode_id, self._step = self._pending[0], 0
                self._pending = None
                self._counts["episodes"] += 1
                # Step 0 starts from a clean authority state: a takeover or hand-back ramp
                # the operator began while the episode waited is not the episode's (an arm
                # still claimed is the operator's again at this very tick). The hold
                # position is this scene's (``_last_action`` was cleared at the start).
                self._arbiter.reset(hold_position=self._last_action)
                if row is None:
                    row = self._scheduler.select(now)
            else:
                self._counts["start_waits"] += 1
        row, refused, clamped = self._safe(row)
        decision = self._arbiter.step(
            now,
            joy=self._joy,
            teleop=teleop,
            policy_row=row,
            estop=self._estop,
            measured_position=self._measured,
            policy_alive=heartbeat_alive(
                now, self._heartbeat_s, self.params.policy_heartbeat_ticks, self._period
            ),
            policy_refused=refused,
        )
        if not np.all(np.isfinite(decision.action)):
            # No position to hold yet (no joint state): send nothing; the driver holds.
            self.get_logger().warning(
                f"no command: {decision.hold_reason}", throttle_duration_sec=2.0
            )
            return
        self._last_action = decision.action
        if self._safety is not None:
            self._safety.executed(decision.action)
        ran_policy = any(
            c in (Controller.POLICY, Controller.HANDBACK) for c in decision.controllers
        )
        clamped = clamped and ran_policy
        self._counts["clamped_ticks"] += int(clamped)
        self._counts["overrun_ticks"] += int(ran_policy and row is not None and row.overrun)
        refused_tick = decision.hold_reason == HOLD_CHUNK_JUMP
        self._counts["refused_ticks"] += int(refused_tick)
        self._refused_run = self._refused_run + 1 if refused_tick else 0
        if self._refused_run == self._stuck_ticks:
            self.get_logger().warning(
                f"the arm has held {self._stuck_ticks} ticks: every new chunk is past the jump "
                f"limit ({self._refusal_detail()}), the policy asks for a pose far from the "
                "arm. Take over, or end the episode"
            )
        msg = ExecutedCommand()
        sec = math.floor(now)  # the tick time the decision was made for
        msg.header.stamp.sec = int(sec)
        msg.header.stamp.nanosec = min(round((now - sec) * 1e9), 999_999_999)
        msg.episode_id = self._episode_id
        msg.step_index = self._step
        msg.controller = [int(c) for c in decision.controllers]
        msg.action = decision.action.astype(np.float32).tolist()
        msg.hold = decision.hold
        msg.hold_reason = decision.hold_reason
        msg.clamped = clamped
        msg.checkpoint_id = decision.checkpoint_id
        msg.chunk_seq = decision.chunk_seq
        msg.chunk_row = decision.chunk_row
        msg.learner_step = self._chunk_learner_step.get(
            (decision.checkpoint_id, decision.chunk_seq), -1
        )
        self._pub.publish(msg)
        self._step += 1
        if decision.mark:
            self._mark(decision.mark, msg.header.stamp)

    def _safe(self, row: ScheduledRow | None) -> tuple[ScheduledRow | None, str, bool]:
        """The chunk-level safety step on the scheduled row: ``(row, refused, clamped)``.

        A plan that ran out after the newest chunk was dropped on arrival (its first row past
        the jump limit) holds for that refusal (``chunk_jump``), not for a late policy
        (``policy_stale``): the refused chunk would have covered the tick."""
        if row is None:
            return None, HOLD_CHUNK_JUMP if self._newest_refused else "", False
        if self._safety is None:
            return row, "", False
        res = self._safety.check(row.action, self._arbiter.policy_dims())
        if res.action is None:
            # The chunk is dropped: it never ran, so the next one is not inpainted from it.
            self._scheduler.clear()
            self.get_logger().warning(
                f"chunk {row.seq} row {row.row} refused: {res.limits[0]} limit "
                f"({self._refusal_detail()}); holding until the next chunk",
                throttle_duration_sec=1.0,
            )
            return None, HOLD_CHUNK_JUMP, False
        return replace(row, action=res.action), "", res.clamped

    def _publish_diagnostics(self) -> None:
        st = DiagnosticStatus(name=f"{NODE_NAME}: chunks", level=DiagnosticStatus.OK)
        values = {"seam": self.params.seam, **{k: str(v) for k, v in self._counts.items()}}
        if self._safety is not None:
            values.update({f"safety_{k}": str(v) for k, v in self._safety.counts.items()})
        st.message = (
            f"seam {self.params.seam}; chunk safety clamped {self._counts['clamped_ticks']} "
            f"and refused {self._counts['refused_ticks']} ticks"
        )
        if self._refused_run >= self._stuck_ticks:
            # The operator's dashboard shows it: the arm stands still because the policy keeps
            # asking for a pose the jump limit refuses, and only a takeover moves it on.
            st.level = DiagnosticStatus.WARN
            st.message = (
                f"policy stuck: held {self._refused_run} ticks, every new chunk past the jump "
                f"limit ({self._refusal_detail()}); take over or end the episode. " + st.message
            )
        st.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)

    def _mark(self, mark: str, stamp: Any) -> None:
        if not self._episode_id:
            self.get_logger().info(f"operator marked {mark} with no episode running: ignored")
            return
        outcome = (
            EpisodeEvent.OUTCOME_SUCCESS if mark == "success" else EpisodeEvent.OUTCOME_FAILURE
        )
        event = EpisodeEvent(
            episode_id=self._episode_id,
            event=EpisodeEvent.EVENT_END,
            outcome=outcome,
            marked_by="operator",
            reason=f"joystick mark button ({mark})",
        )
        event.header.stamp = stamp
        self._mark_pub.publish(event)
        if not self._end_client.service_is_ready():
            self.get_logger().warning(
                f"operator marked {mark}, but {self.params.end_episode_service} is not available"
            )
            return
        req = EndEpisode.Request(
            episode_id=self._episode_id,
            outcome=outcome,
            marked_by="operator",
            reason=event.reason,
        )
        future = self._end_client.call_async(req)
        future.add_done_callback(self._on_end_episode_done)
        self.get_logger().info(f"operator marked {mark}: ending episode {self._episode_id!r}")

    def _on_end_episode_done(self, future: Any) -> None:
        res = future.result()
        if res is None or not res.success:
            why = "no response" if res is None else res.message
            self.get_logger().error(f"EndEpisode failed: {why}")


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = ArbiterNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as exc:
        print(f"{NODE_NAME}: {exc}", file=sys.stderr)
        return 2
    except Exception:
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

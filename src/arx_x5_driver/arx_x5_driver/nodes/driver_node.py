"""The robot driver: a lifecycle node around one :class:`~arx_x5_driver.core.robot.ArmBackend`.

Thin adapter: message → :class:`~arx_x5_driver.core.safety.SafetyLayer` → backend → messages.

Interfaces (node name ``arx_x5_driver``):

=====================================  ===================================  ===================
name                                   type                                 what
=====================================  ===================================  ===================
``/habc/executed_command`` (sub)       ``habc_msgs/ExecutedCommand``        the command of each
                                                                            control tick
``/estop`` (sub)                       ``std_msgs/Bool`` (volatile and      ``true`` latches
                                       transient local)                     the e-stop
``~/estop`` (srv)                      ``std_srvs/Trigger``                 latches the e-stop
``~/reset_estop`` (srv)                ``std_srvs/Trigger``                 clears the latch
``~/reset_episode`` (srv)              ``std_srvs/Trigger``                 sim: next episode
                                                                            (seed + 1); arx:
                                                                            move home
``/joint_states`` (pub)                ``sensor_msgs/JointState``           after every tick
``~/measured_command`` (pub)           ``sensor_msgs/JointState``           where the arm is in
                                                                            the command space
                                                                            (cartesian: FK
                                                                            pose); after every
                                                                            tick
``/habc/env_state`` (pub)              ``std_msgs/Float32MultiArray``       sim only, every tick
                                                                            (not advertised when
                                                                            ``publish_env_state``
                                                                            is false)
``/cameras/<cam>/image_raw`` (pub)     ``sensor_msgs/Image`` (rgb8)         ``camera_hz``, from
                                                                            a capture thread
                                                                            (arx; sim renders
                                                                            on a timer); frozen
                                                                            frames are not
                                                                            published
``/cameras/<cam>/image_raw/compressed``  ``sensor_msgs/CompressedImage``    when ``compressed``
``~/applied_command`` (pub)            ``habc_msgs/ExecutedCommand``        what the arm was
                                                                            really sent, with
                                                                            hold + reason
``~/estop_latched`` (pub)              ``std_msgs/Bool`` (transient local)  on every change
``/diagnostics`` (pub)                 ``diagnostic_msgs/DiagnosticArray``  ``diagnostics_hz``
                                                                            and on each fault
=====================================  ===================================  ===================

Each received command runs at once (one backend step per command: in simulation the physics
advances exactly one control period per arbiter tick). After ``~/reset_episode`` the commands
of the episode id seen before it (the arbiter between episodes runs chunks computed on the old
scene) are ignored, so the arm holds at the reset pose until the next episode's commands
come. A control-rate timer holds the arm when no command came for ``safety.hold_after_ticks``
ticks. The e-stop works in every lifecycle
state and survives deactivate/activate and, through ``estop_latch_file``, a restart of the
node; only ``~/reset_estop`` clears it.

Faults: any exception of the backend while commanding or capturing is a hardware fault: the
arm holds (nothing more is sent), the log and ``/diagnostics`` say ERROR, the node leaves the
active state and activating again fails until it is reconfigured. A bad parameter, or a
configure/activate failure at ``autostart``, exits the process non-zero with the key and its
valid values, so a launcher's ``required`` takes the graph down. On ``backend: arx`` the node
refuses to start while a safety value is still the simulation's default
(:func:`~arx_x5_driver.core.config.arx_safety_problems`).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32MultiArray
from std_srvs.srv import Trigger

from arx_x5_driver.core.camera import FrameWatch
from arx_x5_driver.core.config import CONFIG_CLASSES, SIM_SAFETY_DEFAULTS, arx_safety_problems
from arx_x5_driver.core.factory import make_backend
from arx_x5_driver.core.robot import ArmBackend, Observation
from arx_x5_driver.core.safety import (
    REASON_ESTOP,
    REASON_NO_COMMAND,
    REASON_VELOCITY,
    PersistentLatch,
    SafetyConfig,
    SafetyLayer,
    Verdict,
    WorkspaceBox,
    per_joint_velocity,
    uniform_velocity,
)
from arx_x5_driver.nodes import declare
from habc_common import topics
from habc_msgs.msg import ExecutedCommand

NODE_NAME = topics.DRIVER_NODE
BACKENDS = ("sim", "arx")
IMAGE_RELIABILITY = ("reliable", "best_effort")
REASON_FAULT = "backend_fault"


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


@dataclass(frozen=True)
class DriverParams:
    """Every parameter of the node, read once (``config/driver.yaml``)."""

    backend: str
    autostart: bool
    seed: int
    control_hz: float
    cameras: tuple[str, ...]
    image_size: tuple[int, int]
    camera_hz: float
    compressed: bool
    jpeg_quality: int
    image_reliable: bool
    diagnostics_hz: float
    backend_fields: dict[str, Any]
    max_joint_velocity: float
    max_gripper_velocity: float
    velocity_mode: str
    hold_after_ticks: int
    workspace: dict[str, WorkspaceBox]
    max_joint_velocities: tuple[float, ...]
    max_linear_velocity: float
    max_angular_velocity: float
    estop_latch_file: str
    camera_stale_s: float
    camera_check_content: bool
    publish_env_state: bool

    @classmethod
    def declare(cls, node: Any) -> DriverParams:
        d = declare
        backend = d(node, "backend", "sim", f"robot backend, one of {BACKENDS}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        cameras = _names(d(node, "cameras", "", "comma-separated cameras to publish"))
        image_size = tuple(int(v) for v in d(node, "image_size", [224, 224], "(h, w) px"))
        fields: dict[str, Any]
        if backend == "sim":
            fields = {
                "task": d(node, "sim.task", "transfer_cube", "transfer_cube | insertion"),
                "max_steps": d(node, "sim.max_steps", 400, "episode limit (ticks)"),
                "cameras": cameras,
                "image_size": image_size,
            }
        else:
            serials = _names(d(node, "arx.camera_serials", "", "serials, same order as cameras"))
            if len(serials) != len(cameras):
                raise ValueError(
                    f"arx.camera_serials has {len(serials)} entries for cameras {cameras}"
                )
            fields = {
                "left_model": d(node, "arx.left_model", "X5", "left arm model"),
                "right_model": d(node, "arx.right_model", "X5", "right arm model"),
                "left_interface": d(node, "arx.left_interface", "can0", "left CAN interface"),
                "right_interface": d(node, "arx.right_interface", "can1", "right CAN iface"),
                "controller": d(node, "arx.controller", "joint", "joint | cartesian"),
                "camera_serials": tuple(zip(cameras, serials)),
                "image_size": image_size,
            }
        control_hz = float(d(node, "control_hz", 50.0, "control rate (Hz)"))
        fields["control_hz"] = control_hz
        if backend == "sim":
            fields.pop("control_hz")  # the sim's rate is its own (50 Hz)
        sim = SIM_SAFETY_DEFAULTS
        safety_values: dict[str, Any] = {}

        def ds(key: str, description: str) -> Any:
            safety_values[key] = d(node, key, sim[key], description)
            return safety_values[key]

        workspace_enabled = d(node, "safety.workspace_enabled", True, "check the workspace box")
        safety_values["safety.workspace_enabled"] = workspace_enabled
        workspace = {}
        for arm in ("left", "right"):
            lo = ds(f"safety.{arm}_box_low", f"{arm} box low (m)")
            hi = ds(f"safety.{arm}_box_high", f"{arm} box high (m)")
            if workspace_enabled:
                workspace[arm] = WorkspaceBox(tuple(lo), tuple(hi))
        from rcl_interfaces.msg import ParameterDescriptor
        from rclpy.parameter import Parameter

        per_joint = node.declare_parameter(
            "safety.max_joint_velocities",
            Parameter.Type.DOUBLE_ARRAY,
            ParameterDescriptor(
                description="per-joint limits of one arm (rad/s), e.g. the X5's; unset: uniform",
                read_only=True,
            ),
        ).value
        per_joint = tuple(float(v) for v in (per_joint or ()))
        safety_values["safety.max_joint_velocities"] = list(per_joint)
        image_reliability = d(node, "image_reliability", "reliable", " | ".join(IMAGE_RELIABILITY))
        if image_reliability not in IMAGE_RELIABILITY:
            raise ValueError(
                f"image_reliability must be one of {IMAGE_RELIABILITY}, got {image_reliability!r}"
            )
        safety_values["estop_latch_file"] = d(
            node, "estop_latch_file", sim["estop_latch_file"], "file of the persisted e-stop"
        )
        params = cls(
            backend=backend,
            autostart=bool(d(node, "autostart", True, "configure + activate at start")),
            seed=int(d(node, "seed", 0, "sim: seed of the first episode")),
            control_hz=control_hz,
            cameras=cameras,
            image_size=(int(image_size[0]), int(image_size[1])),
            camera_hz=float(d(node, "camera_hz", 30.0, "camera publish rate (Hz)")),
            compressed=bool(d(node, "compressed", False, "also publish JPEG CompressedImage")),
            jpeg_quality=int(d(node, "jpeg_quality", 90, "JPEG quality 1..100")),
            image_reliable=image_reliability == "reliable",
            diagnostics_hz=float(d(node, "diagnostics_hz", 1.0, "diagnostics rate (Hz)")),
            backend_fields=fields,
            max_joint_velocity=float(ds("safety.max_joint_velocity", "rad/s, every joint")),
            max_gripper_velocity=float(ds("safety.max_gripper_velocity", "1/s")),
            velocity_mode=ds("safety.velocity_mode", "clamp | reject"),
            hold_after_ticks=int(d(node, "safety.hold_after_ticks", 2, "silent ticks → hold")),
            workspace=workspace,
            max_joint_velocities=per_joint,
            max_linear_velocity=float(
                d(node, "safety.max_linear_velocity", 0.3, "cartesian mode: m/s")
            ),
            max_angular_velocity=float(
                d(node, "safety.max_angular_velocity", 1.5, "cartesian mode: rad/s")
            ),
            estop_latch_file=str(safety_values["estop_latch_file"]),
            camera_stale_s=float(
                d(node, "camera_stale_s", 0.5, "unchanged frame sequence/content → stale (s)")
            ),
            camera_check_content=bool(
                d(node, "camera_check_content", backend == "arx", "identical pixels = frozen")
            ),
            publish_env_state=bool(
                d(node, "publish_env_state", True, "sim: publish the privileged /habc/env_state")
            ),
        )
        for name in (
            "control_hz",
            "camera_hz",
            "diagnostics_hz",
            "camera_stale_s",
            "max_linear_velocity",
            "max_angular_velocity",
        ):
            value = getattr(params, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value}")
        if not 1 <= params.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {params.jpeg_quality}")
        if backend == "arx":  # the backend's own rate limit: the same limits
            if per_joint:
                fields["joint_velocity_max"] = per_joint
            fields["max_linear_velocity"] = params.max_linear_velocity
            fields["max_angular_velocity"] = params.max_angular_velocity
        try:  # every backend value checked now: a typo exits at once, naming the key
            CONFIG_CLASSES[backend](**fields)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{backend}.* parameters: {exc}") from exc
        if backend == "arx" and (problems := arx_safety_problems(safety_values)):
            raise ValueError(
                "refusing to drive the real arms with the simulation's safety settings: "
                + "; ".join(problems)
                + " (set them in config/driver_arx.yaml for your cell)"
            )
        return params


class DriverStartError(RuntimeError):
    """``autostart`` could not configure and activate the driver (the log says why)."""


class DriverNode(LifecycleNode):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.params = DriverParams.declare(self)
        self._backend: ArmBackend | None = None
        self._safety: SafetyLayer | None = None
        self._active = False
        # The e-stop latch: "" = clear. Kept across lifecycle transitions and, in
        # estop_latch_file, across restarts of the node; only ~/reset_estop clears it.
        self._latch_file = PersistentLatch(self.params.estop_latch_file)
        self._estop_reason = self._latch_file.load()
        self._fault = ""  # a backend fault: hold; activation fails until reconfigured
        self._backend_lock = threading.Lock()  # one backend call at a time, whatever the thread
        self._capture_stop = threading.Event()
        self._capture_thread: threading.Thread | None = None
        self._frame_watch: dict[str, FrameWatch] = {}
        self._stale_cameras: dict[str, str] = {}
        self._episode_over = ""
        # After ~/reset_episode: commands of the episode id seen before it (e.g. "", the
        # arbiter between episodes, running a chunk computed on the old scene) are ignored
        # (the arm holds on silence) until a command of another, non-empty episode id arrives.
        self._last_command_episode = ""
        self._reset_hold: str | None = None
        self._seed = self.params.seed
        self._tick = 0
        self._last_diag_s = 0.0
        self._timers: list[Any] = []
        self._pubs: dict[str, Any] = {}
        self._command_sub: Any = None
        # Always on, whatever the lifecycle state: the e-stop.
        latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self._estop_pub = self.create_publisher(Bool, "~/estop_latched", latched)
        self._publish_estop()
        if self._estop_reason:
            self.get_logger().error(
                f"E-STOP still latched from before the restart ({self._estop_reason}, "
                f"{self._latch_file.path}): holding until ~/reset_estop"
            )
        elif self._latch_file.path is None:
            self.get_logger().warning("estop_latch_file is '': the e-stop latch is not persisted")
        # /estop: a volatile subscription hears every publisher; a transient-local one also
        # gets an e-stop published (transient-local) while this node was down.
        self.create_subscription(Bool, topics.ESTOP, self._on_estop_msg, 10)
        self.create_subscription(Bool, topics.ESTOP, self._on_estop_msg, latched)
        self.create_service(Trigger, "~/estop", self._on_estop_srv)
        self.create_service(Trigger, "~/reset_estop", self._on_reset_estop)
        self.create_service(Trigger, "~/reset_episode", self._on_reset_episode)
        if self.params.autostart:
            self.trigger_configure()
            if self._backend is None:
                raise DriverStartError(f"configure failed: {self._fault or 'see the log'}")
            self.trigger_activate()
            if not self._active:
                raise DriverStartError(f"activate failed: {self._fault or 'see the log'}")

    # Helpers ------------------------------------------------------------------------------
    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _publish_estop(self) -> None:
        self._estop_pub.publish(Bool(data=bool(self._estop_reason)))

    def _latch(self, reason: str) -> None:
        if not self._estop_reason:
            self._estop_reason = reason
            self.get_logger().error(f"E-STOP latched ({reason}): holding until ~/reset_estop")
        try:
            self._latch_file.set(self._estop_reason)
        except OSError as exc:  # the latch still holds in memory
            self.get_logger().error(f"could not persist the e-stop latch: {exc}")
        if self._safety is not None:
            self._safety.estop(self._estop_reason)
        self._publish_estop()
        self._publish_diagnostics(force=True)

    # Lifecycle ----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        try:
            backend = make_backend(p.backend, **p.backend_fields)
            backend.connect()
            backend.reset(seed=self._seed)
            spec = backend.spec
            config = SafetyConfig(
                action_names=spec.action_names,
                arm_slices=spec.arm_slices,
                low=spec.action_low,
                high=spec.action_high,
                max_velocity=self._velocity_limits(backend),
                control_period_s=1.0 / p.control_hz,
                hold_after_ticks=p.hold_after_ticks,
                velocity_mode=p.velocity_mode,
                workspace=p.workspace,
            )
            fk = backend.end_effector_positions if p.workspace else None
            if fk is not None:
                fk(backend.hold_position())  # fail now, not at the first command
            safety = SafetyLayer(config, fk)
        except Exception as exc:  # any failure: stay unconfigured and say why
            self._fault = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"configure failed: {self._fault}")
            if "backend" in locals():
                backend.disconnect()
            return TransitionCallbackReturn.FAILURE
        self._fault = ""
        self._backend, self._safety = backend, safety
        self._frame_watch = {
            cam: FrameWatch(p.camera_stale_s, p.camera_check_content) for cam in p.cameras
        }
        self._stale_cameras = {}
        if self._estop_reason:
            safety.estop(self._estop_reason)
        qos = QoSProfile(
            depth=5,
            reliability=ReliabilityPolicy.RELIABLE
            if p.image_reliable
            else ReliabilityPolicy.BEST_EFFORT,
        )
        self._pubs = {
            "joints": self.create_publisher(JointState, topics.JOINT_STATES, 10),
            "measured": self.create_publisher(JointState, "~/measured_command", 10),
            "applied": self.create_publisher(ExecutedCommand, "~/applied_command", 10),
            "diag": self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10),
        }
        if p.publish_env_state:  # off for image policies: the topic does not even exist
            self._pubs["env"] = self.create_publisher(Float32MultiArray, topics.ENV_STATE, 10)
        for cam in p.cameras:
            self._pubs[f"img:{cam}"] = self.create_publisher(Image, topics.camera_topic(cam), qos)
            if p.compressed:
                self._pubs[f"jpg:{cam}"] = self.create_publisher(
                    CompressedImage, topics.camera_topic(cam, True), qos
                )
        self.get_logger().info(
            f"configured: backend {p.backend}, {spec.action_dim} dims, cameras {p.cameras}, "
            f"workspace boxes {sorted(p.workspace)}"
        )
        return TransitionCallbackReturn.SUCCESS

    def _velocity_limits(self, backend: ArmBackend) -> tuple[float, ...]:
        """Per-dimension velocity limits in the backend's command space."""
        p, spec = self.params, backend.spec
        if spec.action_names != spec.joint_names:  # cartesian: x y z roll pitch yaw gripper
            arm = [p.max_linear_velocity] * 3 + [p.max_angular_velocity] * 3
            return per_joint_velocity(spec.arm_slices, arm, p.max_gripper_velocity)
        if p.max_joint_velocities:
            return per_joint_velocity(
                spec.arm_slices, p.max_joint_velocities, p.max_gripper_velocity
            )
        return uniform_velocity(spec.arm_slices, p.max_joint_velocity, p.max_gripper_velocity)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self._backend is not None and self._safety is not None
        if self._fault:
            self.get_logger().error(f"activate refused: backend fault ({self._fault})")
            return TransitionCallbackReturn.FAILURE
        try:
            # The hold target is where the arm is, in the command's own space (cartesian: the
            # end-effector pose by forward kinematics): activating never moves the arm.
            self._safety.start(self._backend.hold_position(), self._now_s())
            obs = self._backend.observe_state()
        except (ValueError, RuntimeError, OSError) as exc:
            self.get_logger().error(f"activate failed: {type(exc).__name__}: {exc}")
            return TransitionCallbackReturn.FAILURE
        p = self.params
        self._command_sub = self.create_subscription(
            ExecutedCommand, topics.EXECUTED_COMMAND, self._on_command, 10
        )
        self._timers = [self.create_timer(1.0 / p.control_hz, self._on_tick)]
        self._timers.append(self.create_timer(1.0 / p.diagnostics_hz, self._publish_diagnostics))
        self._active = True
        if p.cameras and not self._backend.capture_shares_state:
            # Cameras that are their own devices (RealSense) are read in a capture thread,
            # never on the control tick.
            self._capture_stop.clear()
            self._capture_thread = threading.Thread(
                target=self._capture_loop, name="capture", daemon=True
            )
            self._capture_thread.start()
        elif p.cameras:  # a simulator renders from its physics (and its GL context's thread)
            self._timers.append(self.create_timer(1.0 / p.camera_hz, self._on_camera_timer))
        self._publish_state(obs, self._now_s())
        self.get_logger().info("active: executing /habc/executed_command")
        return super().on_activate(state)

    def _stop(self) -> None:
        self._active = False
        self._capture_stop.set()
        if self._capture_thread is not None:
            self._capture_thread.join(timeout=5.0)
            self._capture_thread = None
        for timer in self._timers:
            self.destroy_timer(timer)
        self._timers = []
        if self._command_sub is not None:
            self.destroy_subscription(self._command_sub)
            self._command_sub = None

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()  # the arm keeps its last target
        return super().on_deactivate(state)

    def _release(self) -> None:
        self._stop()
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs = {}
        if self._backend is not None:
            self._backend.disconnect()
        self._backend, self._safety = None, None

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _on_fault(self, where: str, exc: BaseException) -> None:
        """A hardware fault: hold (send nothing more), say so at ERROR level and on
        /diagnostics, and leave the active state; activating again fails until the driver is
        reconfigured (cleanup + configure) or restarted."""
        if self._fault:
            return
        self._fault = f"{where}: {type(exc).__name__}: {exc}"
        self._active = False
        self.get_logger().error(f"backend fault, holding: {self._fault}")
        self._publish_diagnostics(force=True, bypass_rate=True)
        # Out of the active state now (a failed activation from here on): the executor runs
        # the transition after this callback returns.
        self._fault_timer = self.create_timer(0.001, self._deactivate_after_fault)

    def _deactivate_after_fault(self) -> None:
        timer = getattr(self, "_fault_timer", None)
        if timer is not None:
            self.destroy_timer(timer)
            self._fault_timer = None
            self.trigger_deactivate()

    # Control path -------------------------------------------------------------------------
    def _on_command(self, msg: ExecutedCommand) -> None:
        if not self._active or self._safety is None:
            return
        if self._reset_hold is not None:
            if msg.episode_id == self._reset_hold or not msg.episode_id:
                return  # a command for the scene before the reset: hold (on silence)
            self._reset_hold = None
        self._last_command_episode = msg.episode_id
        now = self._now_s()
        verdict = self._safety.command(np.asarray(msg.action, dtype=np.float64), now)
        self._execute(verdict, now, msg)

    def _on_tick(self) -> None:
        if not self._active or self._safety is None:
            return
        now = self._now_s()
        verdict = self._safety.tick(now)
        if verdict is not None:
            self._execute(verdict, now, None)

    def _execute(self, verdict: Verdict, now: float, msg: ExecutedCommand | None) -> None:
        assert self._backend is not None
        log = self.get_logger()
        if msg is not None and verdict.hold:
            log.warning(
                f"rejected command (step {msg.step_index}): {verdict.reason}: {verdict.detail}; "
                "holding",
                throttle_duration_sec=1.0,
            )
            if verdict.reason != REASON_ESTOP:
                self._publish_diagnostics(force=True)
        elif verdict.reason == REASON_NO_COMMAND:
            log.info(f"holding: {verdict.detail}", throttle_duration_sec=5.0)
        elif verdict.reason:
            log.warning(f"{verdict.reason}: {verdict.detail}", throttle_duration_sec=1.0)
        backend = self._backend
        executed = not self._episode_over
        task_success = False
        try:
            with self._backend_lock:
                if executed and backend.status().done:
                    self._episode_over, executed = "done", False  # ended between two ticks
                if executed:
                    try:
                        backend.command(verdict.target)
                    except ValueError as exc:  # never expected after the safety layer: hold
                        log.error(f"backend refused target: {exc}")
                    status = backend.status()
                    if status.done:
                        # Say so at once (not at the next periodic diagnostics): the operator
                        # marks the outcome from it, and every later tick is recorded for
                        # nothing.
                        self._episode_over = status.failure or (
                            "success" if status.success else "done"
                        )
                        task_success = bool(status.success)
                        log.info(f"episode over after {status.step} steps: {self._episode_over}")
                        self._publish_diagnostics(force=True)
                obs = backend.observe_state()
        except Exception as exc:  # a hardware fault (CAN, SDK, simulator): hold, never go on
            self._on_fault("command", exc)
            return
        self._tick += 1
        self._publish_state(obs, now, verdict, msg, executed, task_success)

    def _publish_state(
        self,
        obs: Observation,
        now: float,
        verdict: Verdict | None = None,
        msg: ExecutedCommand | None = None,
        executed: bool = True,
        task_success: bool = False,
    ) -> None:
        assert self._backend is not None
        stamp = self.get_clock().now().to_msg()
        names = list(self._backend.spec.joint_names)
        js = JointState(name=names)
        js.header.stamp = stamp
        js.position = np.asarray(obs.joint_positions, dtype=np.float64).tolist()
        js.velocity = np.asarray(obs.joint_velocities, dtype=np.float64).tolist()
        self._pubs["joints"].publish(js)
        spec = self._backend.spec
        measured = JointState(name=list(spec.action_names))
        measured.header.stamp = stamp
        if spec.action_names == spec.joint_names:
            measured.position = js.position
        else:  # cartesian: the end-effector pose by forward kinematics
            measured.position = np.asarray(self._backend.hold_position(), np.float64).tolist()
        self._pubs["measured"].publish(measured)
        if obs.env_state is not None and "env" in self._pubs:
            self._pubs["env"].publish(
                Float32MultiArray(data=np.asarray(obs.env_state, np.float32).tolist())
            )
        if verdict is None:
            return
        # What the arm was really sent, matched to the arbiter's command by episode_id and
        # step_index (the recorder stores it; the learner imitates it, never a refused,
        # clamped or unexecuted command).
        applied = ExecutedCommand()
        applied.header.stamp = stamp
        applied.step_index = self._tick if msg is None else msg.step_index
        applied.episode_id = "" if msg is None else msg.episode_id
        applied.action = np.asarray(verdict.target, dtype=np.float32).tolist()
        applied.hold = verdict.hold or not executed
        applied.hold_reason = (
            verdict.reason if verdict.hold else ("" if executed else topics.HOLD_EPISODE_OVER)
        )
        applied.clamped = verdict.accepted and executed and verdict.reason == REASON_VELOCITY
        applied.task_success = task_success
        n_arms = len(self._backend.spec.arm_slices)
        if msg is not None and not applied.hold and len(msg.controller) == n_arms:
            applied.controller = list(msg.controller)
            applied.checkpoint_id = msg.checkpoint_id
            applied.chunk_seq = msg.chunk_seq
            applied.chunk_row = msg.chunk_row
            applied.learner_step = msg.learner_step
        else:
            applied.controller = [ExecutedCommand.CONTROLLER_NONE] * n_arms
            applied.learner_step = -1
        self._pubs["applied"].publish(applied)

    def _capture_loop(self) -> None:
        """The capture thread: read the cameras at ``camera_hz`` and publish fresh frames.

        A camera whose frame sequence (or, on real cameras, whose pixels) stopped changing for
        ``camera_stale_s`` is frozen: its frames are no longer published (readers then see
        the last image age and hold), and an ERROR is logged and put on /diagnostics.
        """
        period = 1.0 / self.params.camera_hz
        next_t = time.monotonic()
        while not self._capture_stop.is_set():
            backend = self._backend
            if backend is None or not self._active:
                break
            try:
                obs = backend.capture()
            except Exception as exc:  # a camera fault is a hardware fault
                self._on_fault("capture", exc)
                break
            self._publish_images(obs, time.monotonic())
            next_t += period
            self._capture_stop.wait(max(0.0, next_t - time.monotonic()))
            if time.monotonic() - next_t > period:  # fell behind: do not burst to catch up
                next_t = time.monotonic()

    def _on_camera_timer(self) -> None:
        backend = self._backend
        if backend is None or not self._active:
            return
        try:
            obs = backend.capture()
        except Exception as exc:
            self._on_fault("capture", exc)
            return
        self._publish_images(obs, time.monotonic())

    def _publish_images(self, obs: Observation, now_mono: float) -> None:
        stamp = self.get_clock().now().to_msg()
        p = self.params
        for cam in p.cameras:
            rgb = obs.images.get(cam)
            if rgb is None:
                continue
            watch = self._frame_watch.get(cam)
            stale = "" if watch is None else watch.update(obs.frame_seq.get(cam), rgb, now_mono)
            if stale:
                if cam not in self._stale_cameras:
                    self._stale_cameras[cam] = stale
                    self.get_logger().error(f"camera {cam} frozen ({stale}): not publishing it")
                    self._publish_diagnostics(force=True, bypass_rate=True)
                continue
            if self._stale_cameras.pop(cam, None):
                self.get_logger().warning(f"camera {cam} streams again")
            rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
            img = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0)
            img.header.stamp = stamp
            img.header.frame_id = f"{cam}_optical_frame"
            img.step = 3 * rgb.shape[1]
            img.data = rgb.tobytes()
            self._pubs[f"img:{cam}"].publish(img)
            if p.compressed:
                import cv2

                ok, jpg = cv2.imencode(
                    ".jpg", rgb[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), p.jpeg_quality]
                )
                if ok:
                    cm = CompressedImage(format="rgb8; jpeg compressed bgr8", data=jpg.tobytes())
                    cm.header = img.header
                    self._pubs[f"jpg:{cam}"].publish(cm)

    # E-stop and episode services ----------------------------------------------------------
    def _on_estop_msg(self, msg: Bool) -> None:
        if msg.data:
            self._latch("estop topic")

    def _on_estop_srv(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        self._latch("estop service")
        res.success, res.message = True, "e-stop latched"
        return res

    def _on_reset_estop(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        was = self._estop_reason
        try:
            self._latch_file.clear()
        except OSError as exc:  # still latched on disk: stay latched
            res.success, res.message = False, f"could not clear {self._latch_file.path}: {exc}"
            self.get_logger().error(res.message)
            return res
        self._estop_reason = ""
        if self._safety is not None:
            self._safety.reset_estop()
        self._publish_estop()
        self._publish_diagnostics(force=True)
        if was:
            self.get_logger().warning(f"e-stop reset (was: {was})")
        res.success = True
        res.message = f"e-stop cleared (was: {was})" if was else "e-stop was not latched"
        return res

    def _on_reset_episode(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        if self._backend is None or self._safety is None:
            res.success, res.message = False, "driver is not configured"
            return res
        if self._estop_reason:
            res.success, res.message = False, "e-stop latched: reset it first"
            return res
        if self._fault:
            res.success, res.message = False, f"backend fault: {self._fault}"
            return res
        self._seed += 1
        try:
            with self._backend_lock:
                self._backend.reset(seed=self._seed)
                self._safety.start(self._backend.hold_position(), self._now_s())
        except (RuntimeError, ValueError) as exc:
            res.success, res.message = False, f"reset failed: {exc}"
            return res
        self._episode_over = ""
        self._reset_hold = self._last_command_episode
        res.success, res.message = True, f"new episode, seed {self._seed}"
        return res

    # Diagnostics --------------------------------------------------------------------------
    def _publish_diagnostics(self, force: bool = False, bypass_rate: bool = False) -> None:
        pub = self._pubs.get("diag")
        now = time.monotonic()
        if pub is None or (force and not bypass_rate and now - self._last_diag_s < 0.05):
            return
        self._last_diag_s = now
        st = DiagnosticStatus(name=f"{NODE_NAME}: safety", hardware_id=self.params.backend)
        safety = self._safety
        if self._fault:
            st.level, st.message = DiagnosticStatus.ERROR, f"backend fault ({self._fault})"
        elif self._estop_reason:
            st.level, st.message = DiagnosticStatus.ERROR, f"e-stop latched ({self._estop_reason})"
        elif self._stale_cameras:
            frozen = ", ".join(f"{c}: {r}" for c, r in self._stale_cameras.items())
            st.level, st.message = DiagnosticStatus.ERROR, f"camera frozen ({frozen})"
        elif safety is not None and safety.last_rejection and force:
            st.level, st.message = DiagnosticStatus.WARN, f"rejected: {safety.last_rejection}"
        else:
            st.level, st.message = DiagnosticStatus.OK, "active" if self._active else "inactive"
        values = {
            "estop_latched": str(bool(self._estop_reason)).lower(),
            "ticks": str(self._tick),
            "fault": self._fault,
            "frozen_cameras": ",".join(sorted(self._stale_cameras)),
        }
        if safety is not None:
            values.update({k: str(v) for k, v in safety.counts.items()})
            values["last_rejection"] = safety.last_rejection
        if self._backend is not None and not self._fault:
            status = self._backend.status()
            values.update(
                {
                    "episode_step": str(status.step),
                    "episode_success": str(bool(status.success)).lower(),
                    "episode_done": str(bool(status.done)).lower(),
                    "episode_failure": status.failure or "",
                    "seed": str(self._seed),
                }
            )
        st.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        pub.publish(arr)


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = DriverNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as exc:  # bad parameters: say which and exit non-zero
        print(f"{NODE_NAME}: {exc}", file=sys.stderr)
        return 2
    except DriverStartError as exc:  # autostart failed: exit, so a required node stops all
        print(f"{NODE_NAME}: {exc}", file=sys.stderr)
        return 1
    except Exception:
        if rclpy.ok():  # a real failure, not a callback cut short by shutdown
            raise
    finally:
        if node is not None:
            node._release()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

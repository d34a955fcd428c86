"""The robot driver: a lifecycle node around one :class:`~arx_x5_driver.core.robot.ArmBackend`.

Thin adapter: message → :class:`~arx_x5_driver.core.safety.SafetyLayer` → backend → messages.

Interfaces (node name ``arx_x5_driver``):

=====================================  ===================================  ===================
name                                   type                                 what
=====================================  ===================================  ===================
``/habc/executed_command`` (sub)       ``habc_msgs/ExecutedCommand``        the command of each
                                                                            control tick
``/estop`` (sub)                       ``std_msgs/Bool``                    ``true`` latches
                                                                            the e-stop
``~/estop`` (srv)                      ``std_srvs/Trigger``                 latches the e-stop
``~/reset_estop`` (srv)                ``std_srvs/Trigger``                 clears the latch
``~/reset_episode`` (srv)              ``std_srvs/Trigger``                 sim: next episode
                                                                            (seed + 1); arx:
                                                                            move home
``/joint_states`` (pub)                ``sensor_msgs/JointState``           after every tick
``/habc/env_state`` (pub)              ``std_msgs/Float32MultiArray``       sim only, every tick
                                                                            (not advertised when
                                                                            ``publish_env_state``
                                                                            is false)
``/cameras/<cam>/image_raw`` (pub)     ``sensor_msgs/Image`` (rgb8)         ``camera_hz``
``/cameras/<cam>/image_raw/compressed``  ``sensor_msgs/CompressedImage``    when ``compressed``
``~/applied_command`` (pub)            ``habc_msgs/ExecutedCommand``        what the arm was
                                                                            really sent, with
                                                                            hold + reason
``~/estop_latched`` (pub)              ``std_msgs/Bool`` (transient local)  on every change
``/diagnostics`` (pub)                 ``diagnostic_msgs/DiagnosticArray``  ``diagnostics_hz``
                                                                            and on each fault
=====================================  ===================================  ===================

Each received command runs at once (one backend step per command: in simulation the physics
advances exactly one control period per arbiter tick). A control-rate timer holds the arm when
no command came for ``safety.hold_after_ticks`` ticks. The e-stop works in every lifecycle
state and survives deactivate/activate; only ``~/reset_estop`` clears it.
"""

from __future__ import annotations

import math
import sys
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

from arx_x5_driver.core.factory import make_backend
from arx_x5_driver.core.robot import ArmBackend, Observation
from arx_x5_driver.core.safety import (
    REASON_ESTOP,
    REASON_NO_COMMAND,
    SafetyConfig,
    SafetyLayer,
    Verdict,
    WorkspaceBox,
    uniform_velocity,
)
from arx_x5_driver.nodes import declare
from habc_msgs.msg import ExecutedCommand

NODE_NAME = "arx_x5_driver"
TOPIC_COMMAND = "/habc/executed_command"
TOPIC_JOINT_STATES = "/joint_states"
TOPIC_ENV_STATE = "/habc/env_state"
TOPIC_ESTOP = "/estop"
BACKENDS = ("sim", "arx")


def camera_topic(camera: str, compressed: bool = False) -> str:
    """``/cameras/<camera>/image_raw[/compressed]`` (same as ``habc_learner``'s bag format)."""
    base = f"/cameras/{camera}/image_raw"
    return base + "/compressed" if compressed else base


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
    publish_env_state: bool = True

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
        workspace = {}
        if d(node, "safety.workspace_enabled", True, "check the per-arm workspace box"):
            for arm, lo_default, hi_default in (
                ("left", [-0.45, 0.15, -0.03], [0.25, 0.85, 0.6]),
                ("right", [-0.25, 0.15, -0.03], [0.45, 0.85, 0.6]),
            ):
                lo = d(node, f"safety.{arm}_box_low", lo_default, f"{arm} box low (m)")
                hi = d(node, f"safety.{arm}_box_high", hi_default, f"{arm} box high (m)")
                workspace[arm] = WorkspaceBox(tuple(lo), tuple(hi))
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
            image_reliable=d(node, "image_reliability", "reliable", "reliable | best_effort")
            == "reliable",
            diagnostics_hz=float(d(node, "diagnostics_hz", 1.0, "diagnostics rate (Hz)")),
            backend_fields=fields,
            max_joint_velocity=float(d(node, "safety.max_joint_velocity", 30.0, "rad/s")),
            max_gripper_velocity=float(d(node, "safety.max_gripper_velocity", 10.0, "1/s")),
            velocity_mode=d(node, "safety.velocity_mode", "clamp", "clamp | reject"),
            hold_after_ticks=int(d(node, "safety.hold_after_ticks", 2, "silent ticks → hold")),
            workspace=workspace,
            publish_env_state=bool(
                d(node, "publish_env_state", True, "sim: publish the privileged /habc/env_state")
            ),
        )
        for name in ("control_hz", "camera_hz", "diagnostics_hz"):
            value = getattr(params, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value}")
        if not 1 <= params.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {params.jpeg_quality}")
        return params


class DriverNode(LifecycleNode):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.params = DriverParams.declare(self)
        self._backend: ArmBackend | None = None
        self._safety: SafetyLayer | None = None
        self._active = False
        self._estop_reason = ""  # the latch; "" = clear (kept across lifecycle transitions)
        self._episode_over = ""
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
        self.create_subscription(Bool, TOPIC_ESTOP, self._on_estop_msg, 10)
        self.create_service(Trigger, "~/estop", self._on_estop_srv)
        self.create_service(Trigger, "~/reset_estop", self._on_reset_estop)
        self.create_service(Trigger, "~/reset_episode", self._on_reset_episode)
        if self.params.autostart:
            self.trigger_configure()
            if self._backend is not None:
                self.trigger_activate()

    # Helpers ------------------------------------------------------------------------------
    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _publish_estop(self) -> None:
        self._estop_pub.publish(Bool(data=bool(self._estop_reason)))

    def _latch(self, reason: str) -> None:
        if not self._estop_reason:
            self._estop_reason = reason
            self.get_logger().error(f"E-STOP latched ({reason}): holding until ~/reset_estop")
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
            obs = backend.reset(seed=self._seed)
            spec = backend.spec
            config = SafetyConfig(
                action_names=spec.action_names,
                arm_slices=spec.arm_slices,
                low=spec.action_low,
                high=spec.action_high,
                max_velocity=uniform_velocity(
                    spec.arm_slices, p.max_joint_velocity, p.max_gripper_velocity
                ),
                control_period_s=1.0 / p.control_hz,
                hold_after_ticks=p.hold_after_ticks,
                velocity_mode=p.velocity_mode,
                workspace=p.workspace,
            )
            fk = backend.end_effector_positions if p.workspace else None
            if fk is not None:
                fk(np.asarray(obs.joint_positions))  # fail now, not at the first command
            safety = SafetyLayer(config, fk)
        except Exception as exc:  # any failure: stay unconfigured and say why
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            if "backend" in locals():
                backend.disconnect()
            return TransitionCallbackReturn.FAILURE
        self._backend, self._safety = backend, safety
        if self._estop_reason:
            safety.estop(self._estop_reason)
        qos = QoSProfile(
            depth=5,
            reliability=ReliabilityPolicy.RELIABLE
            if p.image_reliable
            else ReliabilityPolicy.BEST_EFFORT,
        )
        self._pubs = {
            "joints": self.create_publisher(JointState, TOPIC_JOINT_STATES, 10),
            "applied": self.create_publisher(ExecutedCommand, "~/applied_command", 10),
            "diag": self.create_publisher(DiagnosticArray, "/diagnostics", 10),
        }
        if p.publish_env_state:  # off for image policies: the topic does not even exist
            self._pubs["env"] = self.create_publisher(Float32MultiArray, TOPIC_ENV_STATE, 10)
        for cam in p.cameras:
            self._pubs[f"img:{cam}"] = self.create_publisher(Image, camera_topic(cam), qos)
            if p.compressed:
                self._pubs[f"jpg:{cam}"] = self.create_publisher(
                    CompressedImage, camera_topic(cam, True), qos
                )
        self.get_logger().info(
            f"configured: backend {p.backend}, {spec.action_dim} dims, cameras {p.cameras}, "
            f"workspace boxes {sorted(p.workspace)}"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self._backend is not None and self._safety is not None
        obs = self._backend.observe_state()
        try:
            self._safety.start(obs.joint_positions, self._now_s())
        except ValueError as exc:
            self.get_logger().error(f"activate failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        p = self.params
        self._command_sub = self.create_subscription(
            ExecutedCommand, TOPIC_COMMAND, self._on_command, 10
        )
        self._timers = [self.create_timer(1.0 / p.control_hz, self._on_tick)]
        if p.cameras:
            self._timers.append(self.create_timer(1.0 / p.camera_hz, self._on_camera))
        self._timers.append(self.create_timer(1.0 / p.diagnostics_hz, self._publish_diagnostics))
        self._active = True
        self._publish_state(obs, self._now_s())
        self.get_logger().info("active: executing /habc/executed_command")
        return super().on_activate(state)

    def _stop(self) -> None:
        self._active = False
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

    # Control path -------------------------------------------------------------------------
    def _on_command(self, msg: ExecutedCommand) -> None:
        if not self._active or self._safety is None:
            return
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
        if not self._episode_over:
            try:
                self._backend.command(verdict.target)
            except RuntimeError as exc:  # sim: the episode is over; nothing moves
                self._episode_over = str(exc)
                log.info(f"backend stopped stepping: {exc}")
            except ValueError as exc:  # never expected after the safety layer: hold
                log.error(f"backend refused target: {exc}")
            else:
                status = self._backend.status()
                if status.done:
                    # Say so at once (not at the next periodic diagnostics): the operator marks
                    # the outcome from it, and every tick until then is recorded for nothing.
                    self._episode_over = status.failure or ("success" if status.success else "done")
                    log.info(f"episode over after {status.step} steps: {self._episode_over}")
                    self._publish_diagnostics(force=True)
        self._tick += 1
        self._publish_state(self._backend.observe_state(), now, verdict, msg)

    def _publish_state(
        self,
        obs: Observation,
        now: float,
        verdict: Verdict | None = None,
        msg: ExecutedCommand | None = None,
    ) -> None:
        assert self._backend is not None
        stamp = self.get_clock().now().to_msg()
        names = list(self._backend.spec.joint_names)
        js = JointState(name=names)
        js.header.stamp = stamp
        js.position = np.asarray(obs.joint_positions, dtype=np.float64).tolist()
        js.velocity = np.asarray(obs.joint_velocities, dtype=np.float64).tolist()
        self._pubs["joints"].publish(js)
        if obs.env_state is not None and "env" in self._pubs:
            self._pubs["env"].publish(
                Float32MultiArray(data=np.asarray(obs.env_state, np.float32).tolist())
            )
        if verdict is None:
            return
        applied = ExecutedCommand()
        applied.header.stamp = stamp
        applied.step_index = self._tick
        applied.action = np.asarray(verdict.target, dtype=np.float32).tolist()
        applied.hold = verdict.hold
        applied.hold_reason = verdict.reason if verdict.hold else ""
        n_arms = len(self._backend.spec.arm_slices)
        if msg is not None and verdict.accepted and len(msg.controller) == n_arms:
            applied.controller = list(msg.controller)
            applied.episode_id = msg.episode_id
            applied.checkpoint_id = msg.checkpoint_id
            applied.chunk_seq = msg.chunk_seq
            applied.chunk_row = msg.chunk_row
            applied.learner_step = msg.learner_step
        else:
            applied.controller = [ExecutedCommand.CONTROLLER_NONE] * n_arms
            applied.learner_step = -1
        self._pubs["applied"].publish(applied)

    def _on_camera(self) -> None:
        if not self._active or self._backend is None:
            return
        obs = self._backend.observe()
        stamp = self.get_clock().now().to_msg()
        p = self.params
        for cam in p.cameras:
            rgb = obs.images.get(cam)
            if rgb is None:
                continue
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
        self._seed += 1
        try:
            obs = self._backend.reset(seed=self._seed)
            self._safety.start(obs.joint_positions, self._now_s())
        except (RuntimeError, ValueError) as exc:
            res.success, res.message = False, f"reset failed: {exc}"
            return res
        self._episode_over = ""
        res.success, res.message = True, f"new episode, seed {self._seed}"
        return res

    # Diagnostics --------------------------------------------------------------------------
    def _publish_diagnostics(self, force: bool = False) -> None:
        pub = self._pubs.get("diag")
        now = time.monotonic()
        if pub is None or (force and now - self._last_diag_s < 0.05):
            return
        self._last_diag_s = now
        st = DiagnosticStatus(name=f"{NODE_NAME}: safety", hardware_id=self.params.backend)
        safety = self._safety
        if self._estop_reason:
            st.level, st.message = DiagnosticStatus.ERROR, f"e-stop latched ({self._estop_reason})"
        elif safety is not None and safety.last_rejection and force:
            st.level, st.message = DiagnosticStatus.WARN, f"rejected: {safety.last_rejection}"
        else:
            st.level, st.message = DiagnosticStatus.OK, "active" if self._active else "inactive"
        values = {"estop_latched": str(bool(self._estop_reason)).lower(), "ticks": str(self._tick)}
        if safety is not None:
            values.update({k: str(v) for k, v in safety.counts.items()})
            values["last_rejection"] = safety.last_rejection
        if self._backend is not None:
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

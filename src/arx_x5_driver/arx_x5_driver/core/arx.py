"""The real bimanual ARX X5 through ``arx5-interface`` and three RealSense cameras.

Both vendor SDKs are imported lazily in :meth:`ArxBackend.connect` (``arx5_interface``, the
Python bindings of real-stanford/arx5-sdk, and ``pyrealsense2``), never at module import, so
this module imports on machines without them; ``connect`` then fails with a message that
names the missing package.

SDK calls used (arx5-sdk ``python/arx5_interface.pyi``)::

    RobotConfigFactory.get_instance().get_config(model) -> RobotConfig
        (.joint_pos_min, .joint_pos_max, .joint_dof, .gripper_width)
    ControllerConfigFactory.get_instance().get_config("joint_controller" |
        "cartesian_controller", joint_dof) -> ControllerConfig (.background_send_recv)
    Arx5JointController(robot_config, controller_config, interface_name)
        .reset_to_home() .get_joint_state() -> JointState .set_joint_cmd(JointState)
    Arx5CartesianController(robot_config, controller_config, interface_name)
        .reset_to_home() .get_joint_state() .get_eef_state() -> EEFState
        .set_eef_cmd(EEFState)
    JointState(pos, vel, torque, gripper_pos); .pos() .vel() .gripper_pos (m)
    EEFState(pose_6d, gripper_pos); .pose_6d()  # x, y, z, roll, pitch, yaw (arm base frame)

Action per arm: joint mode ``[6 joint angles (rad), gripper 0..1]``; cartesian mode
``[x, y, z, roll, pitch, yaw, gripper 0..1]``. The gripper is scaled by the model's
``gripper_width`` (m). Commands are checked (:func:`check_action`: NaN/inf always refused,
out-of-limit clamped or refused per config), then rate limited before anything reaches the
SDK: per joint ``joint_velocity_max / control_hz`` rad per command in joint mode (the X5's
``[5, 5, 5.5, 5.5, 5, 5]`` rad/s), ``max_linear_velocity / control_hz`` m and
``max_angular_velocity / control_hz`` rad per command in cartesian mode (angles wrapped).

Cartesian mode reports where the arms are in the command's own space: :meth:`ArxBackend
.hold_position` is the end-effector pose by forward kinematics of the measured joints
(``Arx5Solver.forward_kinematics``), so the driver holds at the pose the arm is in and never
at a joint vector read as a pose. Cameras are read by :meth:`ArxBackend.capture` (the driver's
capture thread), never on the control path (:meth:`ArxBackend.observe_state`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from arx_x5_driver.core.config import ArxConfig
from arx_x5_driver.core.robot import (
    X5_JOINTS,
    ArmBackend,
    Observation,
    RobotSpec,
    bimanual_action_names,
    check_action,
)

LOG = logging.getLogger(__name__)

ARMS = ("left", "right")
ARM_SLICES = (("left", 0, 7), ("right", 7, 14))
CARTESIAN_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")


class SdkMissingError(RuntimeError):
    """A vendor SDK (``arx5_interface`` or ``pyrealsense2``) is not importable."""


class DeviceError(RuntimeError):
    """An arm or camera could not be opened."""


def _import_arx5() -> Any:
    try:
        import arx5_interface
    except ImportError as exc:
        raise SdkMissingError(
            "the ARX X5 backend needs the 'arx5-interface' package (Python bindings of "
            "real-stanford/arx5-sdk): pip install arx5-interface; or use the 'sim' backend "
            f"(import failed: {exc})"
        ) from exc
    return arx5_interface


def _import_realsense() -> Any:
    try:
        import pyrealsense2
    except ImportError as exc:
        raise SdkMissingError(
            "RealSense cameras need the 'pyrealsense2' package: pip install pyrealsense2; or "
            f"configure camera_serials=() (import failed: {exc})"
        ) from exc
    return pyrealsense2


@dataclass
class _Arm:
    name: str
    controller: Any
    robot_config: Any
    gripper_width: float


class _Camera:
    """One RealSense colour stream; keeps the newest frame (poll, never block the loop)."""

    def __init__(self, rs: Any, name: str, serial: str, config: ArxConfig) -> None:
        self.name, self.serial = name, serial
        self._rs = rs
        h, w = config.capture_size
        self._size = config.image_size
        self.pipeline = rs.pipeline()
        rs_config = rs.config()
        rs_config.enable_device(serial)
        rs_config.enable_stream(rs.stream.color, w, h, rs.format.rgb8, config.capture_fps)
        try:
            self.pipeline.start(rs_config)
            frames = self.pipeline.wait_for_frames(config.frame_timeout_ms)
        except RuntimeError as exc:
            raise DeviceError(
                f"RealSense camera {name!r} (serial {serial}) did not start streaming "
                f"{w}x{h} rgb8 @ {config.capture_fps} fps: {exc}"
            ) from exc
        self.image = self._convert(frames.get_color_frame())

        self.seq = self._frame_number(frames.get_color_frame(), 0)

    @staticmethod
    def _frame_number(frame: Any, fallback: int) -> int:
        number = getattr(frame, "get_frame_number", None)
        return int(number()) if callable(number) else fallback

    def _convert(self, frame: Any) -> npt.NDArray[np.uint8]:
        img = np.asanyarray(frame.get_data()).copy()
        h, w = self._size
        if img.shape[:2] != (h, w):
            import cv2

            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(img, dtype=np.uint8)

    def latest(self) -> tuple[npt.NDArray[np.uint8], int]:
        """The newest image and its frame number; both unchanged when no new frame came (a
        frozen camera's number stops advancing)."""
        frames = self.pipeline.poll_for_frames()
        if frames:
            color = frames.get_color_frame()
            if color:
                self.image = self._convert(color)
                self.seq = self._frame_number(color, self.seq + 1)
        return self.image, self.seq

    def stop(self) -> None:
        try:
            self.pipeline.stop()
        except RuntimeError as exc:  # already stopped
            LOG.debug("camera %s stop: %s", self.name, exc)


class ArxBackend(ArmBackend):
    """Two ARX X5 arms (left, right) and up to three RealSense cameras."""

    name: ClassVar[str] = "arx"
    capture_shares_state: ClassVar[bool] = False  # RealSense pipelines, not the CAN bus

    def __init__(self, config: ArxConfig | None = None) -> None:
        self.config = config or ArxConfig()
        self._arms: list[_Arm] = []
        self._cameras: list[_Camera] = []
        self._sdk: Any = None
        self._spec: RobotSpec | None = None
        self._last_cmd: npt.NDArray[np.float64] | None = None
        self._step = 0
        self._solvers: dict[str, Any] = {}  # arm -> SDK kinematic solver (joint mode FK)

    # ArmBackend ---------------------------------------------------------------------------
    @property
    def spec(self) -> RobotSpec:
        if self._spec is None:
            raise RuntimeError("the ARX backend reads its limits from the SDK: call connect()")
        return self._spec

    @property
    def is_connected(self) -> bool:
        return bool(self._arms)

    def connect(self) -> None:
        if self._arms:
            return
        sdk = _import_arx5()
        rs = _import_realsense() if self.config.camera_serials else None
        cfg = self.config
        controller_type = f"{cfg.controller}_controller"
        try:
            for arm, model, interface in (
                ("left", cfg.left_model, cfg.left_interface),
                ("right", cfg.right_model, cfg.right_interface),
            ):
                robot_config = sdk.RobotConfigFactory.get_instance().get_config(model)
                ctrl_config = sdk.ControllerConfigFactory.get_instance().get_config(
                    controller_type, robot_config.joint_dof
                )
                ctrl_config.background_send_recv = True
                cls = (
                    sdk.Arx5JointController
                    if cfg.controller == "joint"
                    else sdk.Arx5CartesianController
                )
                try:
                    controller = cls(robot_config, ctrl_config, interface)
                except RuntimeError as exc:
                    raise DeviceError(
                        f"could not open the {arm} ARX {model} arm on CAN interface "
                        f"{interface!r}: {exc} (is the interface up? `ip link show {interface}`)"
                    ) from exc
                if int(robot_config.joint_dof) != 6:
                    raise DeviceError(
                        f"{arm} arm model {model} has {robot_config.joint_dof} joints; the "
                        "action layout expects 6 joints + gripper"
                    )
                self._arms.append(
                    _Arm(arm, controller, robot_config, float(robot_config.gripper_width))
                )
            if rs is not None:
                self._check_serials(rs)
                for name, serial in cfg.camera_serials:
                    self._cameras.append(_Camera(rs, name, serial, cfg))
        except BaseException:
            self.disconnect()
            raise
        self._sdk = sdk
        self._spec = self._build_spec()
        self._last_cmd = None
        LOG.info("ARX X5 pair connected (%s mode, %d cameras)", cfg.controller, len(self._cameras))

    def disconnect(self) -> None:
        """Stop the cameras and release the arms (the SDK leaves them in damping mode)."""
        for cam in self._cameras:
            cam.stop()
        self._cameras = []
        for arm in self._arms:
            try:
                arm.controller.set_to_damping()
            except RuntimeError as exc:
                LOG.warning("%s arm: set_to_damping failed: %s", arm.name, exc)
        self._arms = []
        self._sdk = None
        self._solvers = {}
        self._last_cmd = None

    def reset(self, seed: int | None = None) -> Observation:
        """Move both arms to the SDK's home pose (``seed`` is ignored on hardware)."""
        self._require_connected()
        for arm in self._arms:
            arm.controller.reset_to_home()
        self._last_cmd = None
        self._step = 0
        return self.observe()

    def observe_state(self) -> Observation:
        """Joint positions and velocities only: the control path never touches a camera."""
        self._require_connected()
        pos, vel = [], []
        for arm in self._arms:
            js = arm.controller.get_joint_state()
            pos.extend(np.asarray(js.pos(), dtype=np.float64).tolist())
            pos.append(float(js.gripper_pos) / arm.gripper_width)
            vel.extend(np.asarray(js.vel(), dtype=np.float64).tolist())
            vel.append(float(js.gripper_vel) / arm.gripper_width)
        return Observation(
            joint_positions=np.asarray(pos),
            joint_velocities=np.asarray(vel),
            env_state=None,
            timestamp=time.monotonic(),
            step=self._step,
        )

    def capture(self) -> Observation:
        """Joint state plus the newest image of every camera and its frame number."""
        state = self.observe_state()
        images, seqs = {}, {}
        for cam in self._cameras:
            images[cam.name], seqs[cam.name] = cam.latest()
        return Observation(
            joint_positions=state.joint_positions,
            joint_velocities=state.joint_velocities,
            images=images,
            env_state=None,
            timestamp=state.timestamp,
            step=state.step,
            frame_seq=seqs,
        )

    def observe(self) -> Observation:
        return self.capture()

    def hold_position(self) -> npt.NDArray[np.float64]:
        """The measured position in the command space: joint mode, the joint positions;
        cartesian mode, per arm ``[FK pose (x, y, z, roll, pitch, yaw), gripper]`` of the
        measured joints by the SDK's solver."""
        q = self.observe_state().joint_positions
        if self.config.controller == "joint":
            return q
        out = q.copy()
        for arm, (_, lo, hi) in zip(self._arms, ARM_SLICES):
            pose = np.asarray(self._solver(arm).forward_kinematics(q[lo : hi - 1]), np.float64)
            if pose.shape != (6,) or not np.all(np.isfinite(pose)):
                raise RuntimeError(f"{arm.name} arm: forward kinematics gave {pose.tolist()}")
            out[lo : hi - 1] = pose
        return out

    def command(self, action: npt.ArrayLike) -> None:
        self._require_connected()
        a = check_action(action, self.spec, self.config.out_of_limits, LOG)
        a = self._rate_limit(a)
        for arm, (_, lo, hi) in zip(self._arms, ARM_SLICES):
            part = a[lo:hi]
            gripper = float(part[6]) * arm.gripper_width
            if self.config.controller == "joint":
                zeros = np.zeros(6)
                cmd = self._sdk.JointState(part[:6].copy(), zeros, zeros.copy(), gripper)
                arm.controller.set_joint_cmd(cmd)
            else:
                cmd = self._sdk.EEFState(part[:6].copy(), gripper)
                arm.controller.set_eef_cmd(cmd)
        self._last_cmd = a
        self._step += 1

    def end_effector_positions(self, action: npt.ArrayLike) -> dict[str, npt.NDArray[np.float64]]:
        """Per arm, the end-effector position (m, arm base frame) ``action`` commands.

        Cartesian mode: the action's own ``x, y, z``. Joint mode: the SDK's kinematic solver
        (``Arx5Solver(urdf_path, joint_dof, joint_pos_min, joint_pos_max)
        .forward_kinematics(q) -> [x, y, z, roll, pitch, yaw]``), built once per arm.
        """
        self._require_connected()
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (14,):
            raise ValueError(f"action must have shape (14,), got {a.shape}")
        out: dict[str, npt.NDArray[np.float64]] = {}
        for arm, (_, lo, _hi) in zip(self._arms, ARM_SLICES):
            if self.config.controller == "cartesian":
                out[arm.name] = a[lo : lo + 3].copy()
                continue
            pose = np.asarray(self._solver(arm).forward_kinematics(a[lo : lo + 6]))
            out[arm.name] = pose[:3].astype(np.float64)
        return out

    def _solver(self, arm: _Arm) -> Any:
        """The SDK's kinematic solver of ``arm``, built once."""
        if arm.name not in self._solvers:
            rc = arm.robot_config
            try:
                self._solvers[arm.name] = self._sdk.Arx5Solver(
                    str(rc.urdf_path),
                    int(rc.joint_dof),
                    np.asarray(rc.joint_pos_min, dtype=np.float64),
                    np.asarray(rc.joint_pos_max, dtype=np.float64),
                )
            except (AttributeError, RuntimeError, TypeError) as exc:
                raise NotImplementedError(
                    f"{arm.name} arm: the SDK's kinematic solver is unavailable: {exc}"
                ) from exc
        return self._solvers[arm.name]

    # Internals ----------------------------------------------------------------------------
    def max_step(self) -> npt.NDArray[np.float64]:
        """Largest change per command, per action dimension (grippers: unlimited here)."""
        cfg = self.config
        if cfg.controller == "joint":
            per_arm = [v / cfg.control_hz for v in cfg.joint_velocity_max]
        else:
            lin = cfg.max_linear_velocity / cfg.control_hz
            ang = cfg.max_angular_velocity / cfg.control_hz
            per_arm = [lin, lin, lin, ang, ang, ang]
        return np.asarray([*per_arm, np.inf, *per_arm, np.inf], dtype=np.float64)

    def _rate_limit(self, a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Limit each dimension's change per command to :meth:`max_step` (cartesian angles by
        their wrapped difference)."""
        ref = self._last_cmd
        if ref is None:
            ref = self.hold_position()
        delta = a - ref
        if self.config.controller == "cartesian":
            for lo in (0, 7):
                rot = slice(lo + 3, lo + 6)
                delta[rot] = (delta[rot] + np.pi) % (2 * np.pi) - np.pi
        step = self.max_step()
        too_far = np.abs(delta) > step
        if too_far.any():
            names = [self.spec.action_names[i] for i in np.flatnonzero(too_far)]
            LOG.warning("rate limiting %s to %s per command", names, step[too_far].round(4))
            a = ref + np.clip(delta, -step, step)
        return a

    def _check_serials(self, rs: Any) -> None:
        found = {dev.get_info(rs.camera_info.serial_number) for dev in rs.context().query_devices()}
        missing = [(n, s) for n, s in self.config.camera_serials if s not in found]
        if missing:
            raise DeviceError(
                f"RealSense cameras not found: {missing}; connected serials: {sorted(found)}"
            )

    def _build_spec(self) -> RobotSpec:
        low: list[float] = []
        high: list[float] = []
        cfg = self.config
        for arm in self._arms:
            if cfg.controller == "joint":
                low.extend(float(v) for v in np.asarray(arm.robot_config.joint_pos_min))
                high.extend(float(v) for v in np.asarray(arm.robot_config.joint_pos_max))
            else:
                low.extend([*cfg.workspace_low, -np.pi, -np.pi, -np.pi])
                high.extend([*cfg.workspace_high, np.pi, np.pi, np.pi])
            low.append(0.0)
            high.append(1.0)
        if cfg.controller == "joint":
            names = bimanual_action_names(ARMS, X5_JOINTS)
        else:
            names = tuple(f"{arm}_{n}" for arm in ARMS for n in CARTESIAN_NAMES)
        return RobotSpec(
            action_names=names,
            arm_slices=ARM_SLICES,
            action_low=tuple(low),
            action_high=tuple(high),
            joint_names=bimanual_action_names(ARMS, X5_JOINTS),
            cameras=tuple(n for n, _ in cfg.camera_serials),
            control_hz=cfg.control_hz,
        )

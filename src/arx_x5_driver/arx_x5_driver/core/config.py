"""Typed, frozen configs of the robot backends, validated on construction.

One dataclass per backend; :func:`arx_x5_driver.core.factory.make_backend` picks the backend
from the config's ``backend`` name. ROS parameters map onto these fields in one place (the
driver node); nothing here imports a simulator or an SDK, except that
:class:`MetaWorldConfig` checks its task name against Meta-World's own list when Meta-World is
installed.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from arx_x5_driver.core.robot import OUT_OF_LIMITS_MODES

ALOHA_TASKS = ("transfer_cube", "insertion")
ALOHA_CAMERAS = ("top", "left_wrist", "right_wrist", "angle", "front_close")
ARX_MODELS = ("X5", "L5", "X5_umi", "L5_umi")
ARX_CONTROLLERS = ("joint", "cartesian")
ARX_CAMERA_NAMES = ("top", "left_wrist", "right_wrist")
#: Joint velocity maxima of the X5 (rad/s), as arx5-sdk's X5 robot config lists them.
X5_JOINT_VELOCITY_MAX = (5.0, 5.0, 5.5, 5.5, 5.0, 5.0)
METAWORLD_CAMERAS = ("corner", "corner2", "corner3", "topview", "behindGripper", "gripperPOV")


def did_you_mean(value: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` when ``value`` is close to one of ``choices``, else ``""``."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_choice(field_name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(
            f"{field_name} must be one of {tuple(choices)}, got {value!r}"
            + did_you_mean(value, choices)
        )


def _check_image_size(size: tuple[int, int], field_name: str = "image_size") -> None:
    if (
        len(size) != 2
        or not all(isinstance(v, int) for v in size)
        or not (8 <= size[0] <= 4096 and 8 <= size[1] <= 4096)
    ):
        raise ValueError(f"{field_name} must be (height, width) in 8..4096 pixels, got {size!r}")


def _check_cameras(cameras: tuple[str, ...], choices: Sequence[str]) -> None:
    if len(set(cameras)) != len(cameras):
        raise ValueError(f"cameras must be unique, got {cameras!r}")
    for cam in cameras:
        _check_choice("camera", cam, choices)


@dataclass(frozen=True)
class SimAlohaConfig:
    """The simulated bimanual robot (gym-aloha's scene driven through dm_control).

    Attributes:
        task: ``"transfer_cube"`` or ``"insertion"``.
        max_steps: episode limit in control steps (50 Hz); the expert needs ~300 on insertion.
        cameras: cameras rendered by ``observe()``; ``()`` = state only (fastest).
        image_size: ``(height, width)`` of rendered images.
        fast_render: no multisampling, shadows or reflections (about 7x faster).
        out_of_limits: ``"clamp"`` (log and clamp) or ``"raise"`` for out-of-limit commands.
    """

    backend: ClassVar[str] = "sim"

    task: str = "transfer_cube"
    max_steps: int = 400
    cameras: tuple[str, ...] = ()
    image_size: tuple[int, int] = (224, 224)
    fast_render: bool = True
    out_of_limits: str = "clamp"

    def __post_init__(self) -> None:
        _check_choice("task", self.task, ALOHA_TASKS)
        if not isinstance(self.max_steps, int) or self.max_steps <= 0:
            raise ValueError(f"max_steps must be a positive int, got {self.max_steps!r}")
        object.__setattr__(self, "cameras", tuple(self.cameras))
        object.__setattr__(self, "image_size", tuple(self.image_size))
        _check_cameras(self.cameras, ALOHA_CAMERAS)
        _check_image_size(self.image_size)
        _check_choice("out_of_limits", self.out_of_limits, OUT_OF_LIMITS_MODES)


@dataclass(frozen=True)
class ArxConfig:
    """The real bimanual ARX X5 through ``arx5-interface`` plus RealSense cameras.

    Attributes:
        left_model / right_model: arm model names known to ``arx5-interface``.
        left_interface / right_interface: CAN interfaces (``can0`` …), must differ.
        controller: ``"joint"`` (14-dim joint targets) or ``"cartesian"`` (per arm
            ``[x, y, z, roll, pitch, yaw, gripper]`` in the arm base frame).
        camera_serials: ``((camera_name, serial), ...)`` for the RealSense cameras; ``()`` = none.
        capture_size / capture_fps: RealSense colour stream mode, ``(height, width)``.
        image_size: ``(height, width)`` images are resized to for the observation.
        control_hz: rate the caller commands at (used for velocity limits).
        joint_velocity_max: per-joint velocity limit (rad/s, the X5's by default); a joint
            command is rate limited to ``joint_velocity_max / control_hz`` per command.
        max_linear_velocity / max_angular_velocity: cartesian mode rate limit of the
            end-effector position (m/s) and orientation (rad/s), per command
            ``v / control_hz``.
        workspace_low / workspace_high: cartesian mode position box per arm (m, arm frame).
        out_of_limits: ``"clamp"`` (log and clamp) or ``"raise"``.
        frame_timeout_ms: how long the first frame of a camera may take at connect.
    """

    backend: ClassVar[str] = "arx"

    left_model: str = "X5"
    right_model: str = "X5"
    left_interface: str = "can0"
    right_interface: str = "can1"
    controller: str = "joint"
    camera_serials: tuple[tuple[str, str], ...] = ()
    capture_size: tuple[int, int] = (480, 640)
    capture_fps: int = 30
    image_size: tuple[int, int] = (224, 224)
    control_hz: float = 50.0
    joint_velocity_max: tuple[float, ...] = X5_JOINT_VELOCITY_MAX
    max_linear_velocity: float = 0.3
    max_angular_velocity: float = 1.5
    workspace_low: tuple[float, float, float] = (-0.1, -0.5, -0.2)
    workspace_high: tuple[float, float, float] = (0.7, 0.5, 0.6)
    out_of_limits: str = "clamp"
    frame_timeout_ms: int = 5000

    def __post_init__(self) -> None:
        _check_choice("left_model", self.left_model, ARX_MODELS)
        _check_choice("right_model", self.right_model, ARX_MODELS)
        if not self.left_interface or not self.right_interface:
            raise ValueError("left_interface and right_interface must be CAN interface names")
        if self.left_interface == self.right_interface:
            raise ValueError(
                f"left_interface and right_interface must differ, both are {self.left_interface!r}"
            )
        _check_choice("controller", self.controller, ARX_CONTROLLERS)
        serials = tuple((str(n), str(s)) for n, s in self.camera_serials)
        object.__setattr__(self, "camera_serials", serials)
        _check_cameras(tuple(n for n, _ in serials), ARX_CAMERA_NAMES)
        for name, serial in serials:
            if not serial.strip():
                raise ValueError(f"camera {name!r} needs a RealSense serial number, got ''")
        if len({s for _, s in serials}) != len(serials):
            raise ValueError(f"camera serials must be unique, got {serials!r}")
        object.__setattr__(self, "capture_size", tuple(self.capture_size))
        object.__setattr__(self, "image_size", tuple(self.image_size))
        _check_image_size(self.capture_size, "capture_size")
        _check_image_size(self.image_size)
        if self.capture_fps not in (6, 15, 30, 60, 90):
            raise ValueError(
                f"capture_fps must be one of (6, 15, 30, 60, 90), got {self.capture_fps}"
            )
        if not (math.isfinite(self.control_hz) and 1.0 <= self.control_hz <= 1000.0):
            raise ValueError(f"control_hz must be in [1, 1000], got {self.control_hz}")
        vmax = tuple(float(v) for v in self.joint_velocity_max)
        object.__setattr__(self, "joint_velocity_max", vmax)
        if len(vmax) != 6 or not all(math.isfinite(v) and 0.0 < v <= 10.0 for v in vmax):
            raise ValueError(
                f"joint_velocity_max must be 6 values in (0, 10] rad/s, got {vmax} "
                f"(the X5's: {X5_JOINT_VELOCITY_MAX})"
            )
        for name in ("max_linear_velocity", "max_angular_velocity"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and 0.0 < value <= 3.0):
                raise ValueError(f"{name} must be in (0, 3], got {value}")
        if len(self.workspace_low) != 3 or len(self.workspace_high) != 3:
            raise ValueError("workspace_low and workspace_high must have 3 entries (x, y, z)")
        if not all(lo < hi for lo, hi in zip(self.workspace_low, self.workspace_high)):
            raise ValueError(
                f"workspace_low {self.workspace_low} must be below workspace_high "
                f"{self.workspace_high}"
            )
        _check_choice("out_of_limits", self.out_of_limits, OUT_OF_LIMITS_MODES)
        if self.frame_timeout_ms <= 0:
            raise ValueError(f"frame_timeout_ms must be > 0, got {self.frame_timeout_ms}")


def metaworld_task_names() -> tuple[str, ...]:
    """All Meta-World MT1 task names (imports Meta-World)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return tuple(ALL_V3_ENVIRONMENTS.keys())


@dataclass(frozen=True)
class MetaWorldConfig:
    """A Meta-World MT1 task (single Sawyer arm, 4-dim end-effector action).

    Attributes:
        task: any MT1 task name, e.g. ``"assembly-v3"`` (checked against Meta-World's list).
        max_steps: episode limit (Meta-World's own is 500).
        cameras: cameras rendered by ``observe()``; ``()`` = state only.
        image_size: ``(height, width)`` of rendered images.
        out_of_limits: ``"clamp"`` or ``"raise"`` for actions outside ``[-1, 1]``.

    ``reset(seed)`` uses the ``seed % 50``-th of the 50 tasks that ``metaworld.MT1(task,
    seed=seed // 50)`` samples, so seeds 0-49 are one MT1 seed's tasks, 50-99 the next one's.
    """

    backend: ClassVar[str] = "metaworld"

    task: str = "assembly-v3"
    max_steps: int = 500
    cameras: tuple[str, ...] = ()
    image_size: tuple[int, int] = (224, 224)
    out_of_limits: str = "clamp"

    def __post_init__(self) -> None:
        if not self.task:
            raise ValueError("task must be a Meta-World MT1 task name, got ''")
        try:
            names = metaworld_task_names()
        except ImportError:  # checked again at connect
            names = ()
        if names:
            _check_choice("task", self.task, names)
        if not isinstance(self.max_steps, int) or not 0 < self.max_steps <= 500:
            raise ValueError(f"max_steps must be an int in 1..500, got {self.max_steps!r}")
        object.__setattr__(self, "cameras", tuple(self.cameras))
        object.__setattr__(self, "image_size", tuple(self.image_size))
        _check_cameras(self.cameras, METAWORLD_CAMERAS)
        _check_image_size(self.image_size)
        _check_choice("out_of_limits", self.out_of_limits, OUT_OF_LIMITS_MODES)


BackendConfig = SimAlohaConfig | ArxConfig | MetaWorldConfig
CONFIG_CLASSES: dict[str, type[SimAlohaConfig] | type[ArxConfig] | type[MetaWorldConfig]] = {
    cls.backend: cls for cls in (SimAlohaConfig, ArxConfig, MetaWorldConfig)
}


# Safety values of the driver node whose defaults are the simulation's ---------------------
#: Driver parameter -> its default, which is tuned for the simulated scene (ViperX arms in the
#: scene's world frame, wrist flips at ~26 rad/s). On ``backend: arx`` the driver refuses to
#: start while any of these still has this value (see :func:`arx_safety_problems`).
SIM_SAFETY_DEFAULTS: dict[str, Any] = {
    "safety.max_joint_velocity": 30.0,
    "safety.max_joint_velocities": [],
    "safety.max_gripper_velocity": 10.0,
    "safety.velocity_mode": "clamp",
    "safety.left_box_low": [-0.45, 0.15, -0.03],
    "safety.left_box_high": [0.25, 0.85, 0.6],
    "safety.right_box_low": [-0.25, 0.15, -0.03],
    "safety.right_box_high": [0.45, 0.85, 0.6],
    "estop_latch_file": "",
}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        try:
            return [float(x) for x in a] == [float(x) for x in b]
        except (TypeError, ValueError):
            return False
    return bool(a == b)


def arx_safety_problems(values: Mapping[str, Any]) -> list[str]:
    """Why the real arms must not run with these driver parameters (``[]`` when they may).

    ``values`` maps every key of :data:`SIM_SAFETY_DEFAULTS` (plus
    ``safety.workspace_enabled``) to its value. A key still at the simulation's default is a
    problem (``safety.max_joint_velocity`` only when no per-joint
    ``safety.max_joint_velocities`` are given); so is a disabled workspace check.
    """
    problems = []
    per_joint = list(values.get("safety.max_joint_velocities") or [])
    for key, default in SIM_SAFETY_DEFAULTS.items():
        if key == "safety.max_joint_velocities" or (
            key == "safety.max_joint_velocity" and per_joint
        ):
            continue  # per-joint limits replace the uniform one; either is enough
        if key not in values or _same(values[key], default):
            hint = " (or set safety.max_joint_velocities)" if "joint_velocity" in key else ""
            problems.append(f"{key} is still the simulation's default {default!r}{hint}")
    if not values.get("safety.workspace_enabled", False):
        problems.append("safety.workspace_enabled is false (the arms need their boxes)")
    return problems

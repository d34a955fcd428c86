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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from arx_x5_driver.core.robot import OUT_OF_LIMITS_MODES

ALOHA_TASKS = ("transfer_cube", "insertion")
ALOHA_CAMERAS = ("top", "left_wrist", "right_wrist", "angle", "front_close")
ARX_MODELS = ("X5", "L5", "X5_umi", "L5_umi")
ARX_CONTROLLERS = ("joint", "cartesian")
ARX_CAMERA_NAMES = ("top", "left_wrist", "right_wrist")
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
        max_joint_step: largest joint change per command (rad); larger jumps are clamped.
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
    max_joint_step: float = 0.1
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
        if not (math.isfinite(self.max_joint_step) and 0.0 < self.max_joint_step <= 1.0):
            raise ValueError(f"max_joint_step must be in (0, 1] rad, got {self.max_joint_step}")
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

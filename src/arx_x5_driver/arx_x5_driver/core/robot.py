"""The hardware seam: one ``ArmBackend`` interface for the simulated robot, the real ARX X5 pair
and the Meta-World benchmark.

Modelled on lerobot's ``Robot`` ABC (``connect`` / ``get_observation`` / ``send_action`` /
``disconnect``, usable as a context manager), with names that match this project:
``connect`` / ``observe`` / ``command`` / ``disconnect``, plus ``reset`` and ``status`` for the
episodic backends.

Action layout (joint space, what ``command`` takes and what ``Observation.joint_positions``
reports for the bimanual backends): per arm ``[6 joint angles (rad), gripper (0 closed … 1
open)]``, arms in the order of :attr:`RobotSpec.arm_slices`, e.g. ``(("left", 0, 7),
("right", 7, 14))``. Meta-World is a single arm with a 4-dim end-effector action; nothing
downstream may assume 14 dims: read :attr:`ArmBackend.spec`.

Every backend refuses non-finite commands (``ValueError``) and either clamps out-of-limit values
to the limits with a logged warning or raises, per its config (:func:`check_action`). A NaN
never reaches a simulator or an SDK.
"""

from __future__ import annotations

import itertools
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar

import numpy as np
import numpy.typing as npt

LOG = logging.getLogger(__name__)

OUT_OF_LIMITS_MODES = ("clamp", "raise")

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class RobotSpec:
    """Static description of a backend: action layout, limits, cameras, control rate.

    ``action_low`` / ``action_high`` are the command limits, one per action dimension (joint
    limits in rad and the gripper range for joint-space backends; the normalized end-effector
    action range for Meta-World).
    """

    action_names: tuple[str, ...]
    arm_slices: tuple[tuple[str, int, int], ...]
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    joint_names: tuple[str, ...]
    cameras: tuple[str, ...]
    control_hz: float

    def __post_init__(self) -> None:
        n = len(self.action_names)
        if n == 0:
            raise ValueError("action_names must not be empty")
        if len(self.action_low) != n or len(self.action_high) != n:
            raise ValueError(
                f"action limits must have {n} entries, got {len(self.action_low)} low and "
                f"{len(self.action_high)} high"
            )
        for name, lo, hi in zip(self.action_names, self.action_low, self.action_high):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"action {name!r} has invalid limits [{lo}, {hi}]")
        covered = sorted((lo, hi) for _, lo, hi in self.arm_slices)
        if not covered or covered[0][0] != 0 or covered[-1][1] != n:
            raise ValueError(f"arm_slices {self.arm_slices} must cover 0..{n}")
        for (_, hi_a), (lo_b, _) in itertools.pairwise(covered):
            if hi_a != lo_b:
                raise ValueError(f"arm_slices {self.arm_slices} must be contiguous")
        if self.control_hz <= 0:
            raise ValueError(f"control_hz must be > 0, got {self.control_hz}")

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.arm_slices)

    @property
    def low(self) -> FloatArray:
        return np.asarray(self.action_low, dtype=np.float64)

    @property
    def high(self) -> FloatArray:
        return np.asarray(self.action_high, dtype=np.float64)

    @property
    def control_period(self) -> float:
        """Seconds between two control steps."""
        return 1.0 / self.control_hz


@dataclass(frozen=True)
class Observation:
    """One observation of the robot (and, in simulation, of the scene).

    Attributes:
        joint_positions: ``[n]`` measured positions, names in ``RobotSpec.joint_names`` (rad for
            revolute joints; grippers normalized 0 closed … 1 open).
        joint_velocities: ``[n]`` velocities, same layout (rad/s; grippers normalized units/s).
        images: camera name -> ``H×W×3`` uint8 RGB image, only the cameras that were asked.
        env_state: privileged object state (simulation only; ``None`` on the real robot), e.g.
            the cube pose ``[x, y, z, qw, qx, qy, qz]`` for transfer_cube, peg then socket pose
            for insertion, the 39-dim observation for Meta-World.
        timestamp: seconds on the backend's clock (simulation time in sim).
        step: index of the control step this observation precedes (0 right after reset).
        frame_seq: camera name -> the camera's own frame sequence number, for the cameras
            whose backend has one (a frozen camera's number stops advancing).
    """

    joint_positions: FloatArray
    joint_velocities: FloatArray
    images: Mapping[str, npt.NDArray[np.uint8]] = field(default_factory=dict)
    env_state: FloatArray | None = None
    timestamp: float = 0.0
    step: int = 0
    frame_seq: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EpisodeStatus:
    """Where the current episode stands (episodic backends; the real robot reports unknown).

    Attributes:
        step: number of commands executed since reset.
        reward: the task's own reward after the last step (``None`` when unknown).
        success: the task's success criterion holds (``None`` when unknown, e.g. real robot).
        done: the episode is over (success, failure or time limit); ``command`` then refuses.
        failure: why it failed (``"physics_error"``, ``"timeout"``), ``None`` otherwise.
        success_step: index of the step whose command reached success, ``None`` if not reached.
    """

    step: int
    reward: float | None
    success: bool | None
    done: bool
    failure: str | None = None
    success_step: int | None = None


class ArmBackend(ABC):
    """A robot the stack can drive: connect, reset, observe, command, disconnect.

    Use as a context manager::

        with make_backend(SimAlohaConfig(task="transfer_cube")) as robot:
            obs = robot.reset(seed=0)
            while not robot.status().done:
                robot.command(policy(obs))
                obs = robot.observe()
    """

    #: Registry name of the backend ("sim", "arx", "metaworld").
    name: ClassVar[str]

    @property
    @abstractmethod
    def spec(self) -> RobotSpec:
        """Static description: action layout, limits, cameras, rate."""

    @property
    @abstractmethod
    def is_connected(self) -> bool: ...

    @abstractmethod
    def connect(self) -> None:
        """Open the simulator / hardware. Idempotent."""

    @abstractmethod
    def disconnect(self) -> None:
        """Release everything. Idempotent; safe after a failed connect."""

    @abstractmethod
    def reset(self, seed: int | None = None) -> Observation:
        """Start a new episode (sim: object poses from ``seed``; real: move home)."""

    @abstractmethod
    def observe(self) -> Observation:
        """The current observation, with the configured cameras rendered / captured."""

    @abstractmethod
    def command(self, action: npt.ArrayLike) -> None:
        """Execute one control step of ``action`` (``[action_dim]``, see module docstring)."""

    def status(self) -> EpisodeStatus:
        """Episode status; backends without a task criterion report it unknown."""
        return EpisodeStatus(step=0, reward=None, success=None, done=False)

    def observe_state(self) -> Observation:
        """The observation without camera images (the control path's fast read).

        Backends whose images are costly to produce (rendering) override this; the default
        returns :meth:`observe`.
        """
        return self.observe()

    #: ``capture()`` reads state the control path also uses (a simulator renders from its
    #: physics), so the driver serializes it with ``command()``; backends whose cameras are
    #: independent devices set this to ``False``.
    capture_shares_state: ClassVar[bool] = True

    def capture(self) -> Observation:
        """Camera images (and ``frame_seq``) for the driver's capture thread; the default is
        :meth:`observe`."""
        return self.observe()

    def hold_position(self) -> FloatArray:
        """Where the arms are, in the command space (``[action_dim]``): the hold target that
        moves nothing. Joint-space backends: the measured joint positions."""
        return np.asarray(self.observe_state().joint_positions, dtype=np.float64)

    def end_effector_positions(self, action: npt.ArrayLike) -> dict[str, FloatArray]:
        """Forward kinematics for the safety layer's workspace box.

        Returns, per arm name, the end-effector position ``[3]`` (m) that ``action`` (a
        command, ``[action_dim]``) would put that arm at, in the frame the backend's workspace
        box is expressed in. Backends without a kinematic model raise ``NotImplementedError``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no forward kinematics")

    # Convenience views of the spec -------------------------------------------------------
    @property
    def action_dim(self) -> int:
        return self.spec.action_dim

    @property
    def arm_slices(self) -> tuple[tuple[str, int, int], ...]:
        return self.spec.arm_slices

    @property
    def joint_limits(self) -> tuple[FloatArray, FloatArray]:
        """``(low, high)`` command limits, ``[action_dim]`` each."""
        return self.spec.low, self.spec.high

    def __enter__(self) -> ArmBackend:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()

    def _require_connected(self) -> None:
        if not self.is_connected:
            raise RuntimeError(f"{type(self).__name__} is not connected; call connect() first")


class EpisodicBackend(ArmBackend):
    """A backend whose episodes end by themselves (simulators): step, reward, success, time
    limit. Subclasses call :meth:`_reset_status` on connect/reset, :meth:`_check_can_step`
    before stepping and :meth:`_record_step` after."""

    def _reset_status(self, started: bool) -> None:
        self._started = started
        self._step = 0
        self._reward = 0.0
        self._done = False
        self._success = False
        self._failure: str | None = None
        self._success_step: int | None = None

    def _outcome_text(self) -> str:
        return "success" if self._success else (self._failure or "done")

    def _check_can_step(self) -> None:
        if not self._started:
            raise RuntimeError("no episode: call reset() before command()")
        if self._done:
            raise RuntimeError(
                f"episode is over ({self._outcome_text()}) after {self._step} steps; call reset()"
            )

    def _record_step(self, reward: float, success: bool, time_up: bool) -> None:
        """Count one executed command; success ends the episode before the time limit does."""
        self._step += 1
        self._reward = float(reward)
        if success:
            self._success, self._done, self._success_step = True, True, self._step - 1
        elif time_up:
            self._done, self._failure = True, "timeout"

    def _record_failure(self, reason: str) -> None:
        """Count one command that ended the episode as a failure (e.g. physics diverged)."""
        self._step += 1
        self._done, self._failure, self._reward = True, reason, 0.0

    def status(self) -> EpisodeStatus:
        return EpisodeStatus(
            step=self._step,
            reward=self._reward if self._started else None,
            success=self._success,
            done=self._done,
            failure=self._failure,
            success_step=self._success_step,
        )


def check_action(
    action: npt.ArrayLike,
    spec: RobotSpec,
    mode: str = "clamp",
    logger: logging.Logger = LOG,
) -> FloatArray:
    """Validate a command against ``spec``; return it as float64, clamped when allowed.

    Raises ``ValueError`` when the shape is wrong or any entry is NaN/inf (always: a non-finite
    command is never forwarded), and when an entry is outside its limit and ``mode`` is
    ``"raise"``. In ``"clamp"`` mode out-of-limit entries are clamped and logged.
    """
    if mode not in OUT_OF_LIMITS_MODES:
        raise ValueError(f"mode must be one of {OUT_OF_LIMITS_MODES}, got {mode!r}")
    a = np.asarray(action, dtype=np.float64)
    if a.shape != (spec.action_dim,):
        raise ValueError(
            f"action must have shape ({spec.action_dim},) for {spec.arm_names}, got {a.shape}"
        )
    bad = ~np.isfinite(a)
    if bad.any():
        names = [spec.action_names[i] for i in np.flatnonzero(bad)]
        raise ValueError(f"action has non-finite values in {names}: {a[bad].tolist()}")
    low, high = spec.low, spec.high
    out = (a < low) | (a > high)
    if out.any():
        details = ", ".join(
            f"{spec.action_names[i]}={a[i]:.4f} not in [{low[i]:.4f}, {high[i]:.4f}]"
            for i in np.flatnonzero(out)
        )
        if mode == "raise":
            raise ValueError(f"action out of limits: {details}")
        logger.warning("clamping action out of limits: %s", details)
        a = np.clip(a, low, high)
    return a


#: The simulated arms' joints (the ViperX vx300s of the gym-aloha scene), base to tip.
VIPERX_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
#: The ARX X5's joints as its SDK's model names them (arx5-sdk ``models/X5.urdf``).
X5_JOINTS = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")


def bimanual_action_names(
    arms: Sequence[str] = ("left", "right"), joints: Sequence[str] = VIPERX_JOINTS
) -> tuple[str, ...]:
    """``<arm>_<joint>, …, <arm>_gripper`` per arm (the 14-dim joint layout): by default the
    simulated ViperX's joints (``left_waist, …``); the X5 backend passes :data:`X5_JOINTS`."""
    return tuple(f"{arm}_{j}" for arm in arms for j in (*joints, "gripper"))

"""The driver's safety layer: the last check between a command and the arms.

Pure numpy (no rclpy, no simulator): the driver node feeds it commands, ticks and e-stop
requests with a clock, and sends the returned target to the backend. Every control tick the
arm gets exactly one target from :meth:`SafetyLayer.command` (a command arrived) or
:meth:`SafetyLayer.tick` (none did); nothing else reaches the hardware.

A command is **rejected** and the arm **holds** (keeps its last accepted target) when:

- the e-stop is latched (:meth:`SafetyLayer.estop`; cleared only by :meth:`reset_estop`);
- it has the wrong shape or any entry is NaN/inf;
- any entry is outside its position limit ``[low, high]`` (joints in rad, grippers 0…1);
- any arm's end effector, by forward kinematics of the command, leaves that arm's workspace
  box (m, in the backend's frame);
- a joint moves faster than its velocity limit and ``velocity_mode == "reject"``.

With ``velocity_mode == "clamp"`` (default) a too-fast step is instead shortened to the limit,
``q ← q_prev + clip(q_cmd − q_prev, −v·Δt, v·Δt)``, so a hand-back or a resumed stream never
jumps; the clamped target is then checked against the limits and the box like any other.

**Hold on silence:** when no command (accepted or rejected) arrived for ``hold_after_ticks``
control periods, :meth:`tick` returns the hold target (the arm stays where it was last sent);
the driver calls it every tick, so a silent command stream holds within that many ticks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
ForwardKinematics = Callable[[FloatArray], Mapping[str, FloatArray]]

VELOCITY_MODES = ("clamp", "reject")

REASON_ESTOP = "estop"
REASON_NO_COMMAND = "no_command"
REASON_NON_FINITE = "non_finite"
REASON_BAD_SHAPE = "bad_shape"
REASON_JOINT_LIMIT = "joint_limit"
REASON_WORKSPACE = "workspace"
REASON_VELOCITY = "velocity_limit"
REASON_FK_FAILED = "fk_failed"


@dataclass(frozen=True)
class WorkspaceBox:
    """Axis-aligned box (m) one arm's end effector must stay in."""

    low: tuple[float, float, float]
    high: tuple[float, float, float]

    def __post_init__(self) -> None:
        low = tuple(float(v) for v in self.low)
        high = tuple(float(v) for v in self.high)
        if len(low) != 3 or len(high) != 3:
            raise ValueError(f"workspace box needs 3 values each, got low={low} high={high}")
        if not all(math.isfinite(v) for v in low + high):
            raise ValueError(f"workspace box must be finite, got low={low} high={high}")
        if not all(lo < hi for lo, hi in zip(low, high)):
            raise ValueError(f"workspace box low {low} must be below high {high}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def contains(self, point: npt.ArrayLike) -> bool:
        p = np.asarray(point, dtype=np.float64)
        return bool(
            p.shape == (3,)
            and np.all(np.isfinite(p))
            and np.all(p >= self.low)
            and np.all(p <= self.high)
        )


@dataclass(frozen=True)
class SafetyConfig:
    """Limits of the safety layer.

    Attributes:
        action_names: one name per action dimension (for messages).
        arm_slices: ``(arm, start, stop)`` per arm.
        low / high: position limits per dimension (rad; grippers 0…1).
        max_velocity: velocity limit per dimension (rad/s; grippers 1/s).
        control_period_s: seconds between control ticks (the velocity limit's Δt).
        hold_after_ticks: silent ticks after which :meth:`SafetyLayer.tick` holds (2).
        velocity_mode: ``"clamp"`` (shorten the step) or ``"reject"`` (hold).
        workspace: arm name -> box; arms without a box are not checked.
    """

    action_names: tuple[str, ...]
    arm_slices: tuple[tuple[str, int, int], ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    max_velocity: tuple[float, ...]
    control_period_s: float
    hold_after_ticks: int = 2
    velocity_mode: str = "clamp"
    workspace: Mapping[str, WorkspaceBox] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.action_names)
        if n == 0:
            raise ValueError("action_names must not be empty")
        for name in ("low", "high", "max_velocity"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries, expected {n}")
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be finite, got {values}")
            object.__setattr__(self, name, values)
        for nm, lo, hi in zip(self.action_names, self.low, self.high):
            if not lo < hi:
                raise ValueError(f"{nm}: position limits [{lo}, {hi}] are empty")
        if any(v <= 0 for v in self.max_velocity):
            raise ValueError(f"max_velocity must be > 0 everywhere, got {self.max_velocity}")
        if not (math.isfinite(self.control_period_s) and self.control_period_s > 0):
            raise ValueError(f"control_period_s must be > 0, got {self.control_period_s}")
        if not isinstance(self.hold_after_ticks, int) or self.hold_after_ticks < 1:
            raise ValueError(f"hold_after_ticks must be an int >= 1, got {self.hold_after_ticks}")
        if self.velocity_mode not in VELOCITY_MODES:
            raise ValueError(
                f"velocity_mode must be one of {VELOCITY_MODES}, got {self.velocity_mode!r}"
            )
        arms = [a for a, _, _ in self.arm_slices]
        covered = sorted((lo, hi) for _, lo, hi in self.arm_slices)
        if not covered or covered[0][0] != 0 or covered[-1][1] != n:
            raise ValueError(f"arm_slices {self.arm_slices} must cover 0..{n}")
        unknown = sorted(set(self.workspace) - set(arms))
        if unknown:
            raise ValueError(f"workspace boxes for unknown arms {unknown}; arms are {arms}")
        object.__setattr__(self, "workspace", dict(self.workspace))

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def max_step(self) -> FloatArray:
        """Largest change per tick, ``v · Δt``, per dimension."""
        return np.asarray(self.max_velocity) * self.control_period_s


@dataclass(frozen=True)
class Verdict:
    """What the arm does at one tick.

    Attributes:
        target: the position target sent to the backend (``[action_dim]``, always finite).
        accepted: the command (if any) was executed (possibly velocity-clamped).
        reason: why the arm holds or was clamped (``""`` when a command ran unchanged).
        detail: human-readable detail for logs and diagnostics.
    """

    target: FloatArray
    accepted: bool
    reason: str = ""
    detail: str = ""

    @property
    def hold(self) -> bool:
        return not self.accepted


class SafetyLayer:
    """Checks commands against :class:`SafetyConfig` and keeps the hold target.

    Args:
        config: the limits.
        forward_kinematics: ``command [d] -> {arm: position [3]}``; required when
            ``config.workspace`` names any arm.
    """

    def __init__(
        self, config: SafetyConfig, forward_kinematics: ForwardKinematics | None = None
    ) -> None:
        if config.workspace and forward_kinematics is None:
            raise ValueError(
                f"workspace boxes for {sorted(config.workspace)} need forward kinematics"
            )
        self.config = config
        self._fk = forward_kinematics
        self._low = np.asarray(config.low)
        self._high = np.asarray(config.high)
        self._target: FloatArray | None = None
        self._last_command_s = -math.inf
        self._estop = False
        self.estop_reason = ""
        self.counts = {"accepted": 0, "clamped": 0, "rejected": 0, "held": 0}
        self.last_rejection = ""

    # State --------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._target is not None

    @property
    def target(self) -> FloatArray:
        if self._target is None:
            raise RuntimeError("the safety layer has no hold position yet: call start()")
        return self._target.copy()

    @property
    def estop_latched(self) -> bool:
        return self._estop

    def start(self, measured: npt.ArrayLike, now_s: float) -> FloatArray:
        """Seed the hold target with the measured position, exactly as measured.

        ``measured`` must be in the command space (joint angles in joint mode, the end-effector
        pose by forward kinematics in cartesian mode). It is never clipped: a hold target that
        differs from where the arm is would move the arm on activation. A measurement outside
        the limits is held where it is; commands must then come back inside the limits.

        Raises ``ValueError`` when the measurement is not finite: the layer cannot hold an
        unknown position and the driver must not activate.
        """
        q = np.asarray(measured, dtype=np.float64).reshape(-1)
        if q.shape != (self.config.action_dim,):
            raise ValueError(
                f"measured position has shape {q.shape}, expected ({self.config.action_dim},)"
            )
        if not np.all(np.isfinite(q)):
            raise ValueError(f"measured position is not finite: {q.tolist()}")
        self._target = q.copy()
        self._last_command_s = now_s
        return self.target

    def estop(self, reason: str = "estop") -> None:
        """Latch the e-stop: every command is rejected until :meth:`reset_estop`."""
        if not self._estop:
            self._estop = True
            self.estop_reason = reason or "estop"

    def reset_estop(self) -> bool:
        """Clear the latch; returns whether it was latched."""
        was = self._estop
        self._estop = False
        self.estop_reason = ""
        return was

    # Ticks --------------------------------------------------------------------------------
    def _hold(self, reason: str, detail: str, rejected: bool) -> Verdict:
        if rejected:
            self.counts["rejected"] += 1
            self.last_rejection = f"{reason}: {detail}" if detail else reason
        else:
            self.counts["held"] += 1
        return Verdict(self.target, accepted=False, reason=reason, detail=detail)

    def command(self, action: npt.ArrayLike, now_s: float) -> Verdict:
        """Check ``action`` (the command of this tick); return what the arm executes."""
        cfg = self.config
        target = self.target  # raises before start()
        self._last_command_s = now_s
        if self._estop:
            return self._hold(REASON_ESTOP, self.estop_reason, rejected=True)
        try:
            a = np.asarray(action, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            return self._hold(REASON_BAD_SHAPE, str(exc), rejected=True)
        if a.shape != (cfg.action_dim,):
            return self._hold(
                REASON_BAD_SHAPE, f"{a.shape[0]} values, expected {cfg.action_dim}", True
            )
        bad = ~np.isfinite(a)
        if bad.any():
            names = [cfg.action_names[i] for i in np.flatnonzero(bad)]
            return self._hold(REASON_NON_FINITE, f"non-finite {names}", rejected=True)
        out = (a < self._low) | (a > self._high)
        if out.any():
            detail = ", ".join(
                f"{cfg.action_names[i]}={a[i]:.4f} not in [{self._low[i]:.4f}, {self._high[i]:.4f}]"
                for i in np.flatnonzero(out)
            )
            return self._hold(REASON_JOINT_LIMIT, detail, rejected=True)
        reason, detail = "", ""
        max_step = cfg.max_step
        delta = a - target
        fast = np.abs(delta) > max_step * (1.0 + 1e-9)
        if fast.any():
            detail = ", ".join(
                f"{cfg.action_names[i]} step {delta[i]:+.4f} > {max_step[i]:.4f}"
                for i in np.flatnonzero(fast)
            )
            if cfg.velocity_mode == "reject":
                return self._hold(REASON_VELOCITY, detail, rejected=True)
            a = target + np.clip(delta, -max_step, max_step)
            reason = REASON_VELOCITY
        if cfg.workspace:
            assert self._fk is not None
            try:
                positions = self._fk(a)
            except Exception as exc:  # any FK failure must hold, never move
                return self._hold(REASON_FK_FAILED, f"{type(exc).__name__}: {exc}", True)
            for arm, box in cfg.workspace.items():
                p = positions.get(arm)
                if p is None or not box.contains(p):
                    where = "missing" if p is None else np.round(np.asarray(p), 4).tolist()
                    return self._hold(
                        REASON_WORKSPACE,
                        f"{arm} end effector at {where} outside box {box.low}..{box.high}",
                        rejected=True,
                    )
        self._target = a
        self.counts["accepted"] += 1
        if reason:
            self.counts["clamped"] += 1
        return Verdict(a.copy(), accepted=True, reason=reason, detail=detail)

    def tick(self, now_s: float) -> Verdict | None:
        """The verdict of a tick without a command: ``None`` while the last command is still
        recent (less than ``hold_after_ticks`` periods old), else a hold."""
        cfg = self.config
        if self._target is None:
            return None
        silent_for = now_s - self._last_command_s
        if silent_for < cfg.hold_after_ticks * cfg.control_period_s * (1.0 - 1e-6):
            return None
        if self._estop:
            return self._hold(REASON_ESTOP, self.estop_reason, rejected=False)
        return self._hold(REASON_NO_COMMAND, f"no command for {silent_for:.3f} s", False)


def per_joint_velocity(
    arm_slices: Sequence[tuple[str, int, int]],
    joints: Sequence[float],
    gripper: float,
) -> tuple[float, ...]:
    """Per-dimension velocity limits from one arm's per-joint limits, applied to every arm
    laid out as ``[joints..., gripper]`` (e.g. the X5's ``[5, 5, 5.5, 5.5, 5, 5]`` rad/s)."""
    v = [float(x) for x in joints]
    if not v or any(not (math.isfinite(x) and x > 0) for x in [*v, gripper]):
        raise ValueError(f"velocity limits must be finite and > 0, got {v} and gripper {gripper}")
    out: list[float] = []
    for arm, lo, hi in sorted(arm_slices, key=lambda s: s[1]):
        if hi - lo != len(v) + 1:
            raise ValueError(
                f"{len(v)} joint velocity limits for arm {arm!r} with {hi - lo - 1} joints"
            )
        out.extend([*v, float(gripper)])
    return tuple(out)


def uniform_velocity(
    arm_slices: Sequence[tuple[str, int, int]], joint: float, gripper: float
) -> tuple[float, ...]:
    """Per-dimension velocity limits for arms laid out as ``[joints..., gripper]``."""
    if joint <= 0 or gripper <= 0:
        raise ValueError(f"velocity limits must be > 0, got joint={joint} gripper={gripper}")
    n = max(hi for _, _, hi in arm_slices)
    v = [joint] * n
    for _, _lo, hi in arm_slices:
        v[hi - 1] = gripper
    return tuple(v)


class PersistentLatch:
    """The e-stop latch on disk, so that it survives a restart of the driver.

    The file exists exactly while the e-stop is latched; it holds the reason. Written
    atomically (temporary file, ``fsync``, rename), so a crash leaves either the old or the new
    state, never a torn one. ``path=None`` keeps the latch in memory only.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path in (None, "") else Path(path)  # type: ignore[arg-type]

    def load(self) -> str:
        """The persisted reason (``""`` when not latched). An unreadable file counts as
        latched: an e-stop must never be lost to a read error."""
        if self.path is None or not self.path.exists():
            return ""
        try:
            reason = self.path.read_text().strip()
        except OSError as exc:
            return f"latch file {self.path} unreadable: {exc}"
        return reason or "estop (persisted)"

    def set(self, reason: str) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as f:
            f.write((reason or "estop") + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)

"""Joystick end-effector jog: stick deflections become joint targets for the arms taken over.

Each tick, for every jogged arm, the stick's Cartesian velocity ``v`` (m/s, world frame) moves
the arm's end-effector reference ``p* ← p* + v·Δt``, and the joints follow it by damped least
squares on the position Jacobian ``J`` (finite differences of the forward kinematics ``f``):

    Δq = Jᵀ (J Jᵀ + λ² I)⁻¹ (p* − f(q)),     q ← clip(q + Δq, q_low, q_high)

(``iterations`` times per tick, so the damping does not make the arm lag). The reference never
leads the reachable position by more than one tick of motion (no wind-up at a joint limit).
The gripper opening moves at ``g · gripper_speed`` (clipped to its limits). The jog starts from
the action executed when the takeover began; a released stick holds the arm still. Pure numpy:
the arbiter node passes in the forward kinematics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
PositionFk = Callable[[FloatArray], FloatArray]  # joint angles [k] -> end-effector position [3]


@dataclass(frozen=True)
class JogConfig:
    """Jog settings.

    Attributes:
        arm_slices: ``(start, stop)`` of each arm in the action; the last entry of each arm is
            its gripper, the others its joints.
        low / high: joint limits per action dimension (rad; grippers 0…1).
        linear_speed: end-effector speed at full stick (m/s).
        gripper_speed: gripper opening rate at full stick (1/s).
        control_period_s: Δt between ticks.
        damping: λ of the damped least squares (m).
        deadzone: stick deflections below this magnitude count as 0.
    """

    arm_slices: tuple[tuple[int, int], ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    linear_speed: float = 0.1
    gripper_speed: float = 1.0
    control_period_s: float = 0.02
    damping: float = 0.02
    deadzone: float = 0.05
    iterations: int = 2

    def __post_init__(self) -> None:
        stop = 0
        for lo, hi in self.arm_slices:
            if lo != stop or hi - lo < 2:
                raise ValueError(
                    f"arm_slices must tile the action with >= 2 dims per arm, got {self.arm_slices}"
                )
            stop = hi
        if len(self.low) != stop or len(self.high) != stop:
            raise ValueError(f"low/high need {stop} entries, got {len(self.low)}/{len(self.high)}")
        for name in ("linear_speed", "gripper_speed", "control_period_s", "damping"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not 0.0 <= self.deadzone < 1.0:
            raise ValueError(f"deadzone must be in [0, 1), got {self.deadzone}")
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"iterations must be an int >= 1, got {self.iterations}")


def position_jacobian(fk: PositionFk, q: FloatArray, eps: float = 1e-5) -> FloatArray:
    """``[3, k]`` Jacobian of ``fk`` at ``q`` by central differences."""
    q = np.asarray(q, dtype=np.float64)
    jac = np.zeros((3, q.shape[0]))
    for i in range(q.shape[0]):
        dq = np.zeros_like(q)
        dq[i] = eps
        jac[:, i] = (np.asarray(fk(q + dq)) - np.asarray(fk(q - dq))) / (2.0 * eps)
    return jac


def dls_step(jac: FloatArray, dx: FloatArray, damping: float) -> FloatArray:
    """``Δq = Jᵀ (J Jᵀ + λ² I)⁻¹ dx``."""
    jjt = jac @ jac.T
    return jac.T @ np.linalg.solve(jjt + damping**2 * np.eye(jjt.shape[0]), dx)


class EndEffectorJog:
    """Integrates stick input into a full action (see module docstring).

    Args:
        config: jog settings.
        fk: arm index -> forward kinematics of that arm's joints (not the gripper).
    """

    def __init__(self, config: JogConfig, fk: Mapping[int, PositionFk]) -> None:
        missing = [i for i in range(len(config.arm_slices)) if i not in fk]
        if missing:
            raise ValueError(f"no forward kinematics for arms {missing}")
        self.config = config
        self._fk = dict(fk)
        self._low = np.asarray(config.low, dtype=np.float64)
        self._high = np.asarray(config.high, dtype=np.float64)
        self._action: FloatArray | None = None
        self._ref: dict[int, FloatArray] = {}

    @property
    def active(self) -> bool:
        return self._action is not None

    def reset(self, action: npt.ArrayLike | None) -> None:
        """Start integrating from ``action`` (``None``: stop jogging)."""
        if action is None:
            self._action = None
            self._ref = {}
            return
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != self._low.shape or not np.all(np.isfinite(a)):
            raise ValueError(f"jog start must be a finite [{self._low.shape[0]}] action")
        self._action = np.clip(a, self._low, self._high)
        self._ref = {
            i: np.asarray(self._fk[i](self._action[lo : hi - 1]), dtype=np.float64)
            for i, (lo, hi) in enumerate(self.config.arm_slices)
        }

    def _dead(self, x: float) -> float:
        return 0.0 if abs(x) < self.config.deadzone else float(np.clip(x, -1.0, 1.0))

    def step(
        self, arms: Sequence[bool], stick: Sequence[float], gripper: float = 0.0
    ) -> FloatArray:
        """Advance one tick: move the end effector of each arm in ``arms`` by ``stick``
        (``[3]`` in −1…1 of ``linear_speed``) and its gripper by ``gripper`` (−1…1)."""
        if self._action is None:
            raise RuntimeError("call reset(action) before step()")
        cfg = self.config
        if len(arms) != len(cfg.arm_slices):
            raise ValueError(f"arms has {len(arms)} entries for {len(cfg.arm_slices)} arms")
        v = np.array([self._dead(float(s)) for s in stick], dtype=np.float64)
        if v.shape != (3,):
            raise ValueError(f"stick must have 3 axes, got {len(stick)}")
        g = self._dead(float(gripper))
        dx = v * cfg.linear_speed * cfg.control_period_s
        a = self._action.copy()
        for i, (lo, hi) in enumerate(cfg.arm_slices):
            if not arms[i]:
                continue
            joints = slice(lo, hi - 1)
            fk = self._fk[i]
            ref = self._ref[i] + dx
            q = a[joints]
            for _ in range(cfg.iterations):
                err = ref - np.asarray(fk(q))
                if not np.any(np.abs(err) > 1e-9):
                    break
                q = q + dls_step(position_jacobian(fk, q), err, cfg.damping)
                q = np.clip(q, self._low[joints], self._high[joints])
            a[joints] = q
            reached = np.asarray(fk(q))
            lead = ref - reached
            limit = cfg.linear_speed * cfg.control_period_s
            norm = float(np.linalg.norm(lead))
            self._ref[i] = reached + (lead * (limit / norm) if norm > limit else lead)
            a[hi - 1] = a[hi - 1] + g * cfg.gripper_speed * cfg.control_period_s
        a = np.clip(a, self._low, self._high)
        if np.all(np.isfinite(a)):
            self._action = a
        return self._action.copy()

"""Arm kinematics each backend provides, for joystick jog on every backend.

The jog (:class:`habc_policy.core.jog.EndEffectorJog`) needs, per arm, the end-effector position
as a function of the arm's joint angles, and the joints' limits. Each backend provides them
here, by name (:data:`JOG_KINEMATICS`), without connecting to anything:

- ``sim_aloha``: the simulated ViperX arms' fingertip sites, by MuJoCo on the scene's model
  (world frame);
- ``x5``: the ARX X5 through its SDK's kinematic solver (``arx5_interface.Arx5Solver(urdf_path,
  joint_dof, joint_pos_min, joint_pos_max).forward_kinematics(q) -> [x, y, z, roll, pitch,
  yaw]``), with the limits of the SDK's robot config. Positions are in each arm's own base
  frame, so a stick direction moves each arm along its own base axes.

Simulators and SDKs are imported inside the functions: importing this module pulls in neither.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from arx_x5_driver.core.config import did_you_mean

PositionFk = Callable[[np.ndarray], np.ndarray]  # one arm's joint angles [k] -> position [3]
ARMS = ("left", "right")


@dataclass(frozen=True)
class ArmKinematics:
    """Forward kinematics and joint limits of the arms of one action layout.

    Attributes:
        fk: arm index -> position FK of that arm's joints (the action's arm order).
        joint_low / joint_high: per arm, the joints' limits (rad), gripper excluded; None when
            the backend gives none (the jog then uses its configured limits).
    """

    fk: dict[int, PositionFk]
    joint_low: tuple[tuple[float, ...], ...] | None = None
    joint_high: tuple[tuple[float, ...], ...] | None = None

    def action_limits(
        self,
        low: tuple[float, ...],
        high: tuple[float, ...],
        arm_slices: tuple[tuple[int, int], ...],
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``low`` / ``high`` over the whole action with the joints' entries replaced by the
        backend's limits (grippers keep theirs)."""
        if self.joint_low is None or self.joint_high is None:
            return low, high
        lo, hi = list(low), list(high)
        for (start, stop), arm_lo, arm_hi in zip(arm_slices, self.joint_low, self.joint_high):
            if len(arm_lo) != stop - start - 1:
                raise ValueError(
                    f"the backend's {len(arm_lo)} joint limits do not fit an arm of "
                    f"{stop - start - 1} joints + gripper"
                )
            lo[start : stop - 1], hi[start : stop - 1] = arm_lo, arm_hi
        return tuple(lo), tuple(hi)


def sim_aloha_kinematics(task: str = "transfer_cube") -> ArmKinematics:
    """Fingertip-site forward kinematics of both simulated arms (MuJoCo, world frame)."""
    import mujoco

    from arx_x5_driver.core.ik import ArmIk
    from arx_x5_driver.core.robot import VIPERX_JOINTS
    from arx_x5_driver.core.sim_aloha import task_xml_path

    model = mujoco.MjModel.from_xml_path(task_xml_path(task))
    fks: dict[int, PositionFk] = {}
    for i, arm in enumerate(ARMS):
        ik = ArmIk(model, [f"vx300s_{arm}/{j}" for j in VIPERX_JOINTS], f"cali_{arm}_site1")
        fks[i] = lambda q, ik=ik: ik.forward(q)[0]
    return ArmKinematics(fks)


def x5_kinematics(robot_model: str = "X5") -> ArmKinematics:
    """Both X5 arms through the SDK's solver (each arm's base frame) and its joint limits."""
    try:
        import arx5_interface as sdk
    except ImportError as exc:
        raise RuntimeError(
            "jog on the X5 needs its SDK's Python bindings (arx5_interface, from "
            f"real-stanford/arx5-sdk) on this machine: {exc}"
        ) from exc
    rc = sdk.RobotConfigFactory.get_instance().get_config(robot_model)
    low = tuple(float(v) for v in np.asarray(rc.joint_pos_min))
    high = tuple(float(v) for v in np.asarray(rc.joint_pos_max))
    fks: dict[int, PositionFk] = {}
    for i in range(len(ARMS)):
        solver = sdk.Arx5Solver(
            str(rc.urdf_path), int(rc.joint_dof), rc.joint_pos_min, rc.joint_pos_max
        )
        fks[i] = lambda q, s=solver: np.asarray(s.forward_kinematics(np.asarray(q)), np.float64)[:3]
    return ArmKinematics(fks, (low,) * len(ARMS), (high,) * len(ARMS))


JOG_KINEMATICS: dict[str, Callable[..., ArmKinematics]] = {
    "sim_aloha": sim_aloha_kinematics,
    "x5": x5_kinematics,
}


def jog_kinematics(name: str, **options: Any) -> ArmKinematics:
    """The kinematics named ``name`` (:data:`JOG_KINEMATICS`) built with ``options``."""
    if name not in JOG_KINEMATICS:
        raise ValueError(
            f"unknown jog kinematics {name!r}; one of {sorted(JOG_KINEMATICS)}"
            + did_you_mean(name, tuple(JOG_KINEMATICS))
        )
    return JOG_KINEMATICS[name](**options)

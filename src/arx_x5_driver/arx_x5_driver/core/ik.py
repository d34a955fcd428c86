"""Damped-least-squares inverse kinematics of one arm, numpy over a scratch ``mujoco.MjData``.

The solver never touches the simulation's own ``MjData``: it owns a scratch copy of the model
state, writes candidate joint angles into it, and reads the site pose and Jacobian back. One
iteration solves the damped normal equations (Wampler 1986; Buss 2004, eq. 11)

    Δq = Jᵀ (J Jᵀ + λ² I)⁻¹ e,     J = [J_p; w J_r],   e = [p* − p; w · log(R* Rᵀ)]

with the position Jacobian ``J_p``, the rotational Jacobian ``J_r`` of the site, the orientation
error as a rotation vector, the orientation weight ``w`` and the damping ``λ``; the result is
clipped to the joint limits (intersected with optional caps, e.g. ±1.2 rad on forearm-roll and
wrist-rotate to keep away from the two-mode ±π solution of the ViperX wrist).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def quat_to_mat(quat: npt.ArrayLike) -> FloatArray:
    """Rotation matrix of a unit quaternion ``[w, x, y, z]``."""
    w, x, y, z = np.asarray(quat, dtype=np.float64) / np.linalg.norm(quat)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotation_log(rot: FloatArray) -> FloatArray:
    """Rotation vector (axis × angle, rad) of rotation matrix ``rot``."""
    cos = np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos))
    vee = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    if angle < 1e-6:
        return 0.5 * vee
    if np.pi - angle < 1e-4:
        # Near π: the axis is the eigenvector of the symmetric part.
        sym = (rot + np.eye(3)) / 2.0
        axis = sym[:, int(np.argmax(np.diag(sym)))]
        axis = axis / np.linalg.norm(axis)
        return angle * axis
    return angle / (2.0 * np.sin(angle)) * vee


def rotation_exp(vec: npt.ArrayLike) -> FloatArray:
    """Rotation matrix of rotation vector ``vec`` (Rodrigues)."""
    v = np.asarray(vec, dtype=np.float64)
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.eye(3)
    k = v / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


@dataclass(frozen=True)
class IkResult:
    """Joint solution and the remaining errors (m, rad)."""

    q: FloatArray
    position_error: float
    rotation_error: float


class ArmIk:
    """DLS IK of one serial arm to one site of a MuJoCo model.

    Args:
        model: the ``mujoco.MjModel`` (the solver keeps its own ``MjData``).
        joint_names: the arm's hinge joints, base to tip.
        site: the end-effector site whose pose is controlled.
        caps: optional ``{joint_name: (low, high)}`` intersected with the model's joint ranges.
        iterations / damping / rotation_weight: solver settings (λ, w above).
    """

    def __init__(
        self,
        model: Any,
        joint_names: Sequence[str],
        site: str,
        caps: Mapping[str, tuple[float, float]] | None = None,
        iterations: int = 15,
        damping: float = 0.05,
        rotation_weight: float = 0.5,
    ) -> None:
        import mujoco

        self._mj = mujoco
        self.model = model
        self.data = mujoco.MjData(model)
        ids = []
        for name in joint_names:
            jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
            if jid < 0:
                raise ValueError(f"the model has no joint {name!r}")
            ids.append(jid)
        self.site_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, site)
        if self.site_id < 0:
            raise ValueError(f"the model has no site {site!r}")
        self.joint_names = tuple(joint_names)
        self.qpos_adr = np.array([model.jnt_qposadr[j] for j in ids])
        self.dof_adr = np.array([model.jnt_dofadr[j] for j in ids])
        low = np.array([model.jnt_range[j][0] for j in ids], dtype=np.float64)
        high = np.array([model.jnt_range[j][1] for j in ids], dtype=np.float64)
        for name, (lo, hi) in (caps or {}).items():
            if name not in self.joint_names:
                raise ValueError(f"cap for unknown joint {name!r}; joints: {self.joint_names}")
            i = self.joint_names.index(name)
            low[i], high[i] = max(low[i], lo), min(high[i], hi)
        self.low, self.high = low, high
        if iterations < 1 or damping <= 0 or rotation_weight < 0:
            raise ValueError(
                f"need iterations >= 1, damping > 0, rotation_weight >= 0; got {iterations}, "
                f"{damping}, {rotation_weight}"
            )
        self.iterations = iterations
        self.damping = damping
        self.rotation_weight = rotation_weight
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def _set(self, q: FloatArray) -> None:
        self.data.qpos[self.qpos_adr] = q
        self._mj.mj_kinematics(self.model, self.data)

    def forward(self, q: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Site position ``[3]`` and rotation ``[3, 3]`` (world frame) at joint angles ``q``."""
        self._set(np.asarray(q, dtype=np.float64))
        return (
            self.data.site_xpos[self.site_id].copy(),
            self.data.site_xmat[self.site_id].reshape(3, 3).copy(),
        )

    def body_position(self, body: str) -> FloatArray:
        """World position of ``body`` at the joint angles of the last ``forward``/``solve``."""
        bid = self._mj.mj_name2id(self.model, self._mj.mjtObj.mjOBJ_BODY, body)
        if bid < 0:
            raise ValueError(f"the model has no body {body!r}")
        return self.data.xpos[bid].copy()

    def clip(self, q: npt.ArrayLike) -> FloatArray:
        return np.clip(np.asarray(q, dtype=np.float64), self.low, self.high)

    def solve(
        self,
        q0: npt.ArrayLike,
        target_pos: npt.ArrayLike,
        target_rot: FloatArray | None = None,
    ) -> IkResult:
        """Joint angles near ``q0`` that put the site at ``target_pos`` / ``target_rot``."""
        mj = self._mj
        q = self.clip(q0)
        p_star = np.asarray(target_pos, dtype=np.float64)
        w = self.rotation_weight if target_rot is not None else 0.0
        lam2 = self.damping**2
        ep = np.zeros(3)
        er = np.zeros(3)
        for _ in range(self.iterations):
            self._set(q)
            p = self.data.site_xpos[self.site_id]
            ep = p_star - p
            if target_rot is not None:
                r = self.data.site_xmat[self.site_id].reshape(3, 3)
                er = rotation_log(target_rot @ r.T)
            mj.mj_comPos(self.model, self.data)
            mj.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site_id)
            jp = self._jacp[:, self.dof_adr]
            if w > 0:
                jac = np.vstack([jp, w * self._jacr[:, self.dof_adr]])
                err = np.concatenate([ep, w * er])
            else:
                jac, err = jp, ep
            jjt = jac @ jac.T
            dq = jac.T @ np.linalg.solve(jjt + lam2 * np.eye(jjt.shape[0]), err)
            q = self.clip(q + dq)
        self._set(q)
        p = self.data.site_xpos[self.site_id]
        ep = p_star - p
        if target_rot is not None:
            er = rotation_log(target_rot @ self.data.site_xmat[self.site_id].reshape(3, 3).T)
        return IkResult(
            q=q, position_error=float(np.linalg.norm(ep)), rotation_error=float(np.linalg.norm(er))
        )

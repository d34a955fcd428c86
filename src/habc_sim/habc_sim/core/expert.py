"""Scripted experts: a replanning waypoint planner for the ALOHA tasks, and Meta-World's own
expert policies behind the same interface.

ALOHA expert (:class:`AlohaExpert`)
-----------------------------------
Each arm follows end-effector waypoints (pose of the ``cali_*_site1`` site at the fingertips,
plus a gripper opening); every control step the reference pose moves toward the current
waypoint at bounded linear and angular speed and is converted to joint targets by
damped-least-squares IK (:mod:`arx_x5_driver.core.ik`). The waypoints are not a fixed
time-indexed script: they are recomputed every step from the **measured** object poses
(``Observation.env_state``) and the measured arm configuration, and the phase is a small state
machine whose entry point :meth:`AlohaExpert.replan` is chosen from the current scene. So the
expert can start from reset, or take over mid-episode from wherever a policy left the arms and
objects (cube already lifted, dropped, peg half inserted, ...).

- Grasps come from above (pitch 90°), fingers across the object's narrow horizontal axis (the
  face normal closest to the arm's natural finger axis), fingertips 1 cm into the table.
- Objects held by one arm are servoed in object space: the arm's reference moves so that the
  *object* reaches its goal (peg into the socket relative to the measured socket, cube into the
  left gripper), which absorbs grasp offsets and the arms' gravity sag.
- An integral term per arm removes the steady-state tracking error of the weak wrist servos.

Quality knob: ``noise_std`` (m) draws one Gaussian offset per waypoint kind per episode
(grasp points, meeting points, insertion line), as in ACT-style graded demonstrations.

Meta-World expert (:class:`MetaWorldExpert`)
--------------------------------------------
``metaworld.policies.ENV_POLICY_MAP[task]`` maps the 39-dim observation to a 4-dim action; it is
stateless, so it "replans" by construction. ``noise_std`` adds Gaussian action noise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from arx_x5_driver.core.ik import ArmIk, rotation_exp, rotation_log
from arx_x5_driver.core.ik import quat_to_mat as _quat_to_mat
from arx_x5_driver.core.robot import VIPERX_JOINTS, FloatArray, Observation

LOG = logging.getLogger(__name__)

ARM_JOINTS = VIPERX_JOINTS  # the simulated arm's joints
ARM_BASES = {"left": np.array([-0.469, 0.5, 0.0]), "right": np.array([0.469, 0.5, 0.0])}
SITES = {"left": "cali_left_site1", "right": "cali_right_site1"}
ACTION_SLICES = {"left": slice(0, 7), "right": slice(7, 14)}
Z = np.array([0.0, 0.0, 1.0])
GRIP_OPEN = 1.0
GRIP_CLOSED = 0.0
#: A gripper opening below this is closed on something (or closing). Measured in insertion
#: rollouts: closed on the socket (4.4 cm wide) 0.60-0.82 depending on the grasp, on the peg
#: 0.14-0.37, open 0.95-0.98, fingers held open by the table 0.89. The earlier 0.8 read a
#: socket held at 0.82 as "not held": the expert re-approached with the gripper open and
#: dropped it, in a loop, until the episode timed out.
GRIP_HOLDING = 0.85


@dataclass(frozen=True)
class ExpertConfig:
    """Settings of the ALOHA expert.

    Attributes:
        noise_std: per-episode Gaussian offset σ (m) of each waypoint kind; 0 = best quality.
        max_speed: reference speed in free space (m/s).
        fine_speed: reference speed near objects (descend, insert) (m/s).
        max_angular_speed: reference rotation speed (rad/s).
        ik_iterations / ik_damping / ik_rotation_weight: DLS IK settings.
        wrist_cap: |forearm_roll|, |wrist_rotate| cap (rad) against the ±π two-mode solution.
        waist_cap: |waist| cap (rad). Demonstrations keep the waist within ±0.5 rad; without a
            cap, a replan toward an object out of reach spun the waist to ±π (reaching behind
            the robot), and those steps were imitated as intervention data.
        integral_gain: per-step gain of the tracking-error integrator (0 disables).
        control_hz: control rate (steps per second).
    """

    noise_std: float = 0.0
    max_speed: float = 0.5
    fine_speed: float = 0.25
    max_angular_speed: float = 2.5
    ik_iterations: int = 15
    ik_damping: float = 0.05
    ik_rotation_weight: float = 0.5
    wrist_cap: float = 1.2
    waist_cap: float = 1.0
    integral_gain: float = 0.05
    control_hz: float = 50.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise_std <= 0.2:
            raise ValueError(f"noise_std must be in [0, 0.2] m, got {self.noise_std}")
        for name in ("max_speed", "fine_speed", "max_angular_speed", "control_hz"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.integral_gain < 1.0:
            raise ValueError(f"integral_gain must be in [0, 1), got {self.integral_gain}")
        for name in ("wrist_cap", "waist_cap"):
            if not 0.1 <= getattr(self, name) <= np.pi:
                raise ValueError(f"{name} must be in [0.1, π] rad, got {getattr(self, name)}")


# Geometry helpers -----------------------------------------------------------------------------
def _unit(v: FloatArray) -> FloatArray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else v


def _frame(x_axis: FloatArray, y_axis: FloatArray) -> FloatArray:
    """Rotation with columns ``x``, ``y`` (orthogonalized), ``x × y``."""
    x = _unit(x_axis)
    y = _unit(y_axis - np.dot(y_axis, x) * x)
    return np.column_stack([x, y, np.cross(x, y)])


def natural_finger_axis(arm: str, point: FloatArray) -> FloatArray:
    """Finger axis of a top-down grasp at ``point`` with no wrist rotation: ``z × h``."""
    h = point - ARM_BASES[arm]
    h[2] = 0.0
    return _unit(np.cross(Z, _unit(h)))


def top_grasp_rotation(
    arm: str, point: FloatArray, obj_rot: FloatArray, axes: tuple[int, ...] = (0, 1, 2)
) -> FloatArray:
    """Pointing-down gripper rotation whose finger axis is the object's most suitable
    horizontal face normal among ``axes`` (closest to the arm's natural finger axis)."""
    natural = natural_finger_axis(arm, point)
    best, best_dot = natural, -np.inf
    for i in axes:
        axis = obj_rot[:, i].copy()
        if abs(axis[2]) > 0.7:  # pointing up/down: not a side face
            continue
        axis[2] = 0.0
        axis = _unit(axis)
        for cand in (axis, -axis):
            d = float(np.dot(cand, natural))
            if d > best_dot:
                best, best_dot = cand, d
    return _frame(-Z, best)


def _move_toward(
    pos: FloatArray, rot: FloatArray, tpos: FloatArray, trot: FloatArray, dp: float, dr: float
) -> tuple[FloatArray, FloatArray, bool]:
    """Step (pos, rot) toward (tpos, trot) by at most ``dp`` m and ``dr`` rad."""
    delta = tpos - pos
    dist = float(np.linalg.norm(delta))
    rvec = rotation_log(trot @ rot.T)
    ang = float(np.linalg.norm(rvec))
    # Translation and rotation arrive together (straight, synchronized motion).
    frac = 1.0 / max(1.0, dist / dp, ang / dr)
    if frac >= 1.0:
        return tpos.copy(), trot.copy(), True
    return pos + frac * delta, rotation_exp(frac * rvec) @ rot, False


@dataclass
class ArmTarget:
    """Where one arm should go now: site position, rotation, gripper, speed, servo mode."""

    pos: FloatArray
    rot: FloatArray
    grip: float
    fine: bool = False
    integrate: bool = True
    integrate_axes: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class _ArmState:
    ref_pos: FloatArray
    ref_rot: FloatArray
    grip: float
    q: FloatArray
    bias: FloatArray = field(default_factory=lambda: np.zeros(3))
    reached: bool = False


@dataclass(frozen=True)
class SceneState:
    """What the planners see: measured arm and object state (world frame)."""

    q: Mapping[str, FloatArray]
    grip: Mapping[str, float]
    site_pos: Mapping[str, FloatArray]
    site_rot: Mapping[str, FloatArray]
    objects: Mapping[str, tuple[FloatArray, FloatArray]]
    ref_pos: Mapping[str, FloatArray] = field(default_factory=dict)


def _at(s: SceneState, arm: str, goal: FloatArray, tol: float = 0.002) -> bool:
    """The arm's reference has arrived at ``goal`` (tracking error not included)."""
    return arm in s.ref_pos and float(np.linalg.norm(s.ref_pos[arm] - goal)) < tol


class _Planner:
    """A task's phase machine. ``targets`` returns one :class:`ArmTarget` per arm."""

    phase: str = "start"

    def __init__(self, offsets: Mapping[str, FloatArray]) -> None:
        self.offsets = offsets
        self.phase_steps = 0
        self._grip_hist: dict[str, list[float]] = {}

    def set_phase(self, phase: str) -> None:
        if phase != self.phase:
            LOG.debug("phase %s -> %s", self.phase, phase)
            self.phase = phase
            self.phase_steps = 0
            self._grip_hist.clear()

    def replan(self, s: SceneState) -> None:
        raise NotImplementedError

    def _gripper_settled(self, s: SceneState, arm: str, steps: int, min_steps: int = 12) -> bool:
        """The gripper stopped moving closed (on the object, or fully), or 50 steps passed.

        A closing gripper can pause for a few steps near open (0.89 in a takeover's re-grasp
        of a peg lying on the table): that pause is not "closed", or the arm lifts with the
        fingers still open and misses (the episode then loops through re-grasps)."""
        hist = self._grip_hist.setdefault(arm, [])
        hist.append(s.grip[arm])
        del hist[:-4]
        moving = len(hist) < 4 or max(hist) - min(hist) > 0.01
        closed = s.grip[arm] < GRIP_HOLDING
        return (not moving and closed and steps >= min_steps) or steps > 50

    def targets(self, s: SceneState) -> dict[str, ArmTarget]:
        raise NotImplementedError


# Transfer cube --------------------------------------------------------------------------------
CUBE_HALF = 0.02
GRASP_TIP_HEIGHT = 0.005  # fingertips above the table when grasping (m)
#: Insertion's grasps close 8 mm above the table: at 5 mm, a takeover's re-grasp of a peg the
#: policy left near the robot's centre line pressed the finger links onto the table, and
#: friction held them open (0.89) until the arm lifted without the peg.
INSERTION_TIP_HEIGHT = 0.008
APPROACH_HEIGHT = 0.10  # pre-grasp height above the object centre (m)
CUBE_GRASP_TIP = 0.0  # right fingertips at the cube centre: it holds the upper half
HANDOVER_REACH = 0.005  # left fingertips relative to the cube centre along x (m)
HANDOVER_DROP = -0.012  # left finger axis relative to the cube centre along z: lower half
MEET = np.array([0.0, 0.5, 0.22])
LEFT_WAIT = MEET + np.array([-0.14, 0.0, 0.0])
RIGHT_IDLE = np.array([0.2, 0.5, 0.25])
LEFT_PICK_X = -0.08  # a cube left of this is picked by the left arm
#: Where the plans are made for: the objects' spawn region (x ∈ [−0.2, 0.2], y ∈ [0.4, 0.6])
#: plus a margin. An object outside it (pushed away, or off the table) is unrecoverable.
WORKSPACE_X = (-0.32, 0.32)
WORKSPACE_Y = (0.28, 0.72)
FELL_OFF_Z = -0.02
# Handover: the right holds the cube's upper half from above; the left comes from -x,
# horizontal, and closes across y on the lower half (below the right fingertips).
LEFT_HANDOVER_ROT = _frame(np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]))


def scene_recoverable(s: SceneState) -> tuple[bool, str]:
    """``(ok, why not)``: not ok when an object is off the table or outside
    :data:`WORKSPACE_X` × :data:`WORKSPACE_Y` (a human operator would not reach there either).
    """
    for name, (pos, _) in s.objects.items():
        x, y, z = (float(v) for v in pos)
        if z < FELL_OFF_Z:
            return False, f"{name} is off the table (z = {z:.2f} m)"
        if not (WORKSPACE_X[0] <= x <= WORKSPACE_X[1] and WORKSPACE_Y[0] <= y <= WORKSPACE_Y[1]):
            return False, f"{name} is out of reach at (x, y) = ({x:.2f}, {y:.2f}) m"
    return True, ""


def _lifted(obj_pos: FloatArray, rest_z: float, margin: float = 0.015) -> bool:
    return bool(obj_pos[2] > rest_z + margin)


class _TransferPlanner(_Planner):
    """Right arm picks the cube, lifts it to the meeting point, left arm takes it."""

    _anchor: FloatArray | None = None

    def _held_by(self, s: SceneState, arm: str) -> bool:
        cube, _ = s.objects["cube"]
        near = float(np.linalg.norm(cube - s.site_pos[arm])) < 0.06
        return near and s.grip[arm] < GRIP_HOLDING and _lifted(cube, CUBE_HALF, 0.01)

    picker: str = "right"

    def replan(self, s: SceneState) -> None:
        cube, _ = s.objects["cube"]
        # A cube pushed far to the left side is picked by the left arm directly (its lifting
        # it satisfies the task: left gripper holds the cube off the table).
        self.picker = "left" if cube[0] < LEFT_PICK_X else "right"
        if self._held_by(s, "left"):
            self.set_phase("release")
        elif self._held_by(s, "right"):
            self.set_phase("lift")
        else:
            self.set_phase("approach")

    def _left_idle(self, s: SceneState) -> ArmTarget:
        return ArmTarget(LEFT_WAIT + self.offsets["meet"], LEFT_HANDOVER_ROT, GRIP_OPEN)

    def _idle(self, s: SceneState, arm: str) -> ArmTarget:
        if arm == "left":
            return self._left_idle(s)
        return ArmTarget(RIGHT_IDLE, top_grasp_rotation("right", RIGHT_IDLE, np.eye(3)), GRIP_OPEN)

    def targets(self, s: SceneState) -> dict[str, ArmTarget]:
        self.phase_steps += 1
        cube, cube_rot = s.objects["cube"]
        arm = self.picker
        other = "left" if arm == "right" else "right"
        grasp_rot = top_grasp_rotation(arm, cube, cube_rot)
        grasp = cube + np.array([0.0, 0.0, CUBE_GRASP_TIP]) + self.offsets["grasp"]
        above = cube + np.array([0.0, 0.0, APPROACH_HEIGHT]) + self.offsets["grasp"]
        meet = MEET + self.offsets["meet"]
        right_site = s.site_pos["right"]
        site = s.site_pos[arm]

        if self.phase == "approach":
            if self.phase_steps == 1:
                self.picker = arm = "left" if cube[0] < LEFT_PICK_X else "right"
                other = "left" if arm == "right" else "right"
                grasp_rot = top_grasp_rotation(arm, cube, cube_rot)
                site = s.site_pos[arm]
            # Rise first when low and not above the cube, so the fingers never sweep it.
            horiz = float(np.linalg.norm((site - above)[:2]))
            if site[2] < cube[2] + 0.06 and horiz > 0.03:
                target = site.copy()
                target[2] = above[2]
                tgt = ArmTarget(target, s.site_rot[arm], GRIP_OPEN, integrate=False)
            else:
                tgt = ArmTarget(above, grasp_rot, GRIP_OPEN)
                if _at(s, arm, above) and horiz < 0.015:
                    self.set_phase("descend")
            return {other: self._idle(s, other), arm: tgt}
        if self.phase == "descend":
            tgt = ArmTarget(grasp, grasp_rot, GRIP_OPEN, fine=True)
            horiz = float(np.linalg.norm((site - grasp)[:2]))
            if horiz > 0.04:
                self.set_phase("approach")
            elif (_at(s, arm, grasp) and site[2] < cube[2]) or self.phase_steps > 60:
                self.set_phase("close")
            return {other: self._idle(s, other), arm: tgt}
        if self.phase == "close":
            tgt = ArmTarget(grasp, grasp_rot, GRIP_CLOSED, fine=True)
            if self._gripper_settled(s, arm, self.phase_steps):
                self.set_phase("lift" if arm == "right" else "left_lift")
            return {other: self._idle(s, other), arm: tgt}
        if self.phase == "left_lift":
            up = cube + np.array([0.0, 0.0, 0.1])
            if self.phase_steps == 1:
                self._anchor = up
            assert self._anchor is not None
            tgt = ArmTarget(self._anchor, s.site_rot["left"], GRIP_CLOSED)
            if self.phase_steps > 30 and not self._held_by(s, "left"):
                self.set_phase("approach")
            return {"right": self._idle(s, "right"), "left": tgt}
        if self.phase == "lift":
            right = ArmTarget(meet, s.site_rot["right"], GRIP_CLOSED, integrate=True)
            right.rot = top_grasp_rotation("right", meet, np.eye(3), axes=(0, 1))
            if self.phase_steps > 20 and not self._held_by(s, "right"):
                self.set_phase("approach")  # grasp failed or cube slipped: try again
            elif _at(s, "right", meet) and float(np.linalg.norm(right_site - meet)) < 0.03:
                self.set_phase("handover")
            return {"left": self._left_idle(s), "right": right}
        if self.phase in ("handover", "left_close"):
            right = ArmTarget(
                meet, top_grasp_rotation("right", meet, np.eye(3), axes=(0, 1)), GRIP_CLOSED
            )
            if not self._held_by(s, "right") and not self._held_by(s, "left"):
                self.set_phase("approach")
                return {"left": self._left_idle(s), "right": right}
            if self._anchor is None or self.phase_steps == 1:
                # Freeze how far the left reaches along x: never chase (push) the cube.
                self._anchor = cube.copy()
            self._anchor[1:] = cube[1:]
            reach = (
                self._anchor
                + np.array([HANDOVER_REACH, 0.0, HANDOVER_DROP])
                + self.offsets["handover"]
            )
            pre = self._anchor + np.array([-0.10, 0.0, HANDOVER_DROP]) + self.offsets["handover"]
            left_site = s.site_pos["left"]
            aligned = float(np.linalg.norm((left_site - pre)[1:])) < 0.02
            if self.phase == "handover":
                goal = reach if aligned or left_site[0] > pre[0] + 0.01 else pre
                left = ArmTarget(
                    goal, LEFT_HANDOVER_ROT, GRIP_OPEN, fine=goal is reach, integrate_axes=(0, 1, 1)
                )
                if goal is reach and _at(s, "left", reach, 0.004):
                    self.set_phase("left_close")
            else:
                left = ArmTarget(
                    reach, LEFT_HANDOVER_ROT, GRIP_CLOSED, fine=True, integrate_axes=(0, 1, 1)
                )
                if self.phase_steps > 18:
                    self.set_phase("release")
            return {"left": left, "right": right}
        # release: right opens and backs off upward; left holds.
        if self.phase_steps > 15 and not self._held_by(s, "left"):
            self.set_phase("approach")  # the left did not get it: start over
            return {"left": self._left_idle(s), "right": ArmTarget(above, grasp_rot, GRIP_OPEN)}
        left_site = s.site_pos["left"]
        left = ArmTarget(left_site, LEFT_HANDOVER_ROT, GRIP_CLOSED, integrate=False)
        up = meet + np.array([0.05, 0.0, 0.08])
        grip_rot = top_grasp_rotation("right", meet, np.eye(3), axes=(0, 1))
        if self.phase_steps < 12:
            right = ArmTarget(s.site_pos["right"], grip_rot, GRIP_OPEN, integrate=False)
        else:
            right = ArmTarget(up, grip_rot, GRIP_OPEN)
        return {"left": left, "right": right}


# Insertion ------------------------------------------------------------------------------------
PEG_HALF = np.array([0.06, 0.01, 0.01])
SOCKET_HALF = np.array([0.06, 0.022, 0.022])
SOCKET_MEET = np.array([-0.08, 0.5, 0.2])
#: Share of the peg-to-socket tilt corrected per step (1: all of it, which with the arm's
#: tracking lag made a peg held off centre yaw back and forth by +-0.2 rad until it slipped).
TILT_GAIN = 0.25
PEG_WAIT = np.array([0.12, 0.5, 0.2])
PIN_END = 0.04  # pin half-length along the socket axis
#: The peg's tip enters the socket only when the peg is tilted less than this from the socket
#: axis (rad, 8°): more tilted, it waits :data:`MOUTH_CLEAR` before the mouth while the tilt
#: is corrected. (Pushed in at 13-16°, as a takeover of a policy's grasp leaves it, the tip
#: caught the mouth and the push pivoted the peg in the fingers to 41° until it fell out.)
INSERT_TILT_MAX = 0.14
#: A peg already in backs out to :data:`MOUTH_CLEAR` only past this tilt (rad, 15°): the
#: socket, pushed by the peg, tilts by a few degrees, and backing out at the entry limit then
#: made the peg go in and out until the episode ended.
INSERTED_TILT_MAX = 0.26
MOUTH_CLEAR = 0.015  # the peg tip's distance before the socket mouth while it straightens (m)


class _InsertionPlanner(_Planner):
    """Right arm picks the peg, left arm the socket; both lift; the peg is servoed along the
    socket axis until it touches the pin."""

    def _held_by(self, s: SceneState, arm: str, obj: str, rest_z: float) -> bool:
        pos, _ = s.objects[obj]
        near = float(np.linalg.norm(pos - s.site_pos[arm])) < 0.07
        return near and s.grip[arm] < GRIP_HOLDING and _lifted(pos, rest_z, 0.01)

    def replan(self, s: SceneState) -> None:
        self.right_phase = "approach"
        self.left_phase = "approach"
        self.right_steps = 0
        self.left_steps = 0
        if self._held_by(s, "right", "peg", PEG_HALF[2]):
            self.right_phase = "carry"
        if self._held_by(s, "left", "socket", SOCKET_HALF[2]):
            self.left_phase = "carry"
        self.phase = f"{self.left_phase}/{self.right_phase}"

    def _set(self, arm: str, phase: str) -> None:
        if arm == "left" and phase != self.left_phase:
            self.left_phase, self.left_steps = phase, 0
            self._grip_hist.pop(arm, None)
        if arm == "right" and phase != self.right_phase:
            self.right_phase, self.right_steps = phase, 0
            self._grip_hist.pop(arm, None)
        self.phase = f"{self.left_phase}/{self.right_phase}"

    def _pick(self, s: SceneState, arm: str, obj: str, half: FloatArray) -> ArmTarget:
        """Approach / descend / close on ``obj`` (phases of ``arm``)."""
        phase = self.left_phase if arm == "left" else self.right_phase
        steps = self.left_steps if arm == "left" else self.right_steps
        pos, rot = s.objects[obj]
        off = self.offsets[f"grasp_{arm}"]
        grasp_rot = top_grasp_rotation(arm, pos, rot, axes=(1, 2))
        grasp = pos + np.array([0.0, 0.0, -half[2] + INSERTION_TIP_HEIGHT]) + off
        above = pos + np.array([0.0, 0.0, APPROACH_HEIGHT]) + off
        site = s.site_pos[arm]
        if phase == "approach":
            horiz = float(np.linalg.norm((site - above)[:2]))
            if site[2] < pos[2] + 0.06 and horiz > 0.03:
                target = site.copy()
                target[2] = above[2]
                return ArmTarget(target, s.site_rot[arm], GRIP_OPEN, integrate=False)
            if _at(s, arm, above) and horiz < 0.015:
                self._set(arm, "descend")
            return ArmTarget(above, grasp_rot, GRIP_OPEN)
        if phase == "descend":
            horiz = float(np.linalg.norm((site - grasp)[:2]))
            if horiz > 0.04:
                self._set(arm, "approach")
            elif (_at(s, arm, grasp) and site[2] < pos[2]) or steps > 60:
                self._set(arm, "close")
            return ArmTarget(grasp, grasp_rot, GRIP_OPEN, fine=True)
        # close
        if self._gripper_settled(s, arm, steps):
            self._set(arm, "carry")
        return ArmTarget(grasp, grasp_rot, GRIP_CLOSED, fine=True)

    def targets(self, s: SceneState) -> dict[str, ArmTarget]:
        self.left_steps += 1
        self.right_steps += 1
        self.phase_steps += 1
        peg, peg_rot = s.objects["peg"]
        socket, socket_rot = s.objects["socket"]
        out: dict[str, ArmTarget] = {}

        # Left arm: socket.
        socket_goal = SOCKET_MEET + self.offsets["meet"]
        if self.left_phase in ("approach", "descend", "close"):
            out["left"] = self._pick(s, "left", "socket", SOCKET_HALF)
        else:
            if self.left_steps > 25 and not self._held_by(s, "left", "socket", SOCKET_HALF[2]):
                self._set("left", "approach")
                out["left"] = self._pick(s, "left", "socket", SOCKET_HALF)
            else:
                # Object-space servo: move the site so the socket goes to its goal.
                site_goal = s.site_pos["left"] + (socket_goal - socket)
                rot = top_grasp_rotation("left", socket_goal, np.eye(3), axes=(1,))
                out["left"] = ArmTarget(site_goal, rot, GRIP_CLOSED, integrate=False)

        # Right arm: peg.
        if self.right_phase in ("approach", "descend", "close"):
            out["right"] = self._pick(s, "right", "peg", PEG_HALF)
            return out
        if self.right_steps > 25 and not self._held_by(s, "right", "peg", PEG_HALF[2]):
            self._set("right", "approach")
            out["right"] = self._pick(s, "right", "peg", PEG_HALF)
            return out
        axis = socket_rot[:, 0].copy()
        if axis[0] < 0:
            axis = -axis
        line_off = self.offsets["insert"]
        socket_ready = self.left_phase == "carry" and _lifted(socket, SOCKET_HALF[2], 0.05)
        pre = socket + axis * (SOCKET_HALF[0] + PEG_HALF[0] + 0.04) + line_off
        depth = PIN_END + PEG_HALF[0] - 0.015  # peg centre when its tip is 1.5 cm past the pin end
        insert = socket + axis * depth + line_off
        rel = peg - socket
        along = float(np.dot(rel, axis))
        lateral = float(np.linalg.norm(rel - along * axis - line_off))
        # Keep the peg parallel to the socket: rotate the gripper by the peg-to-socket tilt.
        peg_axis = peg_rot[:, 0] if np.dot(peg_rot[:, 0], axis) >= 0 else -peg_rot[:, 0]
        tilt = np.cross(peg_axis, axis)
        tilt_angle = float(np.arcsin(np.clip(np.linalg.norm(tilt), 0.0, 1.0)))
        if not socket_ready:
            # Wait with the peg lifted on the right side until the socket is up.
            goal = PEG_WAIT + self.offsets["meet"]
            self._set("right", "carry")
            fine = False
        elif self.right_phase == "carry":
            goal = pre
            fine = False
            if float(np.linalg.norm(peg - pre)) < 0.015:
                self._set("right", "insert")
        else:
            goal = insert if lateral < 0.006 else socket + axis * max(along, depth + 0.02)
            tip_in = along < SOCKET_HALF[0] + PEG_HALF[0]
            if tilt_angle > (INSERTED_TILT_MAX if tip_in else INSERT_TILT_MAX):
                # Straighten before the mouth (backing out if the tip is in).
                goal = socket + axis * (SOCKET_HALF[0] + PEG_HALF[0] + MOUTH_CLEAR) + line_off
            fine = True
            if lateral > 0.02 or along > SOCKET_HALF[0] + PEG_HALF[0] + 0.06:
                self._set("right", "carry")
        turn = np.eye(3)
        if tilt_angle > 1e-3:
            turn = rotation_exp(_unit(tilt) * tilt_angle * TILT_GAIN)
        rot = turn @ s.site_rot["right"]
        # The site goal that puts the peg at ``goal`` once the gripper has turned: the turn
        # swings a peg held off its centre about the fingertips. (Without it, a peg grasped
        # 2.5 cm off centre, as a takeover of a policy's grasp leaves it, swung across the
        # socket axis at every correction, never got within the 6 mm the insertion needs,
        # and slipped out of the gripper.)
        site_goal = goal - turn @ (peg - s.site_pos["right"])
        out["right"] = ArmTarget(site_goal, rot, GRIP_CLOSED, fine=fine, integrate=False)
        return out


PLANNERS: dict[str, type[_Planner]] = {
    "transfer_cube": _TransferPlanner,
    "insertion": _InsertionPlanner,
}
OFFSET_KINDS = {
    "transfer_cube": ("grasp", "meet", "handover"),
    "insertion": ("grasp_left", "grasp_right", "meet", "insert"),
}


class AlohaExpert:
    """Replanning waypoint expert for gym-aloha's bimanual tasks (see module docstring).

    Usage::

        expert = AlohaExpert("transfer_cube", ExpertConfig(noise_std=0.01))
        obs = robot.reset(seed=3)
        expert.reset(obs, seed=3)
        while not robot.status().done:
            robot.command(expert.act(obs))
            obs = robot.observe()

    ``replan(obs)`` re-enters the phase machine from the current scene (a takeover).
    """

    def __init__(self, task: str, config: ExpertConfig | None = None) -> None:
        if task not in PLANNERS:
            raise ValueError(f"task must be one of {tuple(PLANNERS)}, got {task!r}")
        import mujoco

        from arx_x5_driver.core.sim_aloha import task_xml_path

        self.task = task
        self.config = config or ExpertConfig()
        self.model = mujoco.MjModel.from_xml_path(task_xml_path(task))
        caps = {
            "waist": (-self.config.waist_cap, self.config.waist_cap),
            "forearm_roll": (-self.config.wrist_cap, self.config.wrist_cap),
            "wrist_rotate": (-self.config.wrist_cap, self.config.wrist_cap),
        }
        self.ik = {
            arm: ArmIk(
                self.model,
                [f"vx300s_{arm}/{j}" for j in ARM_JOINTS],
                SITES[arm],
                caps={f"vx300s_{arm}/{j}": c for j, c in caps.items()},
                iterations=self.config.ik_iterations,
                damping=self.config.ik_damping,
                rotation_weight=self.config.ik_rotation_weight,
            )
            for arm in ("left", "right")
        }
        self._rng = np.random.default_rng()
        self._offsets = {k: np.zeros(3) for k in OFFSET_KINDS[task]}
        self._planner: _Planner = PLANNERS[task](self._offsets)
        self._arms: dict[str, _ArmState] = {}

    @property
    def phase(self) -> str:
        return self._planner.phase

    def reset(self, obs: Observation, seed: int | None = None) -> None:
        """Start an episode: draw this episode's waypoint offsets, then plan from ``obs``."""
        self._rng = np.random.default_rng(seed)
        sigma = self.config.noise_std
        self._offsets = {
            k: (self._rng.normal(0.0, sigma, 3) if sigma > 0 else np.zeros(3))
            for k in OFFSET_KINDS[self.task]
        }
        self._planner = PLANNERS[self.task](self._offsets)
        self.replan(obs)

    def replan(self, obs: Observation) -> None:
        """Re-enter the plan from the measured scene (arms and objects, wherever they are)."""
        s = self.scene(obs)
        self._arms = {
            arm: _ArmState(
                ref_pos=s.site_pos[arm].copy(),
                ref_rot=s.site_rot[arm].copy(),
                grip=float(s.grip[arm]),
                q=s.q[arm].copy(),
            )
            for arm in ("left", "right")
        }
        self._planner.replan(s)

    def scene(self, obs: Observation) -> SceneState:
        """Measured state: joints, grippers, site poses (forward kinematics), object poses."""
        if obs.env_state is None:
            raise ValueError("the ALOHA expert needs Observation.env_state (object poses)")
        jp = np.asarray(obs.joint_positions, dtype=np.float64)
        if jp.shape != (14,):
            raise ValueError(f"expected 14 joint positions, got shape {jp.shape}")
        q = {"left": jp[0:6], "right": jp[7:13]}
        site_pos, site_rot = {}, {}
        for arm in ("left", "right"):
            site_pos[arm], site_rot[arm] = self.ik[arm].forward(q[arm])
        es = np.asarray(obs.env_state, dtype=np.float64)
        if self.task == "transfer_cube":
            objects = {"cube": (es[0:3], _quat_to_mat(es[3:7]))}
        else:
            objects = {
                "peg": (es[0:3], _quat_to_mat(es[3:7])),
                "socket": (es[7:10], _quat_to_mat(es[10:14])),
            }
        return SceneState(
            q=q,
            grip={"left": float(jp[6]), "right": float(jp[13])},
            site_pos=site_pos,
            site_rot=site_rot,
            objects=objects,
        )

    def act(self, obs: Observation) -> FloatArray:
        """Joint-space action ``[14]`` for this step."""
        if not self._arms:
            self.replan(obs)
        s = self.scene(obs)
        s = replace(s, ref_pos={arm: st.ref_pos for arm, st in self._arms.items()})
        targets = self._planner.targets(s)
        cfg = self.config
        dt = 1.0 / cfg.control_hz
        action = np.zeros(14)
        for arm, tgt in targets.items():
            st = self._arms[arm]
            speed = cfg.fine_speed if tgt.fine else cfg.max_speed
            st.ref_pos, st.ref_rot, st.reached = _move_toward(
                st.ref_pos, st.ref_rot, tgt.pos, tgt.rot, speed * dt, cfg.max_angular_speed * dt
            )
            if tgt.integrate and st.reached and cfg.integral_gain > 0:
                err = (tgt.pos - s.site_pos[arm]) * np.asarray(tgt.integrate_axes)
                st.bias = np.clip(st.bias + cfg.integral_gain * err, -0.04, 0.04)
            elif not tgt.integrate:
                st.bias *= 0.9
            sol = self.ik[arm].solve(st.q, st.ref_pos + st.bias, st.ref_rot)
            st.q = sol.q
            grip_step = 1.0 / 10.0  # full stroke in 10 steps
            st.grip = float(np.clip(tgt.grip, st.grip - grip_step, st.grip + grip_step))
            action[ACTION_SLICES[arm]] = np.concatenate([sol.q, [st.grip]])
        return action


#: assembly-v3's nut (Meta-World's ``RoundNut`` body), in the nut's own frame: the observed
#: object position (``env_state[4:7]``) is the handle's end, site ``RoundNut-8``; the ring's
#: centre, which must go over the peg, is 0.13 m from it along the nut's +y (Meta-World's model;
#: ``tests/sim/test_metaworld.py`` checks it against the simulator in turned and flipped poses).
NUT_RING = np.array([0.0, 0.13, 0.0])
#: Where the shipped policy grips the handle: 2 cm in from its end, toward the ring.
NUT_GRASP = 0.02
#: The hand sits this far above the handle once its open fingers straddle it (the shipped
#: policy closes at 0.044-0.050 above it).
NUT_GRASP_HAND_Z = 0.05
#: Meta-World's gripper reading (``env_state[3]``, finger distance / 0.1 m): 1 open; closed on
#: assembly-v3's handle 0.41-0.54; closed on nothing 0.30-0.32. Closed on something: between
#: the two bounds.
METAWORLD_GRIP_EMPTY = 0.33
METAWORLD_GRIP_CLOSED = 0.9
#: The ring's centre above the peg's top while it is carried over (the ring's wall is 1.9 cm
#: thick: 3 cm of clearance).
NUT_CARRY_CLEAR = 0.05
NUT_REST_Z = 0.02  # the ring's centre when the nut lies flat on the table
#: Steps the shipped policy's gripper may read closed on nothing before the nut controller
#: takes over (the fingers close in about 10).
NUT_EMPTY_STEPS = 15
#: A handle lying within 37° of the y axis lies along the fingers' closing axis (they cannot
#: pinch it): the controller first turns the nut, sweeping the handle's end sideways.
NUT_PUSH_Y = 0.8
NUT_PUSH_Z = 0.058  # hand height of that sweep (closed fingertips just above the table)
NUT_PUSH_REACH = 0.82  # the sweep's hand height is reachable this far from the robot's base
#: Largest offset (m) of the ring's centre from the peg's axis at which the ring goes down: the
#: peg's radius is 2 cm, the ring's hole 2.9 cm, and a ring hanging askew has less room.
NUT_ALIGN = 0.004
#: How far from the robot's base (the world's z axis) the hand can still get down to a handle
#: on the table (hand at 0.064 m; measured: at 0.85 m it gets to 0.061-0.063, at 0.89 m only to
#: 0.085-0.092).
HAND_REACH = 0.85
#: Largest tilt (rad) of a nut lying on the table that the controller can place: beyond it the
#: nut stands on its edge, and a ring gripped by the handle stays upright.
NUT_TILT_MAX = np.radians(45.0)


def nut_ring_centre(env_state: FloatArray) -> FloatArray:
    """World position of the nut ring's centre from the observed handle end ``p`` and nut
    orientation ``q`` (``env_state[4:7]``, ``[7:11]``): ``c = p + R(q) · NUT_RING``."""
    return np.asarray(env_state[4:7], dtype=np.float64) + _quat_to_mat(env_state[7:11]) @ NUT_RING


def nut_tilt(env_state: FloatArray) -> float:
    """Angle (rad) between the nut's axis and the vertical (0 flat, pi upside down)."""
    return float(np.arccos(np.clip(_quat_to_mat(env_state[7:11])[2, 2], -1.0, 1.0)))


def nut_on_edge(env_state: FloatArray) -> bool:
    """The ring stands more than :data:`NUT_TILT_MAX` from level (either side up)."""
    return NUT_TILT_MAX < nut_tilt(env_state) < np.pi - NUT_TILT_MAX


def nut_needs_turning(env_state: FloatArray) -> bool:
    """The nut lies flat with its handle within 37° of the y axis, the fingers' closing axis
    (:data:`NUT_PUSH_Y`): the fingers cannot pinch it."""
    along = _quat_to_mat(env_state[7:11]) @ np.array([0.0, 1.0, 0.0])
    flat = float(nut_ring_centre(env_state)[2]) < NUT_REST_Z + 0.01
    return flat and abs(float(along[1])) > NUT_PUSH_Y


def nut_held(env_state: FloatArray) -> bool:
    """The gripper is closed on the nut's handle (its reading between
    :data:`METAWORLD_GRIP_EMPTY` and :data:`METAWORLD_GRIP_CLOSED`, the hand within 6 cm of the
    handle, anywhere along it) and the nut is off the table."""
    hand, site = np.asarray(env_state[0:3]), np.asarray(env_state[4:7])
    along = _quat_to_mat(env_state[7:11]) @ np.array([0.0, 1.0, 0.0])
    t = float(np.clip((hand - site) @ along, 0.0, 0.09))  # the handle: 9 cm from its end
    near = float(np.linalg.norm(hand - (site + t * along))) < 0.06
    closed = METAWORLD_GRIP_EMPTY < float(env_state[3]) < METAWORLD_GRIP_CLOSED
    return near and closed and float(nut_ring_centre(env_state)[2]) > NUT_REST_Z + 0.015


def nut_grasp_point(env_state: FloatArray, shift: float = 0.0) -> FloatArray:
    """Where to grip the handle: :data:`NUT_GRASP` in from its end (plus ``shift``, toward the
    ring), slid up to 4 cm further toward the ring while it lies beyond :data:`HAND_REACH`."""
    site, rot = np.asarray(env_state[4:7], dtype=np.float64), _quat_to_mat(env_state[7:11])
    along = rot @ np.array([0.0, 1.0, 0.0])  # the handle, from its end toward the ring
    point = site + (NUT_GRASP + shift) * along
    for _ in range(8):  # (the ring side is nearer the robot: sliding toward it brings it in)
        if float(np.linalg.norm(point[:2])) <= HAND_REACH or point[:2] @ along[:2] >= 0:
            break
        point = point + 0.005 * along
    return point


class NutAssembly:
    """A pose-aware controller for assembly-v3, for the scenes the shipped policy cannot
    recover.

    The shipped policy assumes the nut lies as spawned (handle along x, ring up): it grips at
    a fixed x offset from the handle's end and places the hand at a fixed offset from the peg.
    From a nut a policy turned or flipped over, it closes its fingers beside the handle and
    presses down there to the end of the episode; with a nut a policy left hanging askew in
    the fingers, it lowers the ring beside the peg and presses there. Measured on the operator
    episodes of an SFT policy at 33 % (100 poses), 12 of its 70 takeovers failed, every one
    of them that way.

    This controller reads the nut's pose every step. It grips the handle where the pose puts
    it (:func:`nut_grasp_point`), checks the grip (fingers closed on nothing: open, rise, and try
    again a little further along the handle), lifts straight up, steers the *ring's* measured
    centre (:func:`nut_ring_centre`) over the peg within :data:`NUT_ALIGN`, and lowers it,
    steering on the way down; a ring that stops above the peg is lifted and aligned again.
    Before gripping, a handle lying along the fingers' closing axis is swept sideways
    (:func:`nut_needs_turning`); a nut held on its edge is set down and gripped again.

    Phases: ``rise`` → ``approach`` (→ ``push_above`` → ``push_down`` → ``push`` → ``rise``)
    → ``descend`` → ``close`` → ``carry`` → ``lower``; ``set_down`` → ``rise``.
    """

    def __init__(self, held: bool = False) -> None:
        """Begin from the current scene; ``held``: the hand already holds the nut lifted."""
        self.phase = "carry" if held else "rise"
        self._count = 0
        self._misses = 0
        self._lowest = np.inf
        self._push = 1.0
        self._push_from = 0.0
        self._pushes = 0

    def _set(self, phase: str) -> None:
        self.phase, self._count = phase, 0

    def _missed(self) -> None:
        self._misses += 1
        self._set("rise")

    def act(self, env: FloatArray) -> FloatArray:
        """The 4-dim action (hand displacement, gripper effort) for the 39-dim observation."""
        hand, grip = np.asarray(env[0:3], dtype=np.float64), float(env[3])
        peg = np.asarray(env[36:39], dtype=np.float64)
        ring = nut_ring_centre(env)
        grasp = nut_grasp_point(env, (0.0, 0.015, -0.01)[self._misses % 3])
        self._count += 1
        g = 0.6  # the shipped policy's grip effort
        if self.phase == "close" and self._count > 10 and grip < METAWORLD_GRIP_EMPTY:
            self._missed()
        if self.phase in ("carry", "lower") and self._count > 5 and grip < METAWORLD_GRIP_EMPTY:
            self._missed()  # dropped
        if self.phase in ("carry", "lower") and self._count > 10 and nut_on_edge(env):
            self._set("set_down")  # held on its edge: the ring cannot go over the peg
        if self.phase == "set_down":  # down to the table where it is, then let go
            target = np.array([hand[0], hand[1], hand[2] - 0.05])
            if ring[2] < NUT_REST_Z + 0.02 or self._count > 40:
                self._set("rise")
        if self.phase == "rise":  # open, straight up clear of the nut
            target, g = np.array([hand[0], hand[1], 0.15]), -1.0
            if hand[2] > 0.13:
                self._set("approach")
        along = _quat_to_mat(env[7:11]) @ np.array([0.0, 1.0, 0.0])
        if self.phase == "approach" and self._pushes < 4 and nut_needs_turning(env):
            self._set("push_above")  # the handle lies along the fingers: turn it first
            self._pushes += 1
            # Sweep the end away from the ring's side, which turns the handle toward x; a
            # handle straight along y is swept toward the middle of the table.
            side = -along[0] if abs(along[0]) > 0.05 else -float(env[4])
            self._push = 1.0 if side > 0.0 else -1.0
        if self.phase == "push_above":  # closed fingers beside the handle's end, high
            side = np.asarray(env[4:7]) + np.array([-self._push * 0.045, 0.0, 0.0])
            target, g = np.array([side[0], side[1], 0.15]), 1.0
            if np.linalg.norm(hand[:2] - side[:2]) < 0.01:
                self._set("push_down")
        if self.phase == "push_down":
            side = np.asarray(env[4:7]) + np.array([-self._push * 0.045, 0.0, 0.0])
            target, g = np.array([side[0], side[1], NUT_PUSH_Z]), 1.0
            if hand[2] < NUT_PUSH_Z + 0.01 or self._count > 25:
                self._set("push")
                self._push_from = float(hand[0])
        if self.phase == "push":  # sweep the handle's end sideways: the nut turns on the table
            target = np.array([self._push_from + self._push * 0.08, hand[1], NUT_PUSH_Z])
            g = 1.0
            turned = abs(along[1]) < NUT_PUSH_Y - 0.1
            if turned or abs(hand[0] - target[0]) < 0.01 or self._count > 25:
                self._set("rise")
        if self.phase == "approach":  # above the grip point, open
            target, g = np.array([grasp[0], grasp[1], 0.15]), -1.0
            if np.linalg.norm(hand[:2] - grasp[:2]) < 0.01:
                self._set("descend")
        if self.phase == "descend":  # the open fingers down around the handle
            target, g = np.array([grasp[0], grasp[1], grasp[2] + 0.03]), -1.0
            if np.linalg.norm(hand[:2] - grasp[:2]) > 0.02:
                self._set("approach")
            elif hand[2] < grasp[2] + NUT_GRASP_HAND_Z or self._count > 30:
                self._set("close")
        if self.phase == "close":  # keep pressing down while the fingers close (as shipped)
            target = np.array([grasp[0], grasp[1], grasp[2] + 0.03])
            if self._count > 10:
                self._set("carry")
        if self.phase == "carry":  # straight up, then the ring over the peg, clear of its top
            err = peg[:2] - ring[:2]
            lift = peg[2] + NUT_CARRY_CLEAR - ring[2]
            target = hand + np.array([err[0], err[1], lift])
            if lift > 0.03:
                target[:2] = hand[:2]
            elif np.linalg.norm(err) < NUT_ALIGN:
                self._set("lower")
                self._lowest = float(ring[2])
        if self.phase == "lower":  # down around the peg, steering the ring
            err = peg[:2] - ring[:2]
            target = hand + np.array([err[0], err[1], max(-0.1, peg[2] - 0.03 - ring[2])])
            if np.linalg.norm(err) > NUT_ALIGN and ring[2] > peg[2] + 0.01:
                target[2] = hand[2]  # align before the ring reaches the peg's top
            if ring[2] < self._lowest - 0.002:
                self._lowest, self._count = float(ring[2]), 0
            elif self._count > 15 and ring[2] > peg[2]:  # stopped on the peg: up, align again
                self._set("carry")
        action = np.clip((target - hand) * 10.0, -1.0, 1.0)  # the shipped policies' gain
        return np.array([action[0], action[1], action[2], g], dtype=np.float64)


class MetaWorldExpert:
    """Meta-World's shipped expert policy for one MT1 task, same role as :class:`AlohaExpert`.

    ``act(obs)`` reads the 39-dim observation from ``obs.env_state``. ``noise_std`` adds
    per-step Gaussian action noise (the only knob Meta-World's experts offer), clipped to
    ``[-1, 1]``.

    **Recovery from mid-episode states.** The shipped policies are written for the start
    state: from where a failing policy left the arm (hand low beside the object) they drag or
    knock the object (assembly-v3: 1 of 20 perturbed scenes recovered). :meth:`replan` (a
    takeover) therefore first retreats: ``retreat_steps`` steps straight up with the gripper
    open, unless the gripper already holds the object lifted; then the shipped policy runs
    (assembly-v3: 18 of 20; ``tests/sim/test_metaworld.py`` checks it on 6 scenes).

    On assembly-v3 (``nut_recovery``), a takeover where the nut is no longer as spawned
    (turned or flipped more than 10°, held anywhere along its handle, or off the table) runs
    :class:`NutAssembly` instead, and so does a takeover whose shipped grip reads "closed on
    nothing" for :data:`NUT_EMPTY_STEPS` (a demonstration, a takeover at step 0, keeps the
    shipped policy). :meth:`scene_recoverable` names the scenes neither can recover: a nut
    beyond the arm's reach, or standing on its edge.
    """

    def __init__(
        self,
        task: str,
        noise_std: float = 0.0,
        retreat_steps: int = 15,
        nut_recovery: bool = True,
    ) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        from arx_x5_driver.core.config import did_you_mean

        if task not in ENV_POLICY_MAP:
            raise ValueError(
                f"no Meta-World expert for task {task!r}" + did_you_mean(task, list(ENV_POLICY_MAP))
            )
        if not 0.0 <= noise_std <= 2.0:
            raise ValueError(f"noise_std must be in [0, 2], got {noise_std}")
        if retreat_steps < 0:
            raise ValueError(f"retreat_steps must be >= 0, got {retreat_steps}")
        self.task = task
        self.noise_std = noise_std
        self.retreat_steps = retreat_steps
        self.nut_recovery = nut_recovery and task == "assembly-v3"
        self._policy: Any = ENV_POLICY_MAP[task]()
        self._rng = np.random.default_rng()
        self._retreat_left = 0
        self._start_obj_z: float | None = None
        self._start_rot: FloatArray | None = None
        self._nut: NutAssembly | None = None
        self._watch_grip = False
        self._empty_steps = 0

    @property
    def phase(self) -> str:
        return "policy" if self._nut is None else f"nut:{self._nut.phase}"

    def reset(self, obs: Observation, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)
        self._retreat_left = 0
        self._nut = None
        self._watch_grip = False
        env = obs.env_state
        self._start_obj_z = None if env is None else float(env[6])
        self._start_rot = None if env is None else _quat_to_mat(env[7:11])

    def _held(self, env: FloatArray) -> bool:
        if self._start_obj_z is None:
            return False
        hand, obj = np.asarray(env[0:3]), np.asarray(env[4:7])
        return float(np.linalg.norm(hand - obj)) < 0.06 and obj[2] > self._start_obj_z + 0.02

    def turned(self, env: FloatArray) -> float:
        """The object's rotation (rad) since the episode's start."""
        if self._start_rot is None:
            return 0.0
        rel = self._start_rot.T @ _quat_to_mat(env[7:11])
        return float(np.arccos(np.clip((np.trace(rel) - 1.0) / 2.0, -1.0, 1.0)))

    def scene_recoverable(self, env: FloatArray) -> tuple[bool, str]:
        """Whether this expert can finish the task from ``env`` (a takeover is declined
        otherwise; only assembly-v3's nut controller has scenes it cannot recover)."""
        if not self.nut_recovery or nut_held(env):
            return True, ""
        if float(np.linalg.norm(nut_grasp_point(env)[:2])) > HAND_REACH + 0.005:
            return False, "the nut lies beyond the arm's reach"
        if nut_needs_turning(env) and float(np.linalg.norm(env[4:6])) > NUT_PUSH_REACH:
            return False, "the nut's handle lies along the fingers, beyond the reach of a push"
        if nut_on_edge(env):
            return False, "the nut stands on its edge"
        return True, ""

    def replan(self, obs: Observation) -> None:
        """A takeover mid-episode: the nut controller on assembly-v3 when the nut was moved
        out of its spawn pose, else the shipped policy after a retreat, unless the object is
        held (class docstring)."""
        env = obs.env_state
        held = env is not None and self._held(np.asarray(env))
        self._retreat_left = 0 if held else self.retreat_steps
        self._nut = None
        # (A demonstration starts at step 0: the shipped policy alone, as recorded.)
        self._watch_grip = self.nut_recovery and obs.step > 0
        self._empty_steps = 0
        if self.nut_recovery and env is not None:
            e = np.asarray(env, dtype=np.float64)
            off_table = float(nut_ring_centre(e)[2]) > NUT_REST_Z + 0.015
            if nut_held(e) or off_table or self.turned(e) > np.radians(10.0):
                self._nut = NutAssembly(held=nut_held(e))

    def act(self, obs: Observation) -> FloatArray:
        if obs.env_state is None:
            raise ValueError("the Meta-World expert needs Observation.env_state (39-dim obs)")
        if self._nut is None and self._watch_grip:
            # The shipped policy closes as it comes down; closed on nothing, it presses down
            # where it is to the end of the episode. Hand over to the nut controller.
            empty = float(obs.env_state[3]) < METAWORLD_GRIP_EMPTY
            self._empty_steps = self._empty_steps + 1 if empty else 0
            if self._empty_steps >= NUT_EMPTY_STEPS:
                self._nut = NutAssembly()
        if self._nut is not None:
            return self._nut.act(np.asarray(obs.env_state, dtype=np.float64))
        if self._retreat_left > 0:
            self._retreat_left -= 1
            return np.array([0.0, 0.0, 1.0, -1.0])  # straight up, gripper open
        a = np.asarray(self._policy.get_action(np.asarray(obs.env_state)), dtype=np.float64)
        if self.noise_std > 0:
            a = a + self._rng.normal(0.0, self.noise_std, a.shape)
        return np.clip(a, -1.0, 1.0)


def make_expert(
    backend: str, task: str, noise_std: float = 0.0, config: ExpertConfig | None = None
) -> AlohaExpert | MetaWorldExpert:
    """The expert for ``backend`` ("sim" or "metaworld") and ``task``."""
    if backend == "sim":
        cfg = config or ExpertConfig(noise_std=noise_std)
        return AlohaExpert(task, cfg)
    if backend == "metaworld":
        return MetaWorldExpert(task, noise_std)
    raise ValueError(f"no scripted expert for backend {backend!r}; choose 'sim' or 'metaworld'")

"""The scripted operator: a stand-in for the human who watches a policy rollout and takes over.

Three pieces, each usable alone:

- :class:`RolloutMonitor` turns observations into failure signals (pure numpy on top of the
  expert's kinematic model): **stall** (the task-progress potential has not improved by
  ``progress_eps`` for ``stall_steps`` steps), **drop** (an object that was lifted is back on the
  table or fell off it), **collision** (the two grippers' palm segments, extrapolated
  ``lookahead_s`` ahead with the measured joint velocities, come closer than
  ``collision_distance``; not where the task brings the grippers together, ``Milestone.arms_meet``:
  transfer-cube from the meeting point on, insertion once the peg tip is at the socket mouth).
- :class:`TakeoverModel` is the decision logic, a pure state machine with no simulator in it,
  an HG-DAgger operator: it draws once per episode whether this "operator" will intervene
  (probability ``intervention_rate``, so about that fraction of the episodes heading for
  failure get a takeover), waits ``reaction_steps`` after the first failure signal (human
  reaction time), takes over (only the arms at fault when one arm has the problem), **corrects
  until the scene is back on track** and releases the deadman: the arbiter then ramps control
  back to the policy (hand-back) and the policy finishes the episode, the post-takeover suffix
  that HABC's credit rule is about. It may take over again later in the same episode (at most
  ``max_takeovers`` times; the last one holds to the end and takes every arm), and it keeps
  control (then of every arm) when fewer than ``min_suffix_steps`` steps are left. Like a
  human, it does not take over a scene it cannot recover (an object off the table or out of
  the arms' reach, as the expert's ``scene_recoverable`` says): the episode then stays a
  plain failure instead of becoming a "demonstration" of flailing. A ROS node drives the same
  object: ``takeover`` maps to the joystick deadman being held, ``mask`` to the arms whose
  teleop command is published (one takeover button per arm), ``action`` to the teleop
  command itself.

"Back on track" is a task-progress milestone (:func:`aloha_milestone`,
:func:`metaworld_milestone`), defined next to the monitor:

============  ======================================================  ========================
task          milestone 1                                             milestone 2
============  ======================================================  ========================
transfer      the picking gripper holds the cube lifted 5 cm clear    2: the right gripper
cube          of the table                                            holds it at the meeting
                                                                      point (the hand-back
                                                                      level); 3: the receiving
                                                                      gripper has closed on it
insertion     both grippers hold their object lifted 3 cm clear       the peg tip is within
                                                                      3 cm of the socket mouth
Meta-World    the gripper, closed on the object, holds it lifted      —
              2 cm clear
============  ======================================================  ========================

A full takeover hands back once the scene reached a milestone higher than the one it was at
when the operator took over (held for ``release_confirm_steps``); a takeover that starts past
the last milestone runs to the end. A one-arm takeover (an arm that has not done its part of
milestone 1 while the other has: the insertion arm whose object is not held; transfer-cube's
picking arm before the lift) hands back once the operator has closed that arm's gripper around
its object (``pick_handback="grasp"``, transfer-cube's: the policy lifts it), or once the arm
has done its part (``"lift"``, insertion's: handed back at the grasp, with the other object
already lifted, an insertion SFT policy sat still or dropped it). Measured on a transfer-cube
SFT policy at 18 % (100 episodes, 600 steps, ``bench/bench_operator.py``): a hand-back at the 5
cm lift left the policy about 60 steps (carry and handover) and a suffix of 50 or more steps in
10 % of takeover episodes (31 % with a 10-tick ramp); a hand-back at the grasp left it the lift
too (64 %, with the 10-tick ramp and 5 takeovers). A hand-back before the gripper closed left
the policy a grasp it failed (12 %).
- :class:`ScriptedOperator` composes the two with an expert that replans from the current scene
  at the moment of the takeover and then finishes the task. In-process it is a direct call::

      operator = ScriptedOperator.for_backend("sim", "transfer_cube")
      operator.reset(obs, seed=7)
      takeover, mask, action = operator.step(obs)
      robot.command(action if takeover else policy_action)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from arx_x5_driver.core.robot import FloatArray, Observation
from habc_sim.core.expert import (
    CUBE_HALF,
    GRIP_HOLDING,
    LEFT_PICK_X,
    MEET,
    METAWORLD_GRIP_CLOSED,
    METAWORLD_GRIP_EMPTY,
    PEG_HALF,
    SOCKET_HALF,
    AlohaExpert,
    ExpertConfig,
    MetaWorldExpert,
    SceneState,
    nut_held,
    nut_ring_centre,
    scene_recoverable,
)

LOG = logging.getLogger(__name__)

SIGNALS = ("stall", "drop", "collision")
PICK_HANDBACKS = ("auto", "grasp", "lift")


@dataclass(frozen=True)
class OperatorConfig:
    """How the scripted operator watches and when it intervenes.

    Attributes:
        intervention_rate: probability that the operator intervenes in an episode once it sees
            it heading for failure (drawn once per episode).
        stall_steps: k, steps without task progress that count as a stall.
        progress_eps: least improvement of the progress potential that counts as progress.
        grace_steps: steps after reset during which no signal is raised.
        reaction_steps: delay between the first failure signal and the takeover.
        drop_lift: height above rest an object must have reached to count as lifted (m).
        collision_distance: palm-to-palm distance that counts as "about to collide" (m).
        lookahead_s: extrapolation horizon of the collision check (s).
        signals: which signals are watched (subset of ``("stall", "drop", "collision")``).
        decline_unrecoverable: do not take over when the expert says the scene is lost.
        control_hz: control rate.
        release: hand control back once the scene is back on track (``False``: hold every
            takeover until the episode ends, the operator of earlier runs).
        release_confirm_steps: consecutive steps the back-on-track condition must hold.
        min_control_steps: least steps of a takeover before it may hand back.
        min_suffix_steps: keep control when fewer steps than this are left in the episode (a
            human does not hand back with a second to go). 150 (3 s), measured against 50 on
            100 poses: transfer-cube (31 % start) takeover success 88 % -> 93 %, suffix >= 50
            in 70 % -> 64 % of takeover episodes; insertion 49 % -> 63 %, 7 % -> 1 %;
            assembly-v3 unchanged. With 50, the last takeover after 3-4 failed hand-backs often
            began too late for the expert.
        max_takeovers: takeovers per episode; the last one holds to the end, with every arm.
        handback_stall_steps: the stall window right after a hand-back, until the policy first
            makes progress (``None``: ``stall_steps``): the operator who just let go watches
            for the next motion (the lift after a corrected grasp) and does not wait as long.
        one_arm: take over only the arm at fault when one arm has the problem.
        handback_level: least milestone at which a full takeover hands back (``None``: the
            task's, :func:`aloha_milestone`).
        lift_clear: the clearance (m) of "lifted clear of the table" in the milestones
            (``None``: the task's, :data:`TRANSFER_CLEAR` / :data:`INSERTION_CLEAR` /
            :data:`METAWORLD_CLEAR`); a smaller one hands a corrected grasp back earlier.
        pick_handback: when a one-arm takeover of a picking arm hands back (:data:`PICK_HANDBACKS`):
            ``"grasp"``, once the operator has closed that arm's gripper around its object
            (:func:`grasps`; a human fixes the grasp and lets the policy lift); ``"lift"``, once
            the arm holds it lifted ``lift_clear``; ``"auto"``, the task's
            (``Milestone.pick_handback``: transfer-cube at the grasp, insertion at the lift).
            ``"grasp"`` applies only to an arm that did not already hold its object when the
            takeover began (a stalled lift is corrected to the lift).
    """

    intervention_rate: float = 0.5
    stall_steps: int = 60
    progress_eps: float = 0.02
    grace_steps: int = 20
    reaction_steps: int = 5
    drop_lift: float = 0.03
    collision_distance: float = 0.03
    lookahead_s: float = 0.2
    signals: tuple[str, ...] = SIGNALS
    decline_unrecoverable: bool = True
    control_hz: float = 50.0
    release: bool = True
    release_confirm_steps: int = 5
    min_control_steps: int = 15
    min_suffix_steps: int = 150
    max_takeovers: int = 5
    handback_stall_steps: int | None = None
    one_arm: bool = True
    handback_level: int | None = None
    lift_clear: float | None = None
    pick_handback: str = "auto"
    script: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.intervention_rate <= 1.0:
            raise ValueError(f"intervention_rate must be in [0, 1], got {self.intervention_rate}")
        for name in (
            "stall_steps",
            "grace_steps",
            "reaction_steps",
            "release_confirm_steps",
            "min_control_steps",
            "min_suffix_steps",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.stall_steps < 1:
            raise ValueError(f"stall_steps must be >= 1, got {self.stall_steps}")
        for name in ("progress_eps", "drop_lift", "collision_distance", "lookahead_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        object.__setattr__(self, "signals", tuple(self.signals))
        for sig in self.signals:
            if sig not in SIGNALS:
                raise ValueError(f"signal must be one of {SIGNALS}, got {sig!r}")
        if self.control_hz <= 0:
            raise ValueError(f"control_hz must be > 0, got {self.control_hz}")
        object.__setattr__(self, "script", tuple((int(a), int(b)) for a, b in self.script))
        for start, steps in self.script:
            if start < 0 or steps == 0 or steps < -1:
                raise ValueError(
                    f"script entries are (step >= 0, steps >= 1 or -1), got {(start, steps)}"
                )
        if self.handback_stall_steps is not None and (
            not isinstance(self.handback_stall_steps, int) or self.handback_stall_steps < 1
        ):
            got = self.handback_stall_steps
            raise ValueError(f"handback_stall_steps must be an int >= 1 or None, got {got!r}")
        if not isinstance(self.max_takeovers, int) or self.max_takeovers < 1:
            raise ValueError(f"max_takeovers must be an int >= 1, got {self.max_takeovers!r}")
        if self.pick_handback not in PICK_HANDBACKS:
            raise ValueError(
                f"pick_handback must be one of {PICK_HANDBACKS}, got {self.pick_handback!r}"
            )


# Task progress and failure signals ------------------------------------------------------------
def _closeness(distance: float, scale: float) -> float:
    """1 at distance 0, falling linearly to 0 at ``scale``."""
    return 1.0 - min(1.0, distance / scale)


def _lift(z: float, rest: float, full: float = 0.15) -> float:
    return float(np.clip((z - rest) / full, 0.0, 1.0))


def aloha_progress(task: str, s: SceneState) -> float:
    """A task-progress potential that grows as the task advances (used for stall detection).

    transfer_cube: right fingertips near the cube, cube lifted, left fingertips near the cube.
    insertion: both grippers near their objects, both lifted, peg tip near the socket mouth.
    """
    if task == "transfer_cube":
        cube, _ = s.objects["cube"]
        lift = _lift(float(cube[2]), CUBE_HALF)
        near_any = max(
            _closeness(float(np.linalg.norm(s.site_pos["right"] - cube)), 0.3),
            _closeness(float(np.linalg.norm(s.site_pos["left"] - cube)), 0.3),
        )
        handover = _closeness(float(np.linalg.norm(s.site_pos["left"] - cube)), 0.2)
        return near_any + 2.0 * lift + 2.0 * lift * handover
    peg, _ = s.objects["peg"]
    socket, socket_rot = s.objects["socket"]
    near = _closeness(float(np.linalg.norm(s.site_pos["right"] - peg)), 0.3) + _closeness(
        float(np.linalg.norm(s.site_pos["left"] - socket)), 0.3
    )
    lifts = _lift(float(peg[2]), PEG_HALF[2]) + _lift(float(socket[2]), SOCKET_HALF[2])
    axis = socket_rot[:, 0] if socket_rot[0, 0] >= 0 else -socket_rot[:, 0]
    goal = socket + axis * 0.1
    align = _closeness(float(np.linalg.norm(peg - goal)), 0.25)
    return near + 2.0 * lifts + 4.0 * min(lifts / 2.0, 1.0) * align


def metaworld_progress(env_state: FloatArray) -> float:
    """Meta-World: hand near the object, object near the goal (39-dim observation)."""
    hand, obj, goal = env_state[0:3], env_state[4:7], env_state[36:39]
    return _closeness(float(np.linalg.norm(hand - obj)), 0.3) + 2.0 * _closeness(
        float(np.linalg.norm(obj - goal)), 0.5
    )


def _holds(s: SceneState, arm: str, obj: str, rest_z: float, clear: float) -> bool:
    """``arm``'s closed gripper is at ``obj`` and ``obj`` is lifted ``clear`` above rest."""
    pos, _ = s.objects[obj]
    near = float(np.linalg.norm(pos - s.site_pos[arm])) < 0.07
    return near and s.grip[arm] < GRIP_HOLDING and float(pos[2]) > rest_z + clear


#: Largest offset (m) of the fingertips from the object's centre line (across its long axis and,
#: for a cube, along it too) that counts as a grasp around it.
GRASP_REACH = 0.015


def grasps(s: SceneState, arm: str, obj: str, half: FloatArray | float) -> bool:
    """``arm``'s gripper has closed around ``obj`` (lifted or not): its fingertip site is within
    :data:`GRASP_REACH` of the object's centre line across the object's long (x) axis, within
    the object's half length along it (:data:`GRASP_REACH` for a cube), below the object's top,
    and the gripper is closed on something (:data:`GRIP_HOLDING`). ``half``: the object's half
    extents."""
    pos, rot = s.objects[obj]
    hx, hz = (float(half), float(half)) if np.ndim(half) == 0 else (float(half[0]), float(half[2]))
    rel = np.asarray(s.site_pos[arm], dtype=np.float64) - pos
    axis = np.array([rot[0, 0], rot[1, 0]], dtype=np.float64)
    norm = float(np.linalg.norm(axis))
    axis = axis / norm if norm > 1e-6 else np.array([1.0, 0.0])
    along = abs(float(rel[:2] @ axis))
    lateral = float(np.linalg.norm(rel[:2] - (rel[:2] @ axis) * axis))
    reach = max(GRASP_REACH, hx - GRASP_REACH)
    return lateral < GRASP_REACH and along < reach and rel[2] < hz and s.grip[arm] < GRIP_HOLDING


#: Clearance above rest that counts as "lifted clear of the table" (m).
TRANSFER_CLEAR = 0.05
INSERTION_CLEAR = 0.03
METAWORLD_CLEAR = 0.02


class Milestone(NamedTuple):
    """How far a scene is along its task: ``level`` (0, 1, 2, …); per arm, whether the arm
    has done its part of milestone 1 (the "back on track" condition of a one-arm takeover with
    ``pick_handback="lift"``, and what decides which arm is at fault); ``handback_level``, the
    least level at which a full takeover hands back; and per arm, whether it grasps its object
    (:func:`grasps`; empty: the task has no grasp stage, and ``arm_done`` decides)."""

    level: int
    arm_done: tuple[bool, ...]
    handback_level: int = 1
    arm_grasped: tuple[bool, ...] = ()
    arms_meet: bool = False  # the task brings the grippers together here (no collision signal)
    pick_handback: str = "grasp"  # the task's hand-back of a one-arm pick (``"auto"``)


def aloha_milestone(task: str, s: SceneState, clear: float | None = None) -> Milestone:
    """Back-on-track milestones of the ALOHA tasks (arms in order left, right).

    transfer_cube: 1 = a gripper holds the cube lifted 5 cm clear of the table; 2 = the right
    gripper holds it at the meeting point (within 4 cm); 3 = the receiving (left) gripper has
    closed on it. A full takeover hands back from 2 on: measured with a 30 % SFT policy, a
    hand-back at 1 left the policy the carry and the handover, which it failed in most
    episodes. Before 1 only the picking arm has a part (the arm nearer the cube; the other
    waits), so it alone can be at fault.
    insertion: 1 = both grippers hold their object (left: socket, right: peg) lifted 3 cm
    clear; 2 = the peg tip is within 3 cm of the socket mouth. Each arm's part of 1 is its own
    grasp-and-lift.
    """
    if task == "transfer_cube":
        cube, _ = s.objects["cube"]
        lift = TRANSFER_CLEAR if clear is None else clear
        held = {arm: _holds(s, arm, "cube", CUBE_HALF, lift) for arm in ("left", "right")}
        lifted = any(held.values())
        level = 0
        if lifted:
            level = 1
            if held["right"] and float(np.linalg.norm(cube - MEET)) < 0.04:
                level = 2
            left_at = float(np.linalg.norm(cube - s.site_pos["left"])) < 0.06
            if held["right"] and left_at and s.grip["left"] < GRIP_HOLDING:
                level = 3
        picker = "left" if float(cube[0]) < LEFT_PICK_X else "right"
        done = {arm: lifted or arm != picker for arm in ("left", "right")}
        grasped = {arm: grasps(s, arm, "cube", CUBE_HALF) for arm in ("left", "right")}
        return Milestone(
            level,
            (done["left"], done["right"]),
            handback_level=2,
            arm_grasped=(grasped["left"], grasped["right"]),
            arms_meet=level >= 2,
        )
    lift = INSERTION_CLEAR if clear is None else clear
    peg_ok = _holds(s, "right", "peg", float(PEG_HALF[2]), lift)
    socket_ok = _holds(s, "left", "socket", float(SOCKET_HALF[2]), lift)
    level = 0
    if peg_ok and socket_ok:
        level = 1
        peg, _ = s.objects["peg"]
        socket, socket_rot = s.objects["socket"]
        axis = socket_rot[:, 0] if socket_rot[0, 0] >= 0 else -socket_rot[:, 0]
        if float(np.linalg.norm(peg - (socket + axis * 0.1))) < 0.03:
            level = 2
    grasped = (grasps(s, "left", "socket", SOCKET_HALF), grasps(s, "right", "peg", PEG_HALF))
    # A one-arm takeover hands back at the lift: handed back at the grasp (one object lifted,
    # the other grasped on the table, a state no demonstration has) an SFT policy at 25 % sat
    # still or dropped it (takeover success 24 % against 49 % at the lift, 100 episodes).
    return Milestone(
        level,
        (socket_ok, peg_ok),
        arm_grasped=grasped,
        arms_meet=level >= 2,
        pick_handback="lift",
    )


def metaworld_milestone(
    env_state: FloatArray, init_obj_z: float, clear: float | None = None, task: str = ""
) -> Milestone:
    """Meta-World (one arm): 1 = the gripper holds the object lifted 2 cm above where it
    started: the hand within 6 cm of the object position Meta-World reports (which sits off
    the grasp point: 4.6–4.9 cm on assembly-v3), and the gripper closed on something (its
    reading between :data:`~habc_sim.core.expert.METAWORLD_GRIP_EMPTY` and
    :data:`~habc_sim.core.expert.METAWORLD_GRIP_CLOSED`: an object that was merely tipping up
    next to an open or empty hand handed a takeover back before the operator had gripped
    anything). Tasks whose object is never lifted (pushing, pressing) never reach it, so their
    takeovers run to the end (the report says so).

    assembly-v3: the nut is held anywhere along its handle (:func:`nut_held`), and its ring
    is lifted. (Its reported position is the handle's end: a policy holding the nut 8 cm in
    from it, the ring on the peg's top and the handle's end down by the table, read as level
    0; the operator lifted it, "reached" level 1 at once, and handed back, three times in an
    episode.)"""
    hand, obj = env_state[0:3], env_state[4:7]
    lift = METAWORLD_CLEAR if clear is None else clear
    if task == "assembly-v3":
        ring_z = float(nut_ring_centre(env_state)[2])
        held = nut_held(env_state) and ring_z > init_obj_z + lift
        return Milestone(1 if held else 0, (held,))
    closed = METAWORLD_GRIP_EMPTY < float(env_state[3]) < METAWORLD_GRIP_CLOSED
    near = float(np.linalg.norm(hand - obj)) < 0.06
    held = near and closed and float(obj[2]) > init_obj_z + lift
    return Milestone(1 if held else 0, (held,))


def segment_distance(p1: FloatArray, q1: FloatArray, p2: FloatArray, q2: FloatArray) -> float:
    """Smallest distance between segments ``p1q1`` and ``p2q2`` (closest-point method)."""
    d1, d2, r = q1 - p1, q2 - p2, p1 - p2
    a, e, f = float(d1 @ d1), float(d2 @ d2), float(d2 @ r)
    if a < 1e-12 and e < 1e-12:
        return float(np.linalg.norm(r))
    if a < 1e-12:
        s, t = 0.0, float(np.clip(f / e, 0.0, 1.0))
    else:
        c = float(d1 @ r)
        if e < 1e-12:
            s, t = float(np.clip(-c / a, 0.0, 1.0)), 0.0
        else:
            b = float(d1 @ d2)
            denom = a * e - b * b
            s = float(np.clip((b * f - c * e) / denom, 0.0, 1.0)) if denom > 1e-12 else 0.0
            t = (b * s + f) / e
            if t < 0.0:
                s, t = float(np.clip(-c / a, 0.0, 1.0)), 0.0
            elif t > 1.0:
                s, t = float(np.clip((b - c) / a, 0.0, 1.0)), 1.0
    return float(np.linalg.norm((p1 + d1 * s) - (p2 + d2 * t)))


class Signals(NamedTuple):
    """Failure signals of one step (each ``True`` when it fires)."""

    stall: bool
    drop: bool
    collision: bool
    progress: float
    recoverable: bool = True
    unrecoverable_why: str = ""
    milestone: Milestone | None = None  # None: no back-on-track condition for this task


class RolloutMonitor:
    """Watches a rollout and raises failure signals (see module docstring)."""

    def __init__(self, config: OperatorConfig, expert: AlohaExpert | MetaWorldExpert) -> None:
        self.config = config
        self.expert = expert
        self.reset()

    def reset(self) -> None:
        self._steps = 0
        self._best = -np.inf
        self._best_step = 0
        self._lifted: dict[str, bool] = {}
        self._init_obj_z: float | None = None
        self._window = self.config.stall_steps

    def restart_watch(self) -> None:
        """Watch afresh after a hand-back: a stall is counted from now (the operator's own
        progress does not count as the policy's), and a drop is an object lifted *after* the
        hand-back coming down again. (An object the operator re-grasped on the table and
        handed back was "lifted" before the takeover: with the old latch the drop signal fired
        on the hand-back's first tick, and the operator took over again 6 ticks later, every
        time: 94 of 156 re-takeovers on an insertion SFT policy, 100 episodes.)"""
        self._best, self._best_step = -np.inf, self._steps
        self._lifted = {}  # an object held lifted now is marked lifted again on the next update
        hb = self.config.handback_stall_steps
        self._window = self.config.stall_steps if hb is None else hb

    def _objects(self, s: SceneState) -> dict[str, tuple[float, float]]:
        """Object -> (z, rest z)."""
        if "cube" in s.objects:
            return {"cube": (float(s.objects["cube"][0][2]), CUBE_HALF)}
        return {
            "peg": (float(s.objects["peg"][0][2]), float(PEG_HALF[2])),
            "socket": (float(s.objects["socket"][0][2]), float(SOCKET_HALF[2])),
        }

    def _collision(self, obs: Observation) -> bool:
        assert isinstance(self.expert, AlohaExpert)
        horizon = self.config.lookahead_s
        q = np.asarray(obs.joint_positions) + horizon * np.asarray(obs.joint_velocities)
        segs = []
        for arm, sl in (("left", slice(0, 6)), ("right", slice(7, 13))):
            ik = self.expert.ik[arm]
            site, rot = ik.forward(q[sl])
            palm = ik.body_position(f"vx300s_{arm}/gripper_link")
            # Palm segment: gripper link to the finger roots (fingers excluded: they may meet
            # in a handover).
            segs.append((palm, site - rot[:, 0] * 0.06))
        return segment_distance(*segs[0], *segs[1]) < self.config.collision_distance

    def update(self, obs: Observation) -> Signals:
        cfg = self.config
        self._steps += 1
        drop = collision = False
        if isinstance(self.expert, AlohaExpert):
            s = self.expert.scene(obs)
            progress = aloha_progress(self.expert.task, s)
            for name, (z, rest) in self._objects(s).items():
                if z > rest + cfg.drop_lift and self._steps > cfg.grace_steps:
                    # (after the grace period: objects are spawned above the table and fall)
                    self._lifted[name] = True
                elif self._lifted.get(name) and z < rest + 0.01:
                    drop = True
                if z < -0.05:  # fell off the table
                    drop = True
            milestone: Milestone | None = aloha_milestone(self.expert.task, s, cfg.lift_clear)
            # Where the task brings the grippers together (the handover at the meeting point,
            # the peg entering the socket) their closeness is the task, not a collision.
            if "collision" in cfg.signals and not milestone.arms_meet:
                collision = self._collision(obs)
        else:
            if obs.env_state is None:
                raise ValueError("the monitor needs Observation.env_state")
            env = np.asarray(obs.env_state)
            progress = metaworld_progress(env)
            if self._init_obj_z is None:
                self._init_obj_z = float(env[6])
            milestone = metaworld_milestone(env, self._init_obj_z, cfg.lift_clear, self.expert.task)
        if progress > self._best + cfg.progress_eps:
            if np.isfinite(self._best):  # progress, not the baseline taken after a hand-back
                self._window = cfg.stall_steps
            self._best, self._best_step = progress, self._steps
        stall = self._steps - self._best_step >= self._window
        if self._steps <= cfg.grace_steps:
            stall = drop = collision = False
        recoverable, why = True, ""
        if cfg.decline_unrecoverable and isinstance(self.expert, AlohaExpert):
            recoverable, why = scene_recoverable(s)
        elif cfg.decline_unrecoverable:
            recoverable, why = self.expert.scene_recoverable(np.asarray(obs.env_state))
        return Signals(
            stall=stall and "stall" in cfg.signals,
            drop=drop and "drop" in cfg.signals,
            collision=collision and "collision" in cfg.signals,
            progress=progress,
            recoverable=recoverable,
            unrecoverable_why=why,
            milestone=milestone,
        )


# Decision logic -------------------------------------------------------------------------------
class Decision(NamedTuple):
    takeover: bool
    reason: str | None


class TakeoverModel:
    """Pure decision logic of the operator: when to press the deadman, which arms to take, and
    when to release it.

    States: ``watching`` → (first failure signal) → ``reacting`` for ``reaction_steps`` →
    ``in_control`` → (back on track, see the module docstring) → ``watching`` again, with the
    arbiter's hand-back ramp in between; or ``watching`` → ``declined`` when this episode's draw
    says the operator lets this failure happen (it then keeps watching but never intervenes);
    or ``reacting`` → ``declined`` (reason ``"unrecoverable: …"``) when the scene is lost at the
    moment the operator would take over. ``mask`` holds the arms of the current takeover.
    """

    def __init__(self, config: OperatorConfig, n_arms: int = 2) -> None:
        self.config = config
        self.n_arms = n_arms
        self._rng = np.random.default_rng()
        self.reset()

    def reset(self, seed: int | None = None, horizon: int | None = None) -> None:
        """New episode; ``horizon``: its step limit (``None``: unknown, hand back any time)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.will_intervene = bool(self._rng.random() < self.config.intervention_rate)
        self.state = "watching"
        self.reason: str | None = None
        self._countdown = 0
        self.first_signal_step: int | None = None
        self._step = 0
        self.horizon = horizon
        self.takeovers = 0
        self.releases = 0
        self.mask: tuple[bool, ...] = (True,) * self.n_arms
        self._control_steps = 0
        self._track_steps = 0
        self.start_level = 0  # the milestone level the current takeover began at
        self._start_grasped: tuple[bool, ...] = (False,) * self.n_arms

    def _arms_at_fault(self, signals: Signals) -> tuple[bool, ...]:
        every = (True,) * self.n_arms
        m = signals.milestone
        if not self.config.one_arm or m is None or signals.collision or len(m.arm_done) < 2:
            return every
        fault = tuple(not done for done in m.arm_done)
        return fault if any(fault) and not all(fault) else every

    def _release_due(self, signals: Signals) -> bool:
        cfg, m = self.config, signals.milestone
        if not cfg.release or m is None or self.takeovers >= cfg.max_takeovers:
            return False
        if all(self.mask):
            least = m.handback_level if cfg.handback_level is None else cfg.handback_level
            on_track = m.level > self.start_level and m.level >= least
        else:
            mode = m.pick_handback if cfg.pick_handback == "auto" else cfg.pick_handback
            grasp = mode == "grasp" and len(m.arm_grasped) == len(m.arm_done)
            on_track = all(
                done or (grasp and m.arm_grasped[i] and not self._start_grasped[i])
                for i, (done, mine) in enumerate(zip(m.arm_done, self.mask))
                if mine
            )
        self._track_steps = self._track_steps + 1 if on_track else 0
        left = None if self.horizon is None else self.horizon - self._step
        if left is not None and left < cfg.min_suffix_steps and on_track and not all(self.mask):
            # Too late to hand back: the operator finishes the task itself, with every arm
            # (the other arm's part, e.g. transfer-cube's handover, needs it too).
            self.mask = (True,) * self.n_arms
        return (
            self._track_steps >= cfg.release_confirm_steps
            and self._control_steps >= cfg.min_control_steps
            and (left is None or left >= cfg.min_suffix_steps)
        )

    def update(self, signals: Signals) -> Decision:
        self._step += 1
        if self.state == "in_control":
            self._control_steps += 1
            if self._release_due(signals):
                self.state = "watching"
                self.releases += 1
                LOG.info("operator hands back at step %d (back on track)", self._step)
                return Decision(False, self.reason)
            return Decision(True, self.reason)
        fired = [name for name in SIGNALS if getattr(signals, name)]
        if self.state == "watching" and fired:
            if self.first_signal_step is None:
                self.first_signal_step = self._step
            self.reason = fired[0]
            if self.will_intervene:
                self.state, self._countdown = "reacting", self.config.reaction_steps
            else:
                self.state = "declined"
                LOG.info("operator saw %s at step %d and lets it run", fired[0], self._step)
        if self.state == "reacting":
            if self._countdown <= 0 and not signals.recoverable:
                self.state = "declined"
                self.reason = f"unrecoverable: {signals.unrecoverable_why}"
                LOG.info("operator declines at step %d (%s)", self._step, self.reason)
                return Decision(False, self.reason)
            if self._countdown <= 0:
                self._take(signals)
                LOG.info(
                    "operator takes over at step %d (%s, arms %s)",
                    self._step,
                    self.reason,
                    self.mask,
                )
                return Decision(True, self.reason)
            self._countdown -= 1
        return Decision(False, self.reason)

    def _take(self, signals: Signals) -> None:
        self.state = "in_control"
        self.takeovers += 1
        # A takeover that holds to the end (no hand-back, or the last one allowed) takes every
        # arm: the operator finishes the task itself, and the rest of it needs both arms.
        holds = not self.config.release or self.takeovers >= self.config.max_takeovers
        self.mask = (True,) * self.n_arms if holds else self._arms_at_fault(signals)
        self._control_steps = 0
        self._track_steps = 0
        m = signals.milestone
        self.start_level = 0 if m is None else m.level
        self._start_grasped = (
            m.arm_grasped if m is not None and m.arm_grasped else (False,) * self.n_arms
        )

    def take_over_now(self, reason: str, to_end: bool = True) -> None:
        """Take every arm at once (demonstrations, scripted takeovers); ``to_end``: keep
        them until the episode ends, else until :meth:`release_now`."""
        self.state, self.reason = "in_control", reason
        self.takeovers = self.config.max_takeovers if to_end else self.takeovers + 1
        self.mask = (True,) * self.n_arms
        self._control_steps = 0
        self.start_level = 0  # (no signals here: not the level a previous takeover began at)

    def release_now(self) -> None:
        """Release the deadman (a scripted hand-back); the operator watches again."""
        if self.state == "in_control":
            self.state = "watching"
            self.releases += 1


# The operator ---------------------------------------------------------------------------------
class OperatorCommand(NamedTuple):
    """What the operator does this step: ``takeover, mask, action = operator.step(obs)``.

    ``mask`` has one entry per arm (``True`` = the operator drives that arm); ``action`` is the
    full command (``None`` while the operator only watches).
    """

    takeover: bool
    mask: tuple[bool, ...]
    action: FloatArray | None


class ScriptedOperator:
    """Expert + monitor + takeover model (see module docstring)."""

    def __init__(
        self,
        expert: AlohaExpert | MetaWorldExpert,
        config: OperatorConfig | None = None,
        arm_names: tuple[str, ...] = ("left", "right"),
    ) -> None:
        self.config = config or OperatorConfig()
        self.expert = expert
        self.arm_names = arm_names
        self.monitor = RolloutMonitor(self.config, expert)
        self.model = TakeoverModel(self.config, len(arm_names))
        self.takeover_step: int | None = None
        self.takeover_steps: list[int] = []
        self.takeover_reasons: list[str] = []  # the signal behind each takeover
        self.takeover_levels: list[int] = []  # the scene's milestone level as each began
        self.release_steps: list[int] = []
        self._step = 0
        self._script_release: int | None = None

    @classmethod
    def for_backend(
        cls,
        backend: str,
        task: str,
        config: OperatorConfig | None = None,
        expert_config: ExpertConfig | None = None,
    ) -> ScriptedOperator:
        """Operator for the ``"sim"`` (ALOHA) or ``"metaworld"`` backend."""
        if backend == "sim":
            return cls(AlohaExpert(task, expert_config), config, ("left", "right"))
        if backend == "metaworld":
            return cls(MetaWorldExpert(task), config, ("arm",))
        raise ValueError(
            f"no scripted operator for backend {backend!r}; choose 'sim' or 'metaworld'"
        )

    @property
    def reason(self) -> str | None:
        return self.model.reason

    @property
    def in_control(self) -> bool:
        return self.model.state == "in_control"

    @property
    def takeovers(self) -> int:
        return len(self.takeover_steps)

    def reset(self, obs: Observation, seed: int | None = None, horizon: int | None = None) -> None:
        """New episode from ``obs``; ``horizon``: the episode's step limit, if known."""
        self.expert.reset(obs, seed)
        self.monitor.reset()
        self.model.reset(seed, horizon)
        self.takeover_step = None
        self.takeover_steps = []
        self.takeover_reasons = []
        self.takeover_levels = []
        self.release_steps = []
        self._step = 0
        self._script_release: int | None = None

    def step(self, obs: Observation) -> OperatorCommand:
        """Watch ``obs``; when in control, return the expert's action for it."""
        k = self._step  # this observation's episode step
        for start, steps in self.config.script:
            if k == start and not self.in_control:
                self.take_over_now(obs, "scripted", to_end=steps < 0)
                self._script_release = None if steps < 0 else k + steps
        self._step += 1
        was_in_control = self.in_control
        signals = self.monitor.update(obs)
        if self._script_release is not None and k >= self._script_release:
            self._script_release = None
            self.model.release_now()
            decision = Decision(False, self.model.reason)
        elif self._script_release is not None:
            decision = Decision(True, self.model.reason)  # a scripted takeover runs on
        else:
            decision = self.model.update(signals)
        if not decision.takeover:
            if was_in_control:
                self.release_steps.append(k)
                self.monitor.restart_watch()
            return OperatorCommand(False, tuple(False for _ in self.arm_names), None)
        if not was_in_control:
            self._record_takeover(k)
            self.expert.replan(obs)
        action = np.asarray(self.expert.act(obs), dtype=np.float64)
        return OperatorCommand(True, self.model.mask, action)

    def _record_takeover(self, step: int) -> None:
        if self.takeover_step is None:
            self.takeover_step = step
        self.takeover_steps.append(step)
        self.takeover_reasons.append(self.model.reason or "")
        self.takeover_levels.append(self.model.start_level)

    def take_over_now(self, obs: Observation, reason: str = "forced", to_end: bool = True) -> None:
        """Take every arm immediately (demonstrations, tests); ``to_end``: keep them until the
        episode ends."""
        if not self.in_control:
            self.model.take_over_now(reason, to_end)
            self._record_takeover(self._step)
            self.expert.replan(obs)


def mask_to_array(
    mask: tuple[bool, ...], arm_slices: tuple[tuple[str, int, int], ...]
) -> npt.NDArray[np.bool_]:
    """Per-arm mask -> per-action-dimension boolean mask (for blending with a policy action)."""
    if len(mask) != len(arm_slices):
        raise ValueError(f"mask has {len(mask)} entries for {len(arm_slices)} arms")
    out = np.zeros(max((hi for _, _, hi in arm_slices), default=0), dtype=bool)
    for flag, (_, lo, hi) in zip(mask, arm_slices):
        out[lo:hi] = flag
    return out

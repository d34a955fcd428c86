"""Who controls each arm at a control tick: the intervention arbiter's state machine.

Per arm, one of three modes:

- ``POLICY``: the arm executes the scheduled row of the newest policy chunk.
- ``HUMAN``: the operator holds the deadman (and, with per-arm takeover, that arm's button);
  the arm executes the teleop command.
- ``HANDBACK``: the deadman was released; over ``handback_ticks`` ticks the executed action
  blends from the operator's last action to the policy's, ``a = (1 − α)·a_human + α·a_policy``
  with ``α = k / handback_ticks``, so the arm never jumps. Blended steps are tagged
  ``HANDBACK``: they are nobody's decision, so the learner neither gives them the policy's
  outcome label nor imitates them as the operator's.

Whatever the mode, an arm *holds* (repeats its last executed action; tag ``NONE``) when:
the e-stop is latched; the joystick is silent for more than ``joy_timeout_s`` while the human
holds authority (authority stays with the human until the joystick is heard again); the teleop
command is missing or older than ``teleop_timeout_s`` under ``HUMAN``; no fresh policy row
exists under ``POLICY``/``HANDBACK``; or the chosen action is not finite.

Supervision (each off when its setting is 0):

- **pad supervision** (``pad_supervision_s``): when the operator's pad has not been heard for
  that long, every arm holds (``pad_silent``), even under ``POLICY``: autonomy runs only while
  a person with the pad in hand can take over. On by default for the real arms.
- **policy heartbeat** (``step(policy_alive=...)``, see :func:`heartbeat_alive`): when the
  policy server's heartbeat stopped, ``POLICY``/``HANDBACK`` arms hold at once
  (``policy_heartbeat_lost``) instead of running out the rows of the last chunk.

Pure and ROS-free: the arbiter node converts ``sensor_msgs/Joy`` and teleop messages into
:class:`JoyState` / :class:`TeleopCommand` and publishes the :class:`Decision`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from habc_policy.core.chunking import ScheduledRow


class Controller(enum.IntEnum):
    """Authority tag per arm; values match ``habc_msgs/ExecutedCommand.CONTROLLER_*``."""

    NONE = 0
    POLICY = 1
    HUMAN = 2
    HANDBACK = 3


class Mode(enum.Enum):
    POLICY = "policy"
    HUMAN = "human"
    HANDBACK = "handback"


HOLD_ESTOP = "estop"
HOLD_JOYSTICK_SILENT = "joystick_silent"
HOLD_TELEOP_STALE = "teleop_stale"
HOLD_POLICY_STALE = "policy_stale"
HOLD_NON_FINITE = "non_finite_action"
HOLD_NO_POSITION = "no_hold_position"
HOLD_PAD_SILENT = "pad_silent"
HOLD_POLICY_HEARTBEAT = "policy_heartbeat_lost"


def heartbeat_alive(now_s: float, last_stamp_s: float | None, ticks: int, period_s: float) -> bool:
    """Whether the policy server is alive at ``now_s``: its newest heartbeat is stamped at most
    ``ticks`` control periods ago, ``now − t_hb ≤ ticks · Δt``. ``ticks == 0`` turns the check
    off; no heartbeat ever is not alive. Stamps are the server's clock (one machine, or
    synchronized clocks)."""
    if ticks <= 0:
        return True
    return last_stamp_s is not None and now_s - last_stamp_s <= ticks * period_s + 1e-9


def episode_starts(
    *,
    chunk_ready: bool,
    claiming: bool,
    operator_acting: bool,
    waited_s: float,
    timeout_s: float,
) -> bool:
    """Whether a started episode's clock starts at this tick (its step 0).

    It starts when somebody can act on the episode's scene: the operator, claiming an arm,
    with a command computed after the start (``operator_acting``: the takeover reaches the arm
    at step 0); with no arm claimed, a fresh row of a chunk computed after the start
    (``chunk_ready``); or after ``timeout_s`` of waiting (the arm holds from step 0). A claim
    without such a command (a deadman held over from before the start, whose last teleop
    command was computed on the previous scene) waits: the ticks until then hold and belong to
    no episode, and if the operator lets go, the chunk starts the episode without a hand-back.
    """
    if waited_s > timeout_s:
        return True
    if claiming:
        return operator_acting
    return chunk_ready


@dataclass(frozen=True)
class JoyMapping:
    """Button indices of ``sensor_msgs/Joy.buttons`` (defaults: an Xbox pad under ``joy``).

    ``takeover_buttons[i]`` selects arm ``i`` for a one-arm takeover; with the deadman held and
    no takeover button held, the human takes every arm. ``-1`` disables a button.
    """

    deadman: int = 4
    takeover_buttons: tuple[int, ...] = (6, 7)
    mark_success: int = 0
    mark_failure: int = 1

    def __post_init__(self) -> None:
        if self.deadman < 0:
            raise ValueError(f"deadman button index must be >= 0, got {self.deadman}")
        used = [self.deadman, self.mark_success, self.mark_failure, *self.takeover_buttons]
        used = [b for b in used if b >= 0]
        if len(used) != len(set(used)):
            raise ValueError(f"joystick mapping uses a button twice: {used}")


#: Ticks of the hand-back blend (0.2 s at 50 Hz). Measured with the scripted operator on a
#: transfer-cube SFT policy (100 episodes): a 25-tick ramp took 25 of the ~70 steps a policy
#: needs after a corrected grasp, and left a post-takeover suffix of >= 50 steps in 31 % of
#: takeover episodes; 10 ticks left it in 58 %. The chunk safety step and the driver's limits
#: bound every blended step as they bound any other.
DEFAULT_HANDBACK_TICKS = 10


@dataclass(frozen=True)
class ArbiterConfig:
    """Arbiter settings.

    Attributes:
        arm_slices: action-vector slice ``(start, stop)`` of each arm, e.g. ``((0, 7), (7, 14))``.
        handback_ticks: ticks of the blend back to the policy after a takeover (0 = none).
        joy_timeout_s: joystick silence that makes a human-controlled arm hold.
        teleop_timeout_s: age of the teleop command past which a human-controlled arm holds.
        mapping: joystick buttons.
        pad_supervision_s: pad silence after which every arm holds, whatever its mode
            (0 = off).
    """

    arm_slices: tuple[tuple[int, int], ...] = ((0, 7), (7, 14))
    handback_ticks: int = DEFAULT_HANDBACK_TICKS
    joy_timeout_s: float = 0.1
    teleop_timeout_s: float = 0.1
    mapping: JoyMapping = field(default_factory=JoyMapping)
    pad_supervision_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.pad_supervision_s >= 0 and self.pad_supervision_s < float("inf")):
            raise ValueError(
                f"pad_supervision_s must be >= 0 (0 = off), got {self.pad_supervision_s}"
            )
        if not self.arm_slices:
            raise ValueError("arm_slices must name at least one arm")
        stop = 0
        for lo, hi in self.arm_slices:
            if lo != stop or hi <= lo:
                raise ValueError(f"arm_slices must tile the action vector, got {self.arm_slices}")
            stop = hi
        if self.handback_ticks < 0:
            raise ValueError(f"handback_ticks must be >= 0, got {self.handback_ticks}")
        if self.joy_timeout_s <= 0 or self.teleop_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")
        n_takeover = len(self.mapping.takeover_buttons)
        if n_takeover not in (0, len(self.arm_slices)):
            raise ValueError(
                f"{n_takeover} takeover buttons for {len(self.arm_slices)} arms (give one per arm "
                "or none)"
            )

    @property
    def action_dim(self) -> int:
        return self.arm_slices[-1][1]


@dataclass(frozen=True)
class JoyState:
    """The latest joystick message: its receive time and its buttons."""

    stamp_s: float
    buttons: Sequence[int]

    def pressed(self, index: int) -> bool:
        return 0 <= index < len(self.buttons) and bool(self.buttons[index])


@dataclass(frozen=True)
class TeleopCommand:
    """The operator's latest full action (leader arms, VR or the joystick jog)."""

    stamp_s: float
    action: np.ndarray  # [d]


@dataclass(frozen=True)
class Decision:
    """What to execute at this tick."""

    action: np.ndarray  # [d]
    controllers: tuple[Controller, ...]  # per arm
    hold_reason: str  # "" when no arm holds; else the first reason
    checkpoint_id: str = ""
    chunk_seq: int = 0
    chunk_row: int = 0
    mark: str = ""  # "success" | "failure" when the operator pressed a mark button this tick

    @property
    def hold(self) -> bool:
        return any(c is Controller.NONE for c in self.controllers)


class AuthorityArbiter:
    """The per-arm authority state machine (see the module docstring)."""

    def __init__(self, config: ArbiterConfig) -> None:
        self.config = config
        n = len(config.arm_slices)
        self._modes = [Mode.POLICY] * n
        self._handback_k = [0] * n
        self._handback_from: list[np.ndarray | None] = [None] * n
        self._last_action: np.ndarray | None = None
        self._prev_buttons: tuple[int, ...] = ()

    @property
    def modes(self) -> tuple[Mode, ...]:
        return tuple(self._modes)

    def policy_dims(self) -> np.ndarray:
        """Action dimensions of the arms in ``POLICY`` mode (bool ``[d]``): the ones the
        chunk-level safety step bounds (a hand-back ramps from the operator's action)."""
        mask = np.zeros(self.config.action_dim, dtype=bool)
        for (lo, hi), mode in zip(self.config.arm_slices, self._modes):
            mask[lo:hi] = mode is Mode.POLICY
        return mask

    def reset(self, hold_position: np.ndarray | None = None) -> None:
        """Back to policy control (new episode); ``hold_position`` seeds the hold action."""
        n = len(self.config.arm_slices)
        self._modes = [Mode.POLICY] * n
        self._handback_k = [0] * n
        self._handback_from = [None] * n
        self._last_action = None if hold_position is None else self._checked(hold_position)
        # Button state is physical: a mark button still held from the previous episode must
        # not fire again as a fresh press in this one.

    def _checked(self, action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape[0] != self.config.action_dim:
            raise ValueError(f"action has {a.shape[0]} dims, expected {self.config.action_dim}")
        return a

    def _requested_human(self, joy: JoyState | None, now_s: float) -> list[bool] | None:
        """Arms the operator claims; ``None`` when the joystick is silent."""
        cfg = self.config
        if joy is None or now_s - joy.stamp_s > cfg.joy_timeout_s:
            return None
        n = len(cfg.arm_slices)
        if not joy.pressed(cfg.mapping.deadman):
            return [False] * n
        selected = [joy.pressed(b) for b in cfg.mapping.takeover_buttons]
        return selected if any(selected) else [True] * n

    def requested_arms(self, joy: JoyState | None, now_s: float) -> tuple[bool, ...] | None:
        """Arms the operator claims at ``now_s`` (deadman + takeover buttons); ``None`` when
        the joystick is silent. Pure query: the state machine does not change."""
        requested = self._requested_human(joy, now_s)
        return None if requested is None else tuple(requested)

    def teleop_fresh(self, teleop: TeleopCommand | None, now_s: float) -> bool:
        """The operator's command can drive a human-held arm at ``now_s``: there is one, at
        most ``teleop_timeout_s`` old, with the action layout's dimension."""
        cfg = self.config
        return (
            teleop is not None
            and now_s - teleop.stamp_s <= cfg.teleop_timeout_s
            and teleop.action.shape == (cfg.action_dim,)
        )

    def _mark(self, joy: JoyState | None, fresh: bool) -> str:
        if joy is None or not fresh:
            return ""
        buttons = tuple(int(b) for b in joy.buttons)
        prev, self._prev_buttons = self._prev_buttons, buttons

        def rising(i: int) -> bool:
            return 0 <= i < len(buttons) and bool(buttons[i]) and not (i < len(prev) and prev[i])

        m = self.config.mapping
        if rising(m.mark_success):
            return "success"
        if rising(m.mark_failure):
            return "failure"
        return ""

    def step(
        self,
        now_s: float,
        *,
        joy: JoyState | None,
        teleop: TeleopCommand | None,
        policy_row: ScheduledRow | None,
        estop: bool,
        measured_position: np.ndarray | None = None,
        policy_alive: bool = True,
        policy_refused: str = "",
    ) -> Decision:
        """Decide the action and authority for the tick at ``now_s``.

        Args:
            joy: the latest joystick state (``None`` if none was ever received).
            teleop: the latest operator command (``None`` if none).
            policy_row: the scheduler's row for this tick (``None`` if no fresh chunk).
            estop: the e-stop is latched.
            measured_position: current joint positions; the hold action until an action was
                executed once.
            policy_alive: the policy server's heartbeat is fresh (:func:`heartbeat_alive`).
            policy_refused: why there is no ``policy_row`` although a chunk is fresh (the
                chunk-level safety step refused it); the hold reason of policy arms.
        """
        cfg = self.config
        if self._last_action is None and measured_position is not None:
            self._last_action = self._checked(measured_position)
        requested = self._requested_human(joy, now_s)
        mark = self._mark(joy, requested is not None)

        # Mode transitions. A silent joystick changes nothing: a human-held arm stays human
        # (and holds below) until the joystick is heard again.
        for i in range(len(cfg.arm_slices)):
            if requested is None:
                continue
            if requested[i]:
                self._modes[i] = Mode.HUMAN
            elif self._modes[i] is Mode.HUMAN:
                if cfg.handback_ticks == 0:
                    self._modes[i] = Mode.POLICY
                else:
                    self._modes[i] = Mode.HANDBACK
                    self._handback_k[i] = 0
                    lo, hi = cfg.arm_slices[i]
                    last = self._last_action
                    self._handback_from[i] = None if last is None else last[lo:hi].copy()

        teleop_fresh = self.teleop_fresh(teleop, now_s)
        policy_action = None if policy_row is None else np.asarray(policy_row.action, np.float32)
        policy_hold = policy_refused or HOLD_POLICY_STALE
        if not policy_alive:  # a dead server's last chunk never runs out its rows
            policy_action, policy_hold = None, HOLD_POLICY_HEARTBEAT
        pad_silent = cfg.pad_supervision_s > 0 and (
            joy is None or now_s - joy.stamp_s > cfg.pad_supervision_s
        )

        action = np.zeros(cfg.action_dim, dtype=np.float32)
        controllers: list[Controller] = []
        reasons: list[str] = []
        for i, (lo, hi) in enumerate(cfg.arm_slices):
            mode = self._modes[i]
            part: np.ndarray | None = None
            reason = ""
            tag = Controller.NONE
            if estop:
                reason = HOLD_ESTOP
            elif mode is Mode.HUMAN:
                if requested is None:
                    reason = HOLD_JOYSTICK_SILENT
                elif not teleop_fresh:
                    reason = HOLD_TELEOP_STALE
                else:
                    part, tag = np.asarray(teleop.action[lo:hi], np.float32), Controller.HUMAN
            elif pad_silent:
                reason = HOLD_PAD_SILENT
            elif policy_action is None:
                reason = policy_hold
            elif mode is Mode.POLICY:
                part, tag = policy_action[lo:hi], Controller.POLICY
            else:  # HANDBACK
                self._handback_k[i] += 1
                alpha = self._handback_k[i] / cfg.handback_ticks
                start = self._handback_from[i]
                start = policy_action[lo:hi] if start is None else start
                part = (1.0 - alpha) * start + alpha * policy_action[lo:hi]
                tag = Controller.HANDBACK
                if self._handback_k[i] >= cfg.handback_ticks:
                    self._modes[i] = Mode.POLICY
            if part is not None and not np.all(np.isfinite(part)):
                part, reason, tag = None, HOLD_NON_FINITE, Controller.NONE
            if part is None:
                if self._last_action is None:
                    reason = reason or HOLD_NO_POSITION
                    part = np.full(hi - lo, np.nan, dtype=np.float32)
                else:
                    part = self._last_action[lo:hi]
            action[lo:hi] = part
            controllers.append(tag)
            if reason:
                reasons.append(reason)

        if np.all(np.isfinite(action)):
            self._last_action = action.copy()
        policy_used = Controller.POLICY in controllers and policy_row is not None
        return Decision(
            action=action,
            controllers=tuple(controllers),
            hold_reason=reasons[0] if reasons else "",
            checkpoint_id=policy_row.checkpoint_id if policy_used else "",
            chunk_seq=policy_row.seq if policy_used else 0,
            chunk_row=policy_row.row if policy_used else 0,
            mark=mark,
        )

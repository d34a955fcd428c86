"""The authority state machine: takeover, per-arm takeover, hand-back ramp, every hold."""

from __future__ import annotations

import numpy as np
import pytest

from habc_policy.core.authority import (
    HOLD_ESTOP,
    HOLD_JOYSTICK_SILENT,
    HOLD_NON_FINITE,
    HOLD_POLICY_STALE,
    HOLD_TELEOP_STALE,
    ArbiterConfig,
    AuthorityArbiter,
    Controller,
    JoyMapping,
    JoyState,
    Mode,
    TeleopCommand,
)
from habc_policy.core.chunking import ScheduledRow

P, H, N, B = Controller.POLICY, Controller.HUMAN, Controller.NONE, Controller.HANDBACK
DEADMAN, LEFT, RIGHT, OK, FAIL = 4, 6, 7, 0, 1
CFG = ArbiterConfig(arm_slices=((0, 2), (2, 4)), handback_ticks=4)


def joy(t: float, *pressed: int) -> JoyState:
    buttons = [0] * 8
    for b in pressed:
        buttons[b] = 1
    return JoyState(stamp_s=t, buttons=buttons)


def row(value: float, seq: int = 3, r: int = 5) -> ScheduledRow:
    return ScheduledRow(np.full(4, value, np.float32), "ckpt-a", seq, r)


def human(t: float, value: float) -> TeleopCommand:
    return TeleopCommand(stamp_s=t, action=np.full(4, value, np.float32))


def test_policy_in_control_carries_chunk_provenance() -> None:
    arb = AuthorityArbiter(CFG)
    d = arb.step(0.0, joy=joy(0.0), teleop=None, policy_row=row(1.0), estop=False)
    assert d.controllers == (P, P) and not d.hold
    assert d.action.tolist() == [1.0] * 4
    assert (d.checkpoint_id, d.chunk_seq, d.chunk_row) == ("ckpt-a", 3, 5)


def test_deadman_takes_both_arms_then_ramps_back() -> None:
    arb = AuthorityArbiter(CFG)
    arb.step(0.00, joy=joy(0.00), teleop=None, policy_row=row(1.0), estop=False)
    d = arb.step(
        0.02, joy=joy(0.02, DEADMAN), teleop=human(0.02, 5.0), policy_row=row(1.0), estop=False
    )
    assert d.controllers == (H, H) and d.action.tolist() == [5.0] * 4
    assert d.checkpoint_id == ""  # no policy action executed
    # Release: the blend goes 5 -> 1 over 4 ticks: alpha = 1/4, 2/4, 3/4, 4/4.
    expected = [4.0, 3.0, 2.0, 1.0]
    for k, want in enumerate(expected):
        t = 0.04 + 0.02 * k
        d = arb.step(t, joy=joy(t), teleop=human(t, 5.0), policy_row=row(1.0), estop=False)
        assert d.action.tolist() == pytest.approx([want] * 4)
        # Blended steps are nobody's decision: neither the policy's nor the operator's.
        assert d.controllers == (B, B)
        assert d.checkpoint_id == ""
    assert arb.modes == (Mode.POLICY, Mode.POLICY)
    d = arb.step(0.14, joy=joy(0.14), teleop=None, policy_row=row(1.0), estop=False)
    assert d.controllers == (P, P)


def test_one_arm_takeover() -> None:
    arb = AuthorityArbiter(CFG)
    d = arb.step(
        0.0, joy=joy(0.0, DEADMAN, RIGHT), teleop=human(0.0, 9.0), policy_row=row(1.0), estop=False
    )
    assert d.controllers == (P, H)
    assert d.action.tolist() == [1.0, 1.0, 9.0, 9.0]
    assert d.checkpoint_id == "ckpt-a"  # the left arm ran the policy


def test_joystick_silent_during_takeover_holds_until_heard_again() -> None:
    arb = AuthorityArbiter(CFG)
    arb.step(
        0.00, joy=joy(0.00, DEADMAN), teleop=human(0.00, 5.0), policy_row=row(1.0), estop=False
    )
    # 101 ms of silence: hold at the last executed action, authority stays with the human.
    d = arb.step(
        0.101, joy=joy(0.00, DEADMAN), teleop=human(0.10, 6.0), policy_row=row(1.0), estop=False
    )
    assert d.controllers == (N, N) and d.hold_reason == HOLD_JOYSTICK_SILENT
    assert d.action.tolist() == [5.0] * 4
    assert arb.modes == (Mode.HUMAN, Mode.HUMAN)
    # 100 ms exactly is still fresh.
    arb2 = AuthorityArbiter(CFG)
    arb2.step(0.0, joy=joy(0.0, DEADMAN), teleop=human(0.0, 5.0), policy_row=None, estop=False)
    d2 = arb2.step(0.1, joy=joy(0.0, DEADMAN), teleop=human(0.1, 6.0), policy_row=None, estop=False)
    assert d2.controllers == (H, H)


def test_stale_teleop_and_stale_policy_hold() -> None:
    arb = AuthorityArbiter(CFG)
    d = arb.step(
        0.5,
        joy=joy(0.5, DEADMAN),
        teleop=human(0.3, 5.0),
        policy_row=row(1.0),
        estop=False,
        measured_position=np.zeros(4),
    )
    assert d.controllers == (N, N) and d.hold_reason == HOLD_TELEOP_STALE
    assert d.action.tolist() == [0.0] * 4  # measured position until something ran
    arb = AuthorityArbiter(CFG)
    arb.step(0.0, joy=None, teleop=None, policy_row=row(2.0), estop=False)
    d = arb.step(0.02, joy=None, teleop=None, policy_row=None, estop=False)
    assert d.controllers == (N, N) and d.hold_reason == HOLD_POLICY_STALE
    assert d.action.tolist() == [2.0] * 4


def test_estop_holds_everything_and_nan_is_never_executed() -> None:
    arb = AuthorityArbiter(CFG)
    arb.step(0.0, joy=None, teleop=None, policy_row=row(2.0), estop=False)
    d = arb.step(
        0.02, joy=joy(0.02, DEADMAN), teleop=human(0.02, 5.0), policy_row=row(3.0), estop=True
    )
    assert d.controllers == (N, N) and d.hold_reason == HOLD_ESTOP
    assert d.action.tolist() == [2.0] * 4
    assert arb.modes == (Mode.HUMAN, Mode.HUMAN)  # the deadman was held under the e-stop
    arb = AuthorityArbiter(CFG)
    arb.step(0.0, joy=None, teleop=None, policy_row=row(2.0), estop=False)
    bad = row(1.0)
    bad.action[1] = np.nan
    d = arb.step(0.04, joy=None, teleop=None, policy_row=bad, estop=False)
    assert d.controllers == (N, P)
    assert d.hold_reason == HOLD_NON_FINITE
    assert np.all(np.isfinite(d.action)) and d.action.tolist() == [2.0, 2.0, 1.0, 1.0]


def test_mark_buttons_fire_once_per_press() -> None:
    arb = AuthorityArbiter(CFG)
    marks = [
        arb.step(t, joy=joy(t, *b), teleop=None, policy_row=row(1.0), estop=False).mark
        for t, b in [(0.0, ()), (0.02, (OK,)), (0.04, (OK,)), (0.06, ()), (0.08, (FAIL,))]
    ]
    assert marks == ["", "success", "", "", "failure"]


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="tile"):
        ArbiterConfig(arm_slices=((0, 7), (8, 14)))
    with pytest.raises(ValueError, match="twice"):
        JoyMapping(deadman=0, mark_success=0)
    with pytest.raises(ValueError, match="takeover buttons"):
        ArbiterConfig(arm_slices=((0, 4),), mapping=JoyMapping(takeover_buttons=(6, 7)))


def test_requested_arms_is_a_pure_query() -> None:
    arb = AuthorityArbiter(CFG)
    assert arb.requested_arms(None, 0.0) is None
    assert arb.requested_arms(joy(0.0), 0.5) is None  # silent
    assert arb.requested_arms(joy(0.0), 0.0) == (False, False)
    assert arb.requested_arms(joy(0.0, DEADMAN), 0.0) == (True, True)
    assert arb.requested_arms(joy(0.0, DEADMAN, RIGHT), 0.0) == (False, True)
    assert arb.modes == (Mode.POLICY, Mode.POLICY)  # nothing changed


def test_a_mark_button_held_across_an_episode_reset_fires_once() -> None:
    arb = AuthorityArbiter(CFG)
    first = arb.step(0.0, joy=joy(0.0, FAIL), teleop=None, policy_row=row(1.0), estop=False)
    assert first.mark == "failure"
    arb.reset(hold_position=np.zeros(4))  # the next episode starts while FAIL is still held
    marks = [
        arb.step(t, joy=joy(t, FAIL), teleop=None, policy_row=row(1.0), estop=False).mark
        for t in (0.02, 0.04)
    ]
    assert marks == ["", ""]
    arb.step(0.06, joy=joy(0.06), teleop=None, policy_row=row(1.0), estop=False)
    again = arb.step(0.08, joy=joy(0.08, FAIL), teleop=None, policy_row=row(1.0), estop=False)
    assert again.mark == "failure"  # a new press in the new episode does count


def test_heartbeat_alive_by_hand() -> None:
    from habc_policy.core.authority import heartbeat_alive

    assert heartbeat_alive(1.04, 1.0, 2, 0.02)  # 2 periods old: still alive
    assert not heartbeat_alive(1.0401, 1.0, 2, 0.02)
    assert not heartbeat_alive(1.0, None, 2, 0.02)  # never heard
    assert heartbeat_alive(100.0, None, 0, 0.02)  # off


def test_episode_starts_when_somebody_can_act_on_the_new_scene() -> None:
    from habc_policy.core.authority import episode_starts

    def starts(chunk: bool, claiming: bool, acting: bool, waited: float = 0.1) -> bool:
        return episode_starts(
            chunk_ready=chunk,
            claiming=claiming,
            operator_acting=acting,
            waited_s=waited,
            timeout_s=5.0,
        )

    assert not starts(False, False, False)  # nobody yet: wait
    assert starts(True, False, False)  # the first chunk, nobody claiming
    assert starts(False, True, True)  # the operator acts on the new scene
    assert starts(True, True, True)
    # A claim without a command of the new scene (held over from the previous one): wait,
    # even with a chunk there, until the operator acts or lets go.
    assert not starts(True, True, False)
    assert not starts(False, True, False)
    assert starts(False, True, False, waited=5.01)  # the timeout starts it whatever
    assert starts(False, False, False, waited=5.01)


def test_teleop_fresh_by_hand() -> None:
    arb = AuthorityArbiter(CFG)  # teleop_timeout_s 0.1, 4 action dims
    assert arb.teleop_fresh(human(1.0, 0.0), 1.0999)
    assert not arb.teleop_fresh(human(1.0, 0.0), 1.1001)
    assert not arb.teleop_fresh(None, 1.0)
    assert not arb.teleop_fresh(TeleopCommand(stamp_s=1.0, action=np.zeros(3, np.float32)), 1.0)


def test_lost_heartbeat_holds_policy_arms_at_once_but_not_the_human() -> None:
    from habc_policy.core.authority import HOLD_POLICY_HEARTBEAT

    arb = AuthorityArbiter(CFG)
    d = arb.step(0.0, joy=joy(0.0), teleop=None, policy_row=row(1.0), estop=False)
    assert d.controllers == (P, P)
    # The last chunk still has fresh rows, but its server is dead: hold the last action.
    d = arb.step(
        0.02, joy=joy(0.02), teleop=None, policy_row=row(2.0), estop=False, policy_alive=False
    )
    assert d.controllers == (N, N) and d.hold_reason == HOLD_POLICY_HEARTBEAT
    assert d.action.tolist() == [1.0] * 4 and d.checkpoint_id == ""
    # The operator can still take over and move the arm.
    d = arb.step(
        0.04,
        joy=joy(0.04, DEADMAN),
        teleop=human(0.04, 5.0),
        policy_row=row(2.0),
        estop=False,
        policy_alive=False,
    )
    assert d.controllers == (H, H) and d.action.tolist() == [5.0] * 4


def test_pad_supervision_holds_even_under_policy_authority() -> None:
    from habc_policy.core.authority import HOLD_PAD_SILENT

    cfg = ArbiterConfig(arm_slices=((0, 2), (2, 4)), handback_ticks=4, pad_supervision_s=0.5)
    arb = AuthorityArbiter(cfg)
    # Never heard: autonomy does not start.
    d = arb.step(
        0.0,
        joy=None,
        teleop=None,
        policy_row=row(1.0),
        estop=False,
        measured_position=np.zeros(4, np.float32),
    )
    assert d.controllers == (N, N) and d.hold_reason == HOLD_PAD_SILENT
    assert d.action.tolist() == [0.0] * 4
    d = arb.step(0.02, joy=joy(0.02), teleop=None, policy_row=row(1.0), estop=False)
    assert d.controllers == (P, P)
    # The pad's last message is 0.5 s old: still supervised; older: every arm holds.
    d = arb.step(0.52, joy=joy(0.02), teleop=None, policy_row=row(2.0), estop=False)
    assert d.controllers == (P, P) and d.action.tolist() == [2.0] * 4
    d = arb.step(0.54, joy=joy(0.02), teleop=None, policy_row=row(3.0), estop=False)
    assert d.controllers == (N, N) and d.hold_reason == HOLD_PAD_SILENT
    assert d.action.tolist() == [2.0] * 4
    # Off by default: the same silence changes nothing.
    plain = AuthorityArbiter(CFG)
    d = plain.step(5.0, joy=joy(0.0), teleop=None, policy_row=row(3.0), estop=False)
    assert d.controllers == (P, P)
    with pytest.raises(ValueError, match="pad_supervision_s"):
        ArbiterConfig(pad_supervision_s=-1.0)

"""In-process rollouts on a robot backend: policy chunks, scripted takeovers, episode bags.

The same control semantics as the ROS node graph, without ROS: the policy serves chunks of
``H`` rows computed from the latest observation, ``execute_rows`` of each run open loop,
scheduled by the arbiter's own :class:`~habc_policy.core.chunking.ChunkScheduler` (the same
seam modes, the episode's first chunk from its row 0) and, when given, checked by its
chunk-level safety step (:mod:`habc_policy.core.chunk_safety`); ``latency_rows`` simulates the
graph's inference latency (a chunk requested that many rows before the running one runs out,
from the observation of that tick, becomes available that many ticks later); the
scripted operator watches every step and, when it takes over, drives the arms it took (steps
tagged ``HUMAN``) until it hands back. Who controls each arm is decided by the arbiter's own
state machine (:class:`habc_policy.core.authority.AuthorityArbiter`), fed with the joystick
state the operator node would publish (deadman, one takeover button per arm) and its teleop
command, so the hand-back ramp (``HANDBACK``), the per-arm tags and the holds are the ones the
node graph records. Every executed step goes into an episode bag in the format of
:mod:`habc_common.bag_format`, so the learner reads these rollouts exactly as it reads
what the recorder node writes. Used by the main job, the paper-protocol benchmark and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from habc_common import bag_format as bf

BASE_TIME_NS = 1_000_000_000  # episode clock starts at 1 s (stamps must be > 0 for some tools)


@dataclass(frozen=True)
class RolloutResult:
    """What one rollout did."""

    episode_id: str
    success: bool
    steps: int
    success_step: int | None
    takeover_step: int | None  # first step under operator control, None if never
    failure: str | None
    bag: Path | None
    operator_reason: str | None = None  # why the operator acted or declined ("unrecoverable: …")
    takeovers: int = 0  # takeovers in this episode
    handbacks: int = 0  # of them, handed back to the policy
    suffix_steps: int = 0  # policy steps after the last takeover and its hand-back ramp
    clamped_steps: int = 0  # steps the chunk safety step clamped
    hold_steps: int = 0  # steps some arm held (stale policy, refused row)


#: Joystick layout the in-process operator "presses" (the arbiter's defaults).
DEADMAN_BUTTON = 4
TAKEOVER_BUTTONS = (6, 7)


def arbiter_for(
    arm_slices: tuple[tuple[str, int, int], ...], handback_ticks: int | None = None
) -> Any:
    """The arbiter's state machine for ``arm_slices``, with the default joystick mapping
    (``handback_ticks``: ``None`` for the arbiter's default)."""
    from habc_policy.core.authority import (
        DEFAULT_HANDBACK_TICKS,
        ArbiterConfig,
        AuthorityArbiter,
        JoyMapping,
    )

    if handback_ticks is None:
        handback_ticks = DEFAULT_HANDBACK_TICKS

    buttons = TAKEOVER_BUTTONS if len(arm_slices) == len(TAKEOVER_BUTTONS) else ()
    return AuthorityArbiter(
        ArbiterConfig(
            arm_slices=tuple((lo, hi) for _n, lo, hi in arm_slices),
            handback_ticks=handback_ticks,
            mapping=JoyMapping(deadman=DEADMAN_BUTTON, takeover_buttons=buttons),
        )
    )


def joystick_buttons(takeover: bool, mask: tuple[bool, ...], n_buttons: int = 11) -> list[int]:
    """Buttons of the operator's pad: deadman while taking over; with a one-arm takeover also
    that arm's takeover button (as the scripted operator node publishes them)."""
    buttons = [0] * n_buttons
    if takeover:
        buttons[DEADMAN_BUTTON] = 1
        if len(mask) == len(TAKEOVER_BUTTONS) and not all(mask):
            for flag, b in zip(mask, TAKEOVER_BUTTONS):
                buttons[b] = int(flag)
    return buttons


def _proprio(obs: Any, use_env_state: bool) -> np.ndarray:
    q = np.asarray(obs.joint_positions, dtype=np.float32)
    if use_env_state and obs.env_state is not None:
        q = np.concatenate([q, np.asarray(obs.env_state, dtype=np.float32)])
    return q


def write_observation(w: bf.EpisodeBagWriter, t_ns: int, obs: Any, joint_names: list[str]) -> None:
    """Joint state, privileged env state (sim) and every rendered camera frame of ``obs``."""
    w.write_joint_state(t_ns, joint_names, obs.joint_positions, obs.joint_velocities)
    if obs.env_state is not None:
        w.write_env_state(t_ns, obs.env_state)
    for camera, rgb in obs.images.items():
        w.write_image(t_ns, camera, rgb)


def run_rollout(
    backend: Any,
    *,
    seed: int,
    policy: Any | None = None,
    operator: Any | None = None,
    operator_from_start: bool = False,
    execute_rows: int = 25,
    use_env_state: bool = True,
    episode_id: str,
    task: str,
    prompt: str,
    bag_path: str | Path | None = None,
    source: str = "rollout",
    sample_seed: int | None = None,
    base_time_ns: int = BASE_TIME_NS,
    handback_ticks: int | None = None,
    safety: Any | None = None,
    seam: str = "rtc",
    chunk_safety: Any | None = None,
    latency_rows: int = 0,
    lead_rows: int | None = None,
) -> RolloutResult:
    """Run one episode on a connected ``backend`` until it is done.

    Args:
        policy: a :class:`habc_policy.core.checkpoint.LoadedPolicy` (``None``: the operator
            drives from the start).
        operator: a scripted operator (``habc_sim.core.operator.ScriptedOperator``); it
            watches every step and may take over.
        operator_from_start: the operator drives every step (demonstrations).
        bag_path: where to write the episode bag (``None``: no bag).
        sample_seed: base seed of the policy's sampling noise (deterministic rollouts).
        base_time_ns: stamp of step 0 in the bag (nanoseconds).
        handback_ticks: the arbiter's hand-back ramp (``None``: the arbiter's default,
            ``config/arbiter.yaml``).
        safety: the driver's safety layer (``arx_x5_driver.core.safety.SafetyLayer``) to run
            every command through, as the driver node does; the bag then also holds the
            driver's applied command of each step (``None``: no safety layer, the benchmark's
            default).
        seam: the arbiter's seam mode (``habc_policy.core.chunking.SEAM_MODES``; its
            default, ``DEFAULT_SEAM``).
        chunk_safety: the arbiter's chunk-level safety step
            (``habc_policy.core.chunk_safety.ChunkSafetyConfig``; ``None``: off).
        latency_rows: simulated inference latency in ticks (0: a chunk is computed and used at
            the tick the running one runs out).
        lead_rows: request the next chunk when the running one has this many rows left
            (``None``: ``latency_rows``, so it arrives as the running one runs out); the graph
            requests earlier (its p99 lead), so its chunks take over sooner.
    """
    if policy is None and operator is None:
        raise ValueError("a rollout needs a policy, an operator, or both")
    if policy is None:
        operator_from_start = True
    if operator_from_start and operator is None:
        raise ValueError("operator_from_start needs an operator")
    from dataclasses import replace

    from habc_policy.core.authority import HOLD_NON_FINITE, JoyState, TeleopCommand
    from habc_policy.core.chunk_safety import HOLD_CHUNK_JUMP, ChunkSafety
    from habc_policy.core.chunking import Chunk, ChunkScheduler

    lead = latency_rows if lead_rows is None else lead_rows
    if not 0 <= latency_rows <= lead < execute_rows:
        raise ValueError(
            f"need 0 <= latency_rows {latency_rows} <= lead_rows {lead} < execute_rows "
            f"{execute_rows}"
        )

    spec = backend.spec
    arm_slices = tuple((name, lo, hi) for name, lo, hi in backend.arm_slices)
    period_ns = round(spec.control_period * 1e9)
    obs = backend.reset(seed=seed)
    horizon = getattr(getattr(backend, "config", None), "max_steps", None)
    if operator is not None:
        operator.reset(obs, seed=seed, horizon=horizon)
        if operator_from_start:
            operator.take_over_now(obs, reason="demonstration")
    arbiter = arbiter_for(arm_slices, handback_ticks)
    period = spec.control_period
    scheduler = ChunkScheduler(arm_slices[-1][2], execute_rows, seam=seam)
    scheduler.begin_episode(-period)
    guard = None if chunk_safety is None else ChunkSafety(chunk_safety)
    if guard is not None:
        guard.reset(backend.hold_position())  # the command space's measured position
    if safety is not None:
        safety.start(obs.joint_positions, 0.0)

    writer = None
    if bag_path is not None:
        meta = bf.EpisodeMeta(episode_id, task, prompt, source, arm_slices)
        writer = bf.EpisodeBagWriter(bag_path, meta).__enter__()
        writer.write_event(base_time_ns, bf.EVENT_START, reason=f"{source}, seed {seed}")
    joint_names = list(spec.joint_names)
    pending: tuple[int, Chunk] | None = None  # (available at step, chunk)
    newest_refused = False  # the newest chunk was dropped by the jump limit
    chunk_seq = -1
    clamped_steps = hold_steps = 0
    takeover_step: int | None = None
    checkpoint_id = "" if policy is None else policy.checkpoint_id
    learner_step = -1 if policy is None else int(policy.learner_step)
    step = 0
    nonfinite = False
    tags: list[tuple[int, ...]] = []
    try:
        while not backend.status().done:
            t_ns = base_time_ns + step * period_ns
            now_s = step * spec.control_period
            takeover, mask, human = False, (False,) * len(arm_slices), None
            if operator is not None:
                command = operator.step(obs)
                if command.takeover and command.action is not None:
                    takeover, mask = True, tuple(command.mask)
                    human = np.asarray(command.action, dtype=np.float32)
            policy_row, refused, clamped = None, "", False
            if policy is not None and not (takeover and all(mask)):
                if pending is None and scheduler.rows_left(now_s) <= lead:
                    actions = _sample(policy, obs, use_env_state, prompt, sample_seed, step)
                    if not np.all(np.isfinite(actions)):
                        # Never forward a non-finite command: the arm stays where it is and
                        # the episode ends as a failure (the graph's server drops such chunks).
                        nonfinite = True
                        break
                    chunk_seq += 1
                    # Observed just after the previous tick: row 0 is this tick's.
                    made = Chunk(actions, now_s - 0.5 * period, period, checkpoint_id, chunk_seq)
                    # As the graph's arbiter waits for an episode's first chunk (the clock
                    # starts with it), a chunk with none running is there at once.
                    delay = latency_rows if scheduler.chunk is not None else 0
                    pending = (step + delay, made)
                if pending is not None and step >= pending[0]:
                    first = scheduler.first_row(pending[1], now_s)
                    newest_refused = guard is not None and not guard.admits(
                        first, arbiter.policy_dims()
                    )
                    if not newest_refused:
                        # (else dropped, as the arbiter does); an arm the operator drives
                        # keeps the new chunk's rows (the held plan for it never ran)
                        scheduler.offer(pending[1], now_s, fresh_dims=~arbiter.policy_dims())
                    pending = None
                policy_row = scheduler.select(now_s)
                if policy_row is None and newest_refused:
                    refused = HOLD_CHUNK_JUMP  # the refused chunk would have run (as the node)
                if policy_row is not None and guard is not None:
                    checked = guard.check(policy_row.action, arbiter.policy_dims())
                    if checked.action is None:  # dropped, as the arbiter node does
                        policy_row, refused = None, HOLD_CHUNK_JUMP
                        scheduler.clear()
                    else:
                        policy_row = replace(policy_row, action=checked.action)
                        clamped = checked.clamped
            else:  # a fresh chunk, from its row 0, when the policy gets an arm back
                scheduler.begin_episode(now_s - period)
                pending, newest_refused = None, False
            decision = arbiter.step(
                now_s,
                joy=JoyState(now_s, joystick_buttons(takeover, mask)),
                teleop=None if human is None else TeleopCommand(now_s, human),
                policy_row=policy_row,
                estop=False,
                measured_position=backend.hold_position() if step == 0 else None,
                policy_refused=refused,
            )
            controller = [int(c) for c in decision.controllers]
            if takeover and takeover_step is None:
                takeover_step = step
            action = decision.action
            if decision.hold_reason == HOLD_NON_FINITE or not np.all(np.isfinite(action)):
                # Never forward a non-finite command: the arm stays where it is and the
                # episode ends as a failure (the driver node holds instead, on the robot).
                nonfinite = True
                break
            tags.append(tuple(controller))
            if guard is not None:
                guard.executed(action)
            clamped = clamped and any(
                c in (bf.CONTROLLER_POLICY, bf.CONTROLLER_HANDBACK) for c in controller
            )
            clamped_steps += int(clamped)
            hold_steps += int(bf.CONTROLLER_NONE in controller)
            if writer is not None:
                write_observation(writer, t_ns, obs, joint_names)
                writer.write_command(
                    t_ns,
                    step_index=step,
                    controller=controller,
                    action=action,
                    hold_reason=decision.hold_reason,
                    checkpoint_id=decision.checkpoint_id,
                    chunk_seq=decision.chunk_seq,
                    chunk_row=decision.chunk_row,
                    learner_step=learner_step if decision.checkpoint_id else -1,
                    clamped=clamped,
                )
            if safety is None:
                backend.command(action)
            else:
                verdict = safety.command(action, now_s)  # a refused command: the arm holds
                backend.command(verdict.target)
                if writer is not None:
                    _write_applied(writer, t_ns, step, controller, verdict, backend.status())
            obs = backend.observe()
            step += 1
        status = backend.status()
        success = bool(status.success) and not nonfinite
        failure = "non_finite_action" if nonfinite else status.failure
        if writer is not None:
            outcome = "success" if success else "failure"
            reason = "task criterion reached" if success else (failure or "failed")
            end_ns = base_time_ns + step * period_ns
            writer.write_event(end_ns, bf.EVENT_END, outcome, "simulator", reason)
            writer.finish(
                outcome, "simulator", success_step=status.success_step if success else None
            )
    except BaseException as exc:
        if writer is not None:
            writer.__exit__(type(exc), exc, exc.__traceback__)
        raise
    if writer is not None:
        writer.__exit__(None, None, None)
    return RolloutResult(
        episode_id=episode_id,
        success=success,
        steps=step,
        success_step=status.success_step if success else None,
        takeover_step=takeover_step,
        failure=failure,
        bag=None if bag_path is None else Path(bag_path),
        operator_reason=None if operator is None else operator.reason,
        takeovers=0 if operator is None else operator.takeovers,
        handbacks=0 if operator is None else len(operator.release_steps),
        suffix_steps=suffix_steps(tags),
        clamped_steps=clamped_steps,
        hold_steps=hold_steps,
    )


def _write_applied(
    writer: bf.EpisodeBagWriter,
    t_ns: int,
    step: int,
    controller: list[int],
    verdict: Any,
    status: Any,
) -> None:
    """The driver's ``applied_command`` of ``step`` (what :meth:`DriverNode._publish_state`
    publishes): the target sent, refused / clamped, and the simulator's success flag."""
    from arx_x5_driver.core.safety import REASON_VELOCITY

    clamped = verdict.accepted and verdict.reason == REASON_VELOCITY
    writer.write_command(
        t_ns + 1,
        step_index=step,
        controller=[bf.CONTROLLER_NONE] * len(controller) if verdict.hold else controller,
        action=verdict.target,
        hold_reason=verdict.reason if verdict.hold else "",
        applied=True,
        hold=verdict.hold,
        clamped=clamped,
        task_success=bool(status.done and status.success),
    )


def suffix_steps(tags: list[tuple[int, ...]]) -> int:
    """Policy steps after the last HUMAN or HANDBACK step (0 when the episode had none)."""
    last = -1
    for i, tag in enumerate(tags):
        if bf.CONTROLLER_HUMAN in tag or bf.CONTROLLER_HANDBACK in tag:
            last = i
    if last < 0:
        return 0
    return sum(bf.CONTROLLER_POLICY in tag for tag in tags[last + 1 :])


def _sample(
    policy: Any, obs: Any, use_env_state: bool, prompt: str, base_seed: int | None, step: int
) -> np.ndarray:
    seed = None if base_seed is None else base_seed * 100_003 + step
    chunk = policy.sample_actions(
        _proprio(obs, use_env_state), prompt, images=dict(obs.images) or None, seed=seed
    )
    return np.asarray(chunk, dtype=np.float32)

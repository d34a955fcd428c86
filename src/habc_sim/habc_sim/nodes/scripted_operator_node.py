"""The scripted operator as a node: a stand-in for the person at the joystick (sim bringups).

It acts **only** through what a person has: the joystick (``/joy``, as the standard ``joy``
node publishes it: deadman, per-arm takeover buttons, mark buttons) and the teleop command
topic (``/habc/teleop_command``, ``sensor_msgs/JointState``, what leader arms would send). It
watches the scene through the sim's privileged state (``/joint_states``, ``/habc/env_state``,
and the driver's ``/diagnostics`` for the task's own success flag, the way a person sees the
cube handed over) and runs :class:`~habc_sim.core.operator.ScriptedOperator`:

- each observation: the monitor + takeover model decide; under takeover the deadman is held
  (plus the takeover button of each taken arm unless all arms are taken) and the expert's
  action is published as the teleop command; once the scene is back on track the operator
  releases the deadman and the arbiter ramps control back to the policy (the same
  :class:`~habc_sim.core.operator.TakeoverModel` as in-process rollouts);
- ``/joy`` is published at ``joy_hz`` whatever happens (a joystick keeps reporting), and at
  once on every button change;
- ``force_takeover_step`` / ``release_after_steps`` script a takeover and a hand-back at known
  steps (tests, demos); ``mark_outcome`` presses mark success / failure when the episode ends.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import Float32MultiArray

from arx_x5_driver.core.robot import Observation, bimanual_action_names
from arx_x5_driver.nodes import declare
from habc_common import topics
from habc_msgs.msg import EpisodeEvent
from habc_sim.core.expert import ExpertConfig
from habc_sim.core.operator import OperatorConfig, ScriptedOperator

NODE_NAME = "scripted_operator"
ARMS = ("left", "right")
MARK_PRESS_TICKS = 5  # a button press lasts this many joystick messages


class ScriptedOperatorNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        d = declare
        self._task = d(self, "task", "transfer_cube", "transfer_cube | insertion")
        self._seed = int(d(self, "seed", 0, "seed of the takeover draw and expert noise"))
        self._episodes = 0
        config = OperatorConfig(
            intervention_rate=float(d(self, "intervention_rate", 0.5, "P(intervene)")),
            stall_steps=int(d(self, "stall_steps", 60, "steps without progress = stall")),
            grace_steps=int(d(self, "grace_steps", 20, "no signal in the first steps")),
            reaction_steps=int(d(self, "reaction_steps", 5, "steps from signal to takeover")),
            release=bool(d(self, "release", True, "hand back once back on track")),
            min_suffix_steps=int(
                d(
                    self,
                    "min_suffix_steps",
                    OperatorConfig.min_suffix_steps,
                    "keep control near the end",
                )
            ),
            max_takeovers=int(
                d(self, "max_takeovers", OperatorConfig.max_takeovers, "takeovers per episode")
            ),
            one_arm=bool(d(self, "one_arm", True, "take only the arm at fault")),
            pick_handback=str(
                d(
                    self,
                    "pick_handback",
                    OperatorConfig.pick_handback,
                    "a one-arm pick takeover hands back at the grasp | lift | auto (task's)",
                )
            ),
            handback_stall_steps=int(
                d(self, "handback_stall_steps", 0, "stall window after a hand-back (0: stall)")
            )
            or None,
            script=self._script(),
        )
        self._horizon = int(d(self, "episode_steps", 400, "the sim episode's step limit"))
        expert = ExpertConfig(noise_std=float(d(self, "noise_std", 0.0, "expert noise (m)")))
        arms = d(self, "takeover_arms", "auto", "auto | all | left | right")
        if arms not in ("auto", "all", *ARMS):
            raise ValueError(f"takeover_arms must be auto, all, left or right, got {arms!r}")
        self._auto_arms = arms == "auto"
        self._arms = tuple(arms in ("auto", "all", a) for a in ARMS)
        self._deadman = int(d(self, "joy.deadman", 4, "deadman button"))
        self._takeover_buttons = [int(b) for b in d(self, "joy.takeover_buttons", [6, 7], "")]
        self._mark_success = int(d(self, "joy.mark_success", 0, "mark success button"))
        self._mark_failure = int(d(self, "joy.mark_failure", 1, "mark failure button"))
        self._n_buttons = int(d(self, "joy.num_buttons", 11, "buttons of the pad"))
        self._n_axes = int(d(self, "joy.num_axes", 8, "axes of the pad"))
        self._mark_outcome = bool(d(self, "mark_outcome", True, "press mark when done"))
        joy_hz = float(d(self, "joy_hz", 50.0, "joystick publish rate (Hz)"))
        if joy_hz <= 0:
            raise ValueError(f"joy_hz must be > 0, got {joy_hz}")
        self._operator = ScriptedOperator.for_backend("sim", self._task, config, expert)
        self._action_names = list(bimanual_action_names(ARMS))
        self._env: np.ndarray | None = None
        self._step = -1  # -1: waiting for the first observation of an episode
        self._holding = False
        self._mark_button = -1
        self._mark_left = 0
        self._marked = False
        self._seed_key = ""  # the driver's episode seed (from /diagnostics)
        self._events_seen = False  # a recorder announces episodes: count steps from its start
        self._joy_pub = self.create_publisher(Joy, topics.JOY, 10)
        self._teleop_pub = self.create_publisher(
            JointState, d(self, "teleop_topic", topics.TELEOP_COMMAND, "teleop topic"), 10
        )
        # One observation per driver step: the queue holds 2 s of them, so an operator starved
        # of CPU for a moment catches up instead of losing steps (its step count, which scripted
        # takeovers are timed by, stays the driver's).
        self.create_subscription(JointState, topics.JOINT_STATES, self._on_joints, 100)
        self.create_subscription(Float32MultiArray, topics.ENV_STATE, self._on_env, 10)
        self.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diagnostics, 10)
        self._episode_sub = self.create_subscription(
            EpisodeEvent, topics.EPISODE_EVENT, self._on_episode, 10
        )
        self._obs_after = 0.0  # joint states stamped before the episode's start: not its scene
        self.create_timer(1.0 / joy_hz, self._publish_joy)
        self.get_logger().info(
            f"operator for {self._task}: intervention rate {config.intervention_rate}, forced "
            f"takeovers {config.script or 'none'}, hand-back {'on' if config.release else 'off'}"
        )

    def _script(self) -> tuple[tuple[int, int], ...]:
        """Scripted takeovers: ``script`` ([step, steps, step, steps, …]; steps -1 = to the
        end), plus the older pair ``force_takeover_step`` / ``release_after_steps``."""
        d = declare
        flat = [int(v) for v in d(self, "script", [-1], "[step, steps, …] forced takeovers")]
        if flat == [-1]:
            flat = []
        if len(flat) % 2:
            raise ValueError(f"script must hold (step, steps) pairs, got {flat}")
        pairs = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        self._force_step = int(d(self, "force_takeover_step", -1, "take over here (-1: never)"))
        self._release_after = int(
            d(self, "release_after_steps", -1, "release the deadman after (-1: never)")
        )
        if self._force_step >= 0:
            pairs.append((self._force_step, self._release_after))
        return tuple(sorted(pairs))

    # Joystick -----------------------------------------------------------------------------
    def _buttons(self) -> list[int]:
        b = [0] * self._n_buttons
        if self._holding:
            b[self._deadman] = 1
            if not all(self._arms):
                for held, button in zip(self._arms, self._takeover_buttons):
                    if held and 0 <= button < len(b):
                        b[button] = 1
        if self._mark_left > 0 and 0 <= self._mark_button < len(b):
            b[self._mark_button] = 1
        return b

    def _publish_joy(self) -> None:
        msg = Joy(axes=[0.0] * self._n_axes, buttons=self._buttons())
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = "joy"
        self._joy_pub.publish(msg)
        if self._mark_left > 0:
            self._mark_left -= 1

    def _set_holding(self, holding: bool) -> None:
        if holding != self._holding:
            self._holding = holding
            self._publish_joy()  # a button change goes out at once

    # Scene --------------------------------------------------------------------------------
    def _on_env(self, msg: Float32MultiArray) -> None:
        self._env = np.asarray(msg.data, dtype=np.float64)

    def _on_episode(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.EVENT_START:
            self._events_seen = True
            self._obs_after = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            self._env = None  # the next one, received after the start
            self._new_episode()

    def _drain_episode_events(self) -> None:
        """Take every episode event already delivered before acting on an observation: the
        executor may hand this node the new scene's joint states before the start event that
        came with them, and the operator must not act on the new scene with the previous
        episode's takeover (its command would be computed from the previous scene's plan)."""
        sub = self._episode_sub
        try:
            with sub.handle:
                while (taken := sub.handle.take_message(EpisodeEvent, False)) is not None:
                    self._on_episode(taken[0])
        except Exception as exc:  # an rclpy without take_message: the callback still runs
            self.get_logger().debug(f"episode event drain unavailable: {exc}")

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if not status.name.startswith("arx_x5_driver"):
                continue
            values = {kv.key: kv.value for kv in status.values}
            seed = values.get("seed")
            if seed is not None and self._seed_key and seed != self._seed_key:
                # The driver reset the scene. With a recorder, episodes (and the step count the
                # operator shares with the arbiter) run from its start event instead; the
                # periodic diagnostics may report the new seed after that event.
                self._seed_key = seed
                if not self._events_seen:
                    self._new_episode()
            elif seed is not None and not self._seed_key:
                self._seed_key = seed
            if values.get("episode_done") == "true" and self._mark_outcome and not self._marked:
                ok = values.get("episode_success") == "true"
                self._mark_button = self._mark_success if ok else self._mark_failure
                self._mark_left = MARK_PRESS_TICKS
                self._marked = True
                self._set_holding(False)
                self.get_logger().info(f"episode over: marking {'success' if ok else 'failure'}")

    def _new_episode(self) -> None:
        self._step = -1
        self._marked = False
        self._set_holding(False)

    def _on_joints(self, msg: JointState) -> None:
        self._drain_episode_events()
        if self._env is None or self._marked:
            return
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        if stamp and stamp < self._obs_after:
            return  # from before the episode's start: maybe the previous scene
        obs = Observation(
            joint_positions=np.asarray(msg.position, dtype=np.float64),
            joint_velocities=np.asarray(msg.velocity, dtype=np.float64),
            env_state=self._env,
            timestamp=stamp,
            step=max(self._step, 0),
        )
        if self._step < 0:
            # A fresh draw per episode: the takeover decision and the expert's noise vary
            # from episode to episode (one seed for all would decide every episode alike).
            self._episodes += 1
            self._operator.reset(
                obs, seed=self._seed * 100_003 + self._episodes, horizon=self._horizon
            )
            self._step = 0
        was_acting = self._holding
        command = self._operator.step(obs)
        self._step += 1
        acting = command.takeover and command.action is not None
        if was_acting and not acting:
            self.get_logger().info(f"releasing the deadman at step {self._step}")
        if acting and self._auto_arms:
            self._arms = tuple(command.mask)
        if acting:
            teleop = JointState(name=self._action_names)
            teleop.header.stamp = msg.header.stamp
            teleop.position = np.asarray(command.action, dtype=np.float64).tolist()
            self._teleop_pub.publish(teleop)  # the action first, then the deadman
        self._set_holding(acting)


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = ScriptedOperatorNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as exc:
        print(f"{NODE_NAME}: {exc}", file=sys.stderr)
        return 2
    except Exception:
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

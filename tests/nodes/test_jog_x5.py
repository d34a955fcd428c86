"""Joystick jog on the X5: the arbiter node with the shipped arx config (config/arbiter_arx.yaml:
jog on the X5's own kinematics) moves the taken-over arm's end effector along the stick.

The X5's SDK is the fake of ``tests/sim/test_arx_backend.py`` (its real Python API, a solver
whose forward kinematics is checkable by hand), installed for the node process as a module named
``arx5_interface`` on its ``PYTHONPATH``. The test plays the driver (hold position on
``/arx_x5_driver/measured_command``, named as the X5's joints) and the operator's pad
(deadman held, left stick forward, at the joy node's 20 Hz).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from habc_common import topics
from tests.conftest import REPO_ROOT
from tests.nodes.conftest import NodeProcess, RosClient
from tests.sim.test_arx_backend import X5_MAX, X5_MIN, fake_fk

pytestmark = [pytest.mark.ros]

FAKE_SDK = f"""
import sys
sys.path.insert(0, {str(REPO_ROOT)!r})
from tests.sim.test_arx_backend import fake_arx5_module
sys.modules[__name__] = fake_arx5_module()
"""
Q_LEFT = np.array([0.2, 0.6, 0.9, 0.1, 0.2, 0.3])
Q_RIGHT = np.array([-0.2, 0.5, 1.0, 0.0, 0.1, -0.3])
DEADMAN, STICK_X = 4, 1  # config/arbiter.yaml: joy.deadman, joy.jog_axes[0]


START = np.concatenate([Q_LEFT, [0.5], Q_RIGHT, [0.5]])


class PadRig:
    """The arbiter on the shipped arx config, the driver's hold position (50 Hz, named as the
    X5's joints) and the operator's pad (the joy node's 20 Hz), all played by the test."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str) -> None:
        from sensor_msgs.msg import JointState, Joy

        from arx_x5_driver.core.robot import X5_JOINTS, bimanual_action_names
        from habc_msgs.msg import ExecutedCommand

        self.arbiter = NodeProcess(
            "arbiter_node", env, log_dir, extra_params_files=("arbiter_arx.yaml",)
        )
        self.client = c = RosClient(name)
        self.pad = {"deadman": False, "x": 0.0}
        self.commands = c.record(ExecutedCommand, topics.EXECUTED_COMMAND, 200)
        names = list(bimanual_action_names(("left", "right"), X5_JOINTS))
        measured = c.node.create_publisher(JointState, topics.MEASURED_COMMAND, 10)
        joy = c.node.create_publisher(Joy, topics.JOY, 10)
        ticks = [0]

        def feed() -> None:
            measured.publish(JointState(name=names, position=START.tolist()))
            ticks[0] += 1
            if ticks[0] % 2 == 0:
                buttons, axes = [0] * 8, [0.0] * 6
                buttons[DEADMAN], axes[STICK_X] = int(self.pad["deadman"]), self.pad["x"]
                joy.publish(Joy(axes=axes, buttons=buttons))

        c.node.create_timer(0.02, feed)

    def close(self) -> None:
        self.client.close()
        self.arbiter.stop()


def test_pad_jog_moves_the_x5_arm_along_the_stick(ros_env: dict[str, str], tmp_path: Path) -> None:
    sdk_dir = tmp_path / "sdk"
    sdk_dir.mkdir()
    (sdk_dir / "arx5_interface.py").write_text(FAKE_SDK)
    env = dict(ros_env, PYTHONPATH=f"{sdk_dir}{os.pathsep}{ros_env.get('PYTHONPATH', '')}")
    rig = PadRig(env, tmp_path, "jog_x5_pad")
    try:
        arbiter, client, commands = rig.arbiter, rig.client, rig.commands
        client.spin_until(lambda: len(commands) > 10, 60.0, arbiter.log)
        assert "joystick jog on x5 kinematics" in arbiter.log()
        rig.pad.update(deadman=True, x=1.0)  # take both arms, full stick forward (+x)

        def human() -> list[Any]:
            return [m for _, m in commands if list(m.controller) == [2, 2]]

        client.spin_until(lambda: len(human()) > 50, 60.0, lambda: arbiter.log()[-2000:])
        jogged = [np.asarray(m.action, dtype=np.float64) for m in human()]
        first, last = jogged[0], jogged[-1]
        moved = fake_fk(last[0:6])[:3] - fake_fk(first[0:6])[:3]
        seconds = 0.02 * (len(jogged) - 1)  # 0.1 m/s at full stick, one tick per command
        assert moved[0] == pytest.approx(0.1 * seconds, rel=0.15)
        assert abs(moved[1]) < 0.01 and abs(moved[2]) < 0.01
        for a in jogged:  # within the X5's limits, from the SDK's robot config
            assert np.all(a[0:6] >= X5_MIN - 1e-6) and np.all(a[0:6] <= X5_MAX + 1e-6)
        # both arms jog the same stick: the right arm moves along its own base x too
        right = fake_fk(last[7:13])[:3] - fake_fk(first[7:13])[:3]
        assert right[0] == pytest.approx(moved[0], rel=0.15)
    finally:
        rig.close()


def test_without_the_sdk_the_arbiter_runs_and_a_pad_takeover_holds(
    ros_env: dict[str, str], tmp_path: Path
) -> None:
    """No X5 SDK on this machine: the arbiter says so and runs; a takeover without a teleop
    device holds the arm (NONE, at the hold position), it never moves."""
    rig = PadRig(dict(ros_env), tmp_path, "jog_x5_no_sdk")
    rig.pad.update(deadman=True, x=1.0)
    try:
        arbiter, client, commands = rig.arbiter, rig.client, rig.commands
        client.spin_until(lambda: len(commands) > 60, 60.0, lambda: arbiter.log()[-2000:])
        assert arbiter.alive()
        assert "joystick jog unavailable" in arbiter.log() and "arx5_interface" in arbiter.log()
        late = [m for _, m in commands[-30:]]
        assert all(list(m.controller) == [0, 0] for m in late), [m.hold_reason for m in late]
        for m in late:
            np.testing.assert_allclose(m.action, START, atol=1e-6)
    finally:
        rig.close()

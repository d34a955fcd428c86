"""Driver faults: hardware errors, frozen cameras, bad parameters, the persisted e-stop.

The hardware-fault and frozen-camera tests run the real ``DriverNode`` in this process with a
scripted backend in place of the simulator (the backend is the one thing a test cannot make
fail on demand otherwise); everything else is the installed driver as its own process.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from arx_x5_driver.core.robot import ArmBackend, Observation, RobotSpec, bimanual_action_names
from tests.nodes.conftest import SIM_HOME, NodeProcess, RosClient

pytestmark = [pytest.mark.ros]

PERIOD = 0.02
APPLIED = "/arx_x5_driver/applied_command"


class ScriptedBackend(ArmBackend):
    """Two 7-dim arms that follow every command; ``command`` raises after ``fail_after``
    commands (a CAN error), ``capture`` freezes its camera after ``freeze_after`` frames."""

    name: ClassVar[str] = "scripted"
    capture_shares_state: ClassVar[bool] = False  # its camera is read in the capture thread
    fail_after: ClassVar[int] = 10**9
    freeze_after: ClassVar[int] = 10**9

    def __init__(self, **fields: Any) -> None:
        self.q = SIM_HOME.astype(np.float64).copy()
        self.commands: list[np.ndarray] = []
        self.frames = 0
        self.connected = False
        names = bimanual_action_names()
        self._spec = RobotSpec(
            action_names=names,
            arm_slices=(("left", 0, 7), ("right", 7, 14)),
            action_low=(-3.0,) * 14,
            action_high=(3.0,) * 14,
            joint_names=names,
            cameras=("top",),
            control_hz=50.0,
        )
        CREATED.append(self)

    @property
    def spec(self) -> RobotSpec:
        return self._spec

    @property
    def is_connected(self) -> bool:
        return self.connected

    def connect(self) -> None:
        self.connected = True

    def disconnect(self) -> None:
        self.connected = False

    def reset(self, seed: int | None = None) -> Observation:
        return self.observe()

    def observe(self) -> Observation:
        return Observation(self.q.copy(), np.zeros(14))

    def capture(self) -> Observation:
        if self.frames < self.freeze_after:
            self.frames += 1
        img = np.full((8, 8, 3), self.frames % 256, dtype=np.uint8)
        return Observation(
            self.q.copy(), np.zeros(14), {"top": img}, frame_seq={"top": self.frames}
        )

    def command(self, action: Any) -> None:
        if len(self.commands) >= self.fail_after:
            raise RuntimeError("CAN bus: no ack from the left elbow motor")
        self.commands.append(np.asarray(action, dtype=np.float64).copy())
        self.q = self.commands[-1].copy()


CREATED: list[ScriptedBackend] = []


class InProcessDriver:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, **params: Any) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter
        from sensor_msgs.msg import Image

        from arx_x5_driver.nodes import driver_node
        from habc_msgs.msg import ExecutedCommand

        CREATED.clear()
        monkeypatch.setattr(driver_node, "make_backend", lambda name, **f: ScriptedBackend(**f))
        self.context = Context()
        rclpy.init(context=self.context)
        overrides = [
            Parameter("cameras", value="top"),
            Parameter("safety.workspace_enabled", value=False),
            Parameter("diagnostics_hz", value=20.0),
            *(Parameter(k, value=v) for k, v in params.items()),
        ]
        self.node = driver_node.DriverNode(context=self.context, parameter_overrides=overrides)
        self.client = rclpy.create_node("fault_test_client", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        self.diags: list[Any] = []
        self.images: list[Any] = []
        self.applied: list[Any] = []
        self.client.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, 50)
        self.client.create_subscription(Image, "/cameras/top/image_raw", self.images.append, 50)
        self.client.create_subscription(ExecutedCommand, APPLIED, self.applied.append, 50)
        self.cmd_pub = self.client.create_publisher(ExecutedCommand, "/habc/executed_command", 10)

    @property
    def backend(self) -> ScriptedBackend:
        return CREATED[-1]

    def state(self) -> str:
        return self.node._state_machine.current_state[1]

    def spin_for(self, seconds: float) -> None:
        import time

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.01)

    def command(self, action: np.ndarray) -> None:
        from habc_msgs.msg import ExecutedCommand

        msg = ExecutedCommand(controller=[1, 1])
        msg.action = np.asarray(action, dtype=np.float32).tolist()
        self.cmd_pub.publish(msg)

    def close(self) -> None:
        import rclpy

        self.node._release()
        self.executor.shutdown()
        self.node.destroy_node()
        self.client.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, ros_env: dict[str, str]) -> Iterator[Any]:
    for key, value in ros_env.items():
        monkeypatch.setenv(key, value)
    drivers: list[InProcessDriver] = []

    def make(**params: Any) -> InProcessDriver:
        drivers.append(InProcessDriver(monkeypatch, **params))
        return drivers[-1]

    yield make
    for d in drivers:
        d.close()


def _errors(diags: list[Any]) -> list[str]:
    from diagnostic_msgs.msg import DiagnosticStatus

    return [s.message for arr in diags for s in arr.status if s.level == DiagnosticStatus.ERROR]


def test_backend_fault_holds_reports_error_and_fails_activation(
    in_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ScriptedBackend, "fail_after", 5)
    d = in_process()
    assert d.state() == "active"
    d.spin_for(0.3)
    target = SIM_HOME.astype(np.float64).copy()
    for _ in range(20):
        target[0] += 0.01
        d.command(target)
        d.spin_for(PERIOD)
    d.spin_for(0.3)
    sent = d.backend.commands
    assert len(sent) == 5  # nothing reached the hardware after the fault
    assert "no ack from the left elbow motor" in d.node._fault
    errors = _errors(d.diags)
    assert any("backend fault" in m and "left elbow" in m for m in errors), errors
    assert d.state() == "inactive"  # left the active state ...
    d.node.trigger_activate()
    assert d.state() == "inactive"  # ... and cannot be activated again while faulted


def test_frozen_camera_is_not_published_and_is_an_error(
    in_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ScriptedBackend, "freeze_after", 6)
    d = in_process(camera_hz=30.0, camera_stale_s=0.3)
    d.spin_for(1.5)
    # 6 distinct frames, then the same frame number: re-publishing it would be a lie
    assert 4 <= len(d.images) <= 6 + int(0.3 * 30) + 1
    n = len(d.images)
    d.spin_for(0.5)
    assert len(d.images) == n
    assert any("camera frozen" in m and "top" in m for m in _errors(d.diags)), _errors(d.diags)
    assert d.backend.frames == 6


def _wait_exit(proc: NodeProcess, timeout: float = 60.0) -> int:
    import subprocess

    try:
        return proc.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.stop()
        raise AssertionError(f"{proc.name} is still running:\n{proc.log()[-2000:]}") from None


def test_arx_with_sim_safety_values_exits_naming_each_key(
    ros_env: dict[str, str], tmp_path: Path
) -> None:
    proc = NodeProcess(
        "driver_node",
        ros_env,
        tmp_path,
        extra_params_files=("driver_arx.yaml",),
        backend="arx",
        cameras="",
        estop_latch_file=str(tmp_path / "estop.latch"),
    )
    rc = _wait_exit(proc)
    log = proc.log()
    assert rc != 0, log
    assert "simulation's safety settings" in log and "driver_arx.yaml" in log
    for key in ("left_box_low", "left_box_high", "right_box_low", "right_box_high"):
        assert f"safety.{key}" in log
    assert "max_joint_velocit" not in log and "velocity_mode" not in log  # set by the file


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"sim__task": "insertin"}, "task must be one of ('transfer_cube', 'insertion')"),
        ({"image_reliability": "best-effort"}, "image_reliability must be one of"),
        ({"sim__max_steps": 0}, "max_steps must be a positive int"),
    ],
)
def test_bad_value_exits_non_zero_with_the_key_and_valid_values(
    ros_env: dict[str, str], tmp_path: Path, override: dict[str, Any], expected: str
) -> None:
    proc = NodeProcess("driver_node", ros_env, tmp_path, cameras="", **override)
    rc = _wait_exit(proc)
    assert rc != 0 and expected in proc.log(), proc.log()[-2000:]


@pytest.mark.sim
def test_estop_latch_survives_a_driver_restart(ros_env: dict[str, str], tmp_path: Path) -> None:
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool
    from std_srvs.srv import Trigger

    from habc_msgs.msg import ExecutedCommand

    latched = QoSProfile(
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
    latch = tmp_path / "run" / "estop.latch"
    c = RosClient("estop_restart_client")
    # An e-stop button publishing transient-local *before* the driver exists.
    button = c.node.create_publisher(Bool, "/estop", latched)
    button.publish(Bool(data=True))
    state = c.record(Bool, "/arx_x5_driver/estop_latched", latched)
    applied = c.record(ExecutedCommand, APPLIED, 200)
    cmd_pub = c.node.create_publisher(ExecutedCommand, "/habc/executed_command", 10)
    procs: list[NodeProcess] = []

    def start(tag: str) -> NodeProcess:
        procs.append(
            NodeProcess(
                "driver_node",
                ros_env,
                tmp_path,
                log_name=f"driver_{tag}",
                cameras="",
                estop_latch_file=str(latch),
            )
        )
        return procs[-1]

    try:
        first = start("first")
        c.spin_until(
            lambda: state and state[-1][1].data, 60.0, lambda: f"latch\n{first.log()[-2000:]}"
        )
        assert latch.read_text().strip() == "estop topic"
        c.node.destroy_publisher(
            button
        )  # the button is gone: only the file remembers the e-stop now
        first.signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        state.clear()
        second = start("second")
        c.spin_until(
            lambda: state and "still latched from before the restart" in second.log(),
            60.0,
            lambda: f"second driver\n{second.log()[-2000:]}",
        )
        assert state[-1][1].data is True  # the restarted driver comes up latched
        c.spin_until(lambda: cmd_pub.get_subscription_count() > 0, 30.0, "command subscription")
        msg = ExecutedCommand(controller=[1, 1])
        msg.action = (SIM_HOME + 0.01).tolist()
        n = len(applied)

        def answers() -> list[ExecutedCommand]:
            return [m for _, m in applied[n:] if m.hold_reason == "estop"]

        # Commands until the driver's answers are heard (the restarted driver's publisher is
        # discovered anew, late on a loaded machine).
        deadline = time.monotonic() + 30.0
        while len(answers()) < 10 and time.monotonic() < deadline:
            cmd_pub.publish(msg)
            c.spin_for(PERIOD)
        c.spin_for(0.2)
        assert answers() and all(m.hold for m in answers())
        assert all(m.hold for _, m in applied[n:])  # no command of the latched driver ran
        np.testing.assert_allclose(answers()[-1].action, SIM_HOME, atol=0.05)  # did not move
        res = c.call(Trigger, "/arx_x5_driver/reset_estop", Trigger.Request())
        assert res.success and "estop topic" in res.message
        assert not latch.exists()
        c.spin_until(lambda: state[-1][1].data is False, 10.0, "cleared latch")
    finally:
        for p in procs:
            p.stop()
        c.close()

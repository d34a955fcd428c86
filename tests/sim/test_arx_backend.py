"""The ARX X5 backend against fakes that follow the SDKs' real Python API.

The fakes mirror ``arx5_interface`` (real-stanford/arx5-sdk ``python/arx5_interface.pyi``:
``RobotConfigFactory.get_instance().get_config(model)``, ``ControllerConfigFactory
.get_instance().get_config(controller_type, joint_dof)``, ``Arx5JointController(robot_config,
controller_config, interface_name)``, ``JointState(pos, vel, torque, gripper_pos)``,
``EEFState(pose_6d, gripper_pos)`` …) and ``pyrealsense2`` (``pipeline``, ``config
.enable_device/enable_stream``, ``wait_for_frames``, ``poll_for_frames``,
``context().query_devices()``), and are injected through ``sys.modules``.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from typing import Any, ClassVar

import numpy as np
import pytest

from arx_x5_driver.core.config import ArxConfig

X5_MIN = np.array([-3.14, -0.05, -0.1, -1.6, -1.57, -2.0])
X5_MAX = np.array([2.618, 3.50, 3.20, 1.55, 1.57, 2.0])


class FakeRobotConfig:
    def __init__(self, model: str) -> None:
        self.robot_model = model
        self.joint_pos_min = X5_MIN.copy()
        self.joint_pos_max = X5_MAX.copy()
        self.joint_dof = 6
        self.gripper_width = 0.088
        self.urdf_path = f"/opt/arx5/models/{model}.urdf"


class FakeControllerConfig:
    def __init__(self, controller_type: str, joint_dof: int) -> None:
        self.controller_type = controller_type
        self.controller_dt = 0.002
        self.background_send_recv = False


class FakeRobotConfigFactory:
    _instance: FakeRobotConfigFactory | None = None

    @classmethod
    def get_instance(cls) -> FakeRobotConfigFactory:
        cls._instance = cls._instance or cls()
        return cls._instance

    def get_config(self, robot_model: str) -> FakeRobotConfig:
        if robot_model not in ("X5", "L5", "X5_umi", "L5_umi"):
            raise RuntimeError("Unknown robot model. Currently available: X5 L5")
        return FakeRobotConfig(robot_model)


class FakeControllerConfigFactory:
    _instance: FakeControllerConfigFactory | None = None

    @classmethod
    def get_instance(cls) -> FakeControllerConfigFactory:
        cls._instance = cls._instance or cls()
        return cls._instance

    def get_config(self, controller_type: str, joint_dof: int) -> FakeControllerConfig:
        if controller_type not in ("joint_controller", "cartesian_controller"):
            raise RuntimeError(f"unknown controller type {controller_type}")
        return FakeControllerConfig(controller_type, joint_dof)


class FakeJointState:
    def __init__(self, *args: Any) -> None:
        if len(args) == 1:  # JointState(dof)
            dof = int(args[0])
            self._pos, self._vel, self._torque = np.zeros(dof), np.zeros(dof), np.zeros(dof)
            self.gripper_pos = 0.0
        elif len(args) in (4, 6):  # (pos, vel, torque, gripper_pos[, gripper_vel, torque])
            self._pos, self._vel, self._torque = (np.array(a, dtype=np.float64) for a in args[:3])
            self.gripper_pos = float(args[3])
        else:
            raise TypeError(f"JointState(): incompatible constructor arguments {args}")
        self.gripper_vel = 0.0
        self.gripper_torque = 0.0
        self.timestamp = 0.0

    def pos(self) -> np.ndarray:
        return self._pos

    def vel(self) -> np.ndarray:
        return self._vel

    def torque(self) -> np.ndarray:
        return self._torque


class FakeEEFState:
    def __init__(self, *args: Any) -> None:
        self._pose = np.zeros(6) if not args else np.array(args[0], dtype=np.float64)
        self.gripper_pos = float(args[1]) if len(args) > 1 else 0.0

    def pose_6d(self) -> np.ndarray:
        return self._pose


class _FakeController:
    instances: ClassVar[list[_FakeController]] = []
    fail_interfaces: ClassVar[set[str]] = set()

    def __init__(self, robot_config: Any, controller_config: Any, interface_name: str) -> None:
        if interface_name in self.fail_interfaces:
            raise RuntimeError(f"socket can {interface_name}: No such device")
        self.robot_config = robot_config
        self.controller_config = controller_config
        self.interface_name = interface_name
        self.state = FakeJointState(np.zeros(6), np.zeros(6), np.zeros(6), 0.0)
        self.commands: list[Any] = []
        self.damping = False
        self.homed = 0
        _FakeController.instances.append(self)

    def get_joint_state(self) -> FakeJointState:
        return self.state

    def reset_to_home(self) -> None:
        self.homed += 1
        self.state = FakeJointState(np.zeros(6), np.zeros(6), np.zeros(6), 0.0)

    def set_to_damping(self) -> None:
        self.damping = True

    def get_robot_config(self) -> Any:
        return self.robot_config


class FakeJointController(_FakeController):
    def set_joint_cmd(self, cmd: FakeJointState) -> None:
        assert isinstance(cmd, FakeJointState)
        assert np.all(np.isfinite(cmd.pos())), "NaN reached the SDK"
        self.commands.append(cmd)
        self.state = FakeJointState(cmd.pos().copy(), np.zeros(6), np.zeros(6), cmd.gripper_pos)


class FakeCartesianController(_FakeController):
    def set_eef_cmd(self, cmd: FakeEEFState) -> None:
        assert isinstance(cmd, FakeEEFState)
        assert np.all(np.isfinite(cmd.pose_6d())), "NaN reached the SDK"
        self.commands.append(cmd)

    def get_eef_state(self) -> FakeEEFState:
        return FakeEEFState(np.zeros(6), 0.0)


L1, L2 = 0.3, 0.25  # link lengths of the fake solver's arm (m)


def fake_fk(q: np.ndarray) -> np.ndarray:
    """The fake solver's forward kinematics, checkable by hand: a 2-link arm that yaws about
    z by q0 and pitches by q1, q2 (planar in its yaw plane), wrist angles added to the pose.

    ``r = L1·cos q1 + L2·cos(q1 + q2)``, ``z = L1·sin q1 + L2·sin(q1 + q2)``,
    ``(x, y) = r·(cos q0, sin q0)``, ``(roll, pitch, yaw) = (q3 + q5, q1 + q2 + q4, q0)``.
    """
    q = np.asarray(q, dtype=np.float64)
    r = L1 * np.cos(q[1]) + L2 * np.cos(q[1] + q[2])
    z = L1 * np.sin(q[1]) + L2 * np.sin(q[1] + q[2])
    return np.array([r * np.cos(q[0]), r * np.sin(q[0]), z, q[3] + q[5], q[1] + q[2] + q[4], q[0]])


class FakeArx5Solver:
    """``Arx5Solver(urdf_path, joint_dof, joint_pos_min, joint_pos_max)`` with :func:`fake_fk`."""

    def __init__(self, urdf_path: str, joint_dof: int, pos_min: Any, pos_max: Any) -> None:
        assert urdf_path.endswith(".urdf") and joint_dof == 6
        self.urdf_path = urdf_path

    def forward_kinematics(self, joint_pos: Any) -> np.ndarray:
        q = np.asarray(joint_pos, dtype=np.float64)
        assert q.shape == (6,), q.shape
        return fake_fk(q)


def fake_arx5_module() -> types.ModuleType:
    mod = types.ModuleType("arx5_interface")
    mod.RobotConfigFactory = FakeRobotConfigFactory  # type: ignore[attr-defined]
    mod.ControllerConfigFactory = FakeControllerConfigFactory  # type: ignore[attr-defined]
    mod.Arx5JointController = FakeJointController  # type: ignore[attr-defined]
    mod.Arx5CartesianController = FakeCartesianController  # type: ignore[attr-defined]
    mod.JointState = FakeJointState  # type: ignore[attr-defined]
    mod.EEFState = FakeEEFState  # type: ignore[attr-defined]
    mod.Arx5Solver = FakeArx5Solver  # type: ignore[attr-defined]
    return mod


class _FakeFrame:
    def __init__(self, h: int, w: int, value: int) -> None:
        self._data = np.full((h, w, 3), value, dtype=np.uint8)

    def get_data(self) -> np.ndarray:
        return self._data

    def __bool__(self) -> bool:
        return True


class _FakeFrameset:
    def __init__(self, frame: _FakeFrame) -> None:
        self._frame = frame

    def get_color_frame(self) -> _FakeFrame:
        return self._frame


def fake_realsense_module(connected: tuple[str, ...]) -> types.ModuleType:
    rs = types.ModuleType("pyrealsense2")

    class stream:
        color = "color"

    class format:
        rgb8 = "rgb8"

    class camera_info:
        serial_number = "serial_number"

    class config:
        def __init__(self) -> None:
            self.serial = ""
            self.mode: tuple[Any, ...] = ()

        def enable_device(self, serial: str) -> None:
            self.serial = serial

        def enable_stream(self, s: str, w: int, h: int, f: str, fps: int) -> None:
            self.mode = (s, w, h, f, fps)

    class pipeline:
        started: ClassVar[list[pipeline]] = []

        def __init__(self, ctx: Any = None) -> None:
            self.running = False
            self.frames = 0

        def start(self, cfg: config) -> None:
            if cfg.serial not in connected:
                raise RuntimeError("No device connected")
            self.cfg = cfg
            self.running = True
            pipeline.started.append(self)

        def wait_for_frames(self, timeout_ms: int = 5000) -> _FakeFrameset:
            _, w, h, _, _ = self.cfg.mode
            return _FakeFrameset(_FakeFrame(h, w, 10))

        def poll_for_frames(self) -> _FakeFrameset:
            self.frames += 1
            _, w, h, _, _ = self.cfg.mode
            return _FakeFrameset(_FakeFrame(h, w, 10 + self.frames))

        def stop(self) -> None:
            self.running = False

    class _Device:
        def __init__(self, serial: str) -> None:
            self.serial = serial

        def get_info(self, info: str) -> str:
            return self.serial

    class context:
        def query_devices(self) -> list[_Device]:
            return [_Device(s) for s in connected]

    for name, obj in (
        ("stream", stream),
        ("format", format),
        ("camera_info", camera_info),
        ("config", config),
        ("pipeline", pipeline),
        ("context", context),
    ):
        setattr(rs, name, obj)
    return rs


@pytest.fixture
def fake_sdks(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    _FakeController.instances = []
    _FakeController.fail_interfaces = set()
    monkeypatch.setitem(sys.modules, "arx5_interface", fake_arx5_module())
    rs = fake_realsense_module(("111", "222", "333"))
    monkeypatch.setitem(sys.modules, "pyrealsense2", rs)
    return rs


def _backend(**fields: Any) -> Any:
    from arx_x5_driver.core.arx import ArxBackend

    return ArxBackend(ArxConfig(**fields))


def test_module_imports_no_sdk() -> None:
    code = (
        "import sys, arx_x5_driver.core.arx, arx_x5_driver.core.factory;"
        "bad=[m for m in ('arx5_interface','pyrealsense2') if m in sys.modules];"
        "assert not bad, bad"
    )
    from tests.conftest import REPO_ROOT

    env_path = str(REPO_ROOT / "src" / "arx_x5_driver")
    res = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": env_path},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr


def test_clear_error_when_sdk_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    from arx_x5_driver.core.arx import SdkMissingError

    monkeypatch.setitem(sys.modules, "arx5_interface", None)  # import raises ImportError
    robot = _backend()
    with pytest.raises(SdkMissingError, match="pip install arx5-interface"):
        robot.connect()
    assert not robot.is_connected


def test_clear_error_when_realsense_absent(
    fake_sdks: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    from arx_x5_driver.core.arx import SdkMissingError

    monkeypatch.setitem(sys.modules, "pyrealsense2", None)
    with pytest.raises(SdkMissingError, match="pyrealsense2"):
        _backend(camera_serials=(("top", "111"),)).connect()


def test_clear_error_when_arm_or_camera_missing(fake_sdks: types.ModuleType) -> None:
    from arx_x5_driver.core.arx import DeviceError

    _FakeController.fail_interfaces = {"can1"}
    with pytest.raises(DeviceError, match="right ARX X5 arm on CAN interface 'can1'"):
        _backend().connect()
    assert _FakeController.instances[0].damping, "the arm already opened is released"
    _FakeController.fail_interfaces = set()
    with pytest.raises(DeviceError, match="999"):
        _backend(camera_serials=(("top", "999"),)).connect()


def test_joint_commands_respect_limits_and_never_forward_nan(fake_sdks: types.ModuleType) -> None:
    with _backend() as robot:  # the X5's 5 rad/s at 50 Hz: 0.1 rad per command
        left, right = _FakeController.instances
        assert left.interface_name == "can0" and right.interface_name == "can1"
        assert left.controller_config.background_send_recv
        obs = robot.reset()
        assert left.homed == 1 and obs.joint_positions.shape == (14,)
        low, high = robot.joint_limits
        np.testing.assert_allclose(low[:6], X5_MIN)
        np.testing.assert_allclose(high[7:13], X5_MAX)

        a = np.zeros(14)
        a[1] = 0.05  # within limits and rate
        a[6] = 0.5
        robot.command(a)
        cmd = left.commands[-1]
        assert cmd.pos()[1] == pytest.approx(0.05)
        assert cmd.gripper_pos == pytest.approx(0.5 * 0.088)

        far = a.copy()
        far[0] = 10.0  # beyond the waist limit: clamped, then rate limited
        far[13] = 3.0  # gripper above 1: clamped
        for _ in range(80):
            robot.command(far)
        sent = np.array([c.pos() for c in left.commands])
        assert np.all(sent <= X5_MAX + 1e-9) and np.all(sent >= X5_MIN - 1e-9)
        assert np.all(np.abs(np.diff(sent[:, 0])) <= 0.1 + 1e-9), "rate limited"
        assert sent[-1, 0] == pytest.approx(X5_MAX[0])
        assert right.commands[-1].gripper_pos == pytest.approx(0.088)

        n = len(left.commands)
        nan = a.copy()
        nan[9] = np.nan
        with pytest.raises(ValueError, match="non-finite"):
            robot.command(nan)
        assert len(left.commands) == n and len(right.commands) == n
    assert left.damping and right.damping, "disconnect releases both arms"


def test_raise_mode_refuses_out_of_limit(fake_sdks: types.ModuleType) -> None:
    with _backend(out_of_limits="raise") as robot:
        a = np.zeros(14)
        a[2] = -1.0  # elbow min is -0.1
        with pytest.raises(ValueError, match="left_joint3"):
            robot.command(a)
        assert not _FakeController.instances[0].commands


def test_cartesian_mode_uses_eef_commands(fake_sdks: types.ModuleType) -> None:
    with _backend(controller="cartesian") as robot:
        assert robot.spec.action_names[:3] == ("left_x", "left_y", "left_z")
        a = np.array([0.3, 0.0, 0.2, 0.0, 0.0, 0.0, 1.0] * 2)
        a[2] = 5.0  # z beyond the workspace box
        robot.command(a)
        cmd = _FakeController.instances[0].commands[-1]
        assert isinstance(cmd, FakeEEFState)
        # clamped into the box, then rate limited from the measured pose (z = 0)
        assert cmd.pose_6d()[2] == pytest.approx(0.3 / 50)
        for _ in range(150):
            robot.command(a)
        cmd = _FakeController.instances[0].commands[-1]
        assert cmd.pose_6d()[2] == pytest.approx(0.6)


def test_cameras_stream_at_the_requested_size(fake_sdks: types.ModuleType) -> None:
    serials = (("top", "111"), ("left_wrist", "222"), ("right_wrist", "333"))
    with _backend(camera_serials=serials, image_size=(96, 128)) as robot:
        obs = robot.observe()
        assert set(obs.images) == {"top", "left_wrist", "right_wrist"}
        for img in obs.images.values():
            assert img.shape == (96, 128, 3) and img.dtype == np.uint8
        pipes = fake_sdks.pipeline.started  # type: ignore[attr-defined]
        assert [p.cfg.serial for p in pipes] == ["111", "222", "333"]
        assert pipes[0].cfg.mode == ("color", 640, 480, "rgb8", 30)
    assert not any(p.running for p in pipes)


def test_arx_config_validates() -> None:
    with pytest.raises(ValueError, match="must differ"):
        ArxConfig(left_interface="can0", right_interface="can0")
    with pytest.raises(ValueError, match="did you mean 'X5'"):
        ArxConfig(left_model="X6")
    with pytest.raises(ValueError, match="serial"):
        ArxConfig(camera_serials=(("top", ""),))
    importlib.import_module("arx_x5_driver.core.arx")


def test_fake_fk_by_hand() -> None:
    # q1 = 90°: link 1 straight up (z = L1); q2 = -90°: link 2 horizontal (r = L2).
    pose = fake_fk(np.array([0.0, np.pi / 2, -np.pi / 2, 0.0, 0.0, 0.0]))
    np.testing.assert_allclose(pose, [L2, 0.0, L1, 0.0, 0.0, 0.0], atol=1e-12)
    pose = fake_fk(np.array([np.pi / 2, 0.0, 0.0, 0.1, 0.2, 0.3]))
    np.testing.assert_allclose(pose, [0.0, L1 + L2, 0.0, 0.4, 0.2, np.pi / 2], atol=1e-12)


def test_cartesian_hold_is_the_measured_pose_and_activation_does_not_move(
    fake_sdks: types.ModuleType,
) -> None:
    """The hold target in cartesian mode is FK of the measured joints, not the joints; the
    driver's safety layer started from it and ticked silent sends exactly that pose."""
    from arx_x5_driver.core.safety import SafetyConfig, SafetyLayer, per_joint_velocity

    with _backend(controller="cartesian") as robot:
        left, right = _FakeController.instances
        q_left = np.array([0.2, 0.9, -0.6, 0.05, -0.1, 0.15])
        q_right = np.array([-0.1, 1.1, -0.9, 0.0, 0.2, -0.05])
        left.state = FakeJointState(q_left, np.zeros(6), np.zeros(6), 0.044)
        right.state = FakeJointState(q_right, np.zeros(6), np.zeros(6), 0.0)
        hold = robot.hold_position()
        np.testing.assert_allclose(hold[:6], fake_fk(q_left))
        np.testing.assert_allclose(hold[7:13], fake_fk(q_right))
        assert hold[6] == pytest.approx(0.5) and hold[13] == pytest.approx(0.0)
        assert not np.allclose(hold[:6], q_left)  # the joint angles are not a pose

        spec = robot.spec
        layer = SafetyLayer(
            SafetyConfig(
                action_names=spec.action_names,
                arm_slices=spec.arm_slices,
                low=spec.action_low,
                high=spec.action_high,
                max_velocity=per_joint_velocity(spec.arm_slices, [0.3] * 3 + [1.5] * 3, 1.0),
                control_period_s=0.02,
                velocity_mode="reject",
            )
        )
        layer.start(robot.hold_position(), 0.0)
        verdict = layer.tick(0.04)
        assert verdict is not None and verdict.hold
        robot.command(verdict.target)
        np.testing.assert_allclose(left.commands[-1].pose_6d(), fake_fk(q_left), atol=1e-12)
        np.testing.assert_allclose(right.commands[-1].pose_6d(), fake_fk(q_right), atol=1e-12)
        assert left.commands[-1].gripper_pos == pytest.approx(0.044)


def test_cartesian_commands_are_rate_limited(fake_sdks: types.ModuleType) -> None:
    with _backend(controller="cartesian", max_linear_velocity=0.25, max_angular_velocity=1.0) as r:
        left = _FakeController.instances[0]
        q = np.array([0.0, np.pi / 2, -np.pi / 2, 0.0, 0.0, 0.0])
        left.state = FakeJointState(q, np.zeros(6), np.zeros(6), 0.0)
        start = r.hold_position()  # left at (L2, 0, L1), rpy 0
        target = start.copy()
        target[0] += 0.1  # 10 cm at once
        target[5] = 3.0  # 3 rad of yaw at once
        r.command(target)
        sent = left.commands[-1].pose_6d()
        assert sent[0] - start[0] == pytest.approx(0.25 / 50)  # 5 mm per command
        assert sent[5] - start[5] == pytest.approx(1.0 / 50)  # 0.02 rad per command
        # yaw across ±pi goes the short way round
        wrap = r.hold_position()
        wrap[5] = np.pi - 0.005
        r._last_cmd = wrap.copy()
        other = wrap.copy()
        other[5] = -np.pi + 0.05  # 0.055 rad away through ±pi, not 6.23 rad back
        r.command(other)
        assert left.commands[-1].pose_6d()[5] == pytest.approx(np.pi - 0.005 + 0.02)


def test_joint_rate_limit_is_per_joint_x5(fake_sdks: types.ModuleType) -> None:
    with _backend() as robot:
        left = _FakeController.instances[0]
        robot.command(np.full(14, 0.5) * np.r_[np.ones(6), 0, np.ones(6), 0])
        sent = left.commands[-1].pos()
        np.testing.assert_allclose(sent, [0.1, 0.1, 0.11, 0.11, 0.1, 0.1])


def test_control_path_reads_no_camera_and_capture_reports_frame_numbers(
    fake_sdks: types.ModuleType,
) -> None:
    serials = (("top", "111"),)
    with _backend(camera_serials=serials, image_size=(8, 8)) as robot:
        pipe = fake_sdks.pipeline.started[-1]  # type: ignore[attr-defined]
        polls = pipe.frames
        state = robot.observe_state()
        assert state.images == {} and pipe.frames == polls  # the 50 Hz path polls nothing
        a = robot.capture()
        b = robot.capture()
        assert pipe.frames == polls + 2
        assert b.frame_seq["top"] == a.frame_seq["top"] + 1
        pipe.poll_for_frames = lambda: None  # frozen: no new frame arrives
        c = robot.capture()
        assert c.frame_seq["top"] == b.frame_seq["top"]
        np.testing.assert_array_equal(c.images["top"], b.images["top"])
        assert not robot.capture_shares_state


def test_x5_joints_carry_the_x5_names_the_arbiter_expects(fake_sdks: types.ModuleType) -> None:
    """On the X5 the joints are named as its SDK's model names them (joint1..joint6), not as the
    simulated ViperX's; the arbiter on backend:=arx reads its hold position by the same names."""
    import yaml

    from tests.conftest import REPO_ROOT

    with _backend() as robot:
        names = robot.spec.joint_names
        assert names[:7] == (*(f"left_joint{i}" for i in range(1, 7)), "left_gripper")
        assert names[7:] == (*(f"right_joint{i}" for i in range(1, 7)), "right_gripper")
        assert robot.spec.action_names == names  # joint mode
    arbiter = yaml.safe_load((REPO_ROOT / "config" / "arbiter_arx.yaml").read_text())
    assert tuple(arbiter["intervention_arbiter"]["ros__parameters"]["action_names"].split(",")) == (
        names
    )


def test_x5_kinematics_jog_moves_the_end_effector_along_the_stick(
    fake_sdks: types.ModuleType,
) -> None:
    """The X5 provides the jog's kinematics through its SDK's solver: FK is the solver's
    position, the joint limits its robot config's; a full +x stick for 0.5 s moves the left
    end effector 5 cm along its base x (0.1 m/s), the right arm not at all."""
    from arx_x5_driver.core.kinematics import jog_kinematics
    from habc_policy.core.jog import EndEffectorJog, JogConfig

    kin = jog_kinematics("x5", robot_model="X5")
    q = np.array([0.2, 0.6, 0.9, 0.1, 0.2, 0.3])  # inside the X5 limits
    np.testing.assert_allclose(kin.fk[0](q), fake_fk(q)[:3])  # the solver's x, y, z
    slices = ((0, 7), (7, 14))
    low, high = kin.action_limits((-9.0,) * 6 + (0.0,) + (-9.0,) * 6 + (0.0,), (9.0,) * 14, slices)
    np.testing.assert_allclose(low[:6], X5_MIN)
    np.testing.assert_allclose(high[7:13], X5_MAX)
    assert (low[6], high[6], low[13], high[13]) == (0.0, 9.0, 0.0, 9.0)  # grippers keep theirs
    jog = EndEffectorJog(
        JogConfig(arm_slices=slices, low=low, high=high, linear_speed=0.1, control_period_s=0.02),
        kin.fk,
    )
    start = np.concatenate([q, [0.5], q, [0.5]])
    jog.reset(start)
    for _ in range(25):
        a = jog.step([True, False], [1.0, 0.0, 0.0], gripper=0.0)
    moved = fake_fk(a[0:6])[:3] - fake_fk(q)[:3]
    assert moved[0] == pytest.approx(0.05, abs=0.002)
    assert abs(moved[1]) < 0.003 and abs(moved[2]) < 0.003
    np.testing.assert_allclose(a[7:], start[7:])
    with pytest.raises(ValueError, match="did you mean 'x5'"):
        jog_kinematics("x6")


def test_x5_kinematics_without_the_sdk_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from arx_x5_driver.core.kinematics import x5_kinematics

    monkeypatch.setitem(sys.modules, "arx5_interface", None)
    with pytest.raises(RuntimeError, match="arx5_interface"):
        x5_kinematics()

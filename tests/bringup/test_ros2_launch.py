"""``bringup.launch.py`` under the real ``launch`` / ``launch_ros`` (what ``ros2 launch`` runs).

The launch system is a system ROS's when one is sourced, else the vendored upstream sources
(``tests/bringup/real_launch.py``); without either the tests skip and say so. The launch runs
as its own process in a new session, so every node it starts is found by process group.

Checked, as ``habc-launch`` behaves: the sim graph comes up; killing a required node stops
the whole launch with a non-zero code; a bad argument value, an unknown argument and a
missing executable fail before any node starts; SIGINT leaves no process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bringup.real_launch import launch_env
from tests.conftest import REPO_ROOT
from tests.nodes.conftest import RosClient, make_checkpoint

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

LAUNCH_FILE = REPO_ROOT / "launch" / "bringup.launch.py"
RUNNER = """
import signal
import sys
# Ctrl-C as in a terminal: a test run started in the background (nohup, `&` in a script)
# hands its children SIGINT ignored, and launch's handler would then never hear it.
signal.signal(signal.SIGINT, signal.default_int_handler)
import launch
import launch.actions
from launch.launch_description_sources import PythonLaunchDescriptionSource

arguments = [tuple(a.split(":=", 1)) for a in sys.argv[2:]]
description = launch.LaunchDescription([
    launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(sys.argv[1]), launch_arguments=arguments
    )
])
service = launch.LaunchService()
service.include_launch_description(description)
sys.exit(service.run())
"""
NODE_EXECUTABLES = ("driver_node", "policy_server", "arbiter_node", "scripted_operator_node")


@pytest.fixture(scope="module")
def env(ros_env: dict[str, str]) -> dict[str, str]:
    found, source = launch_env(ros_env)
    if found is None:
        pytest.skip(source)
    print(f"launch_ros: {source}")
    return found


def group_processes(pgid: int) -> list[tuple[int, str]]:
    """``(pid, command line)`` of every live process in process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append((int(entry.name), cmdline))
    return out


class Launch:
    """One run of the launch file; output collected line by line."""

    def __init__(self, env: dict[str, str], *arguments: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(LAUNCH_FILE), *arguments],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.pgid = self.proc.pid
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def nodes(self) -> list[tuple[int, str]]:
        return [(pid, cmd) for pid, cmd in group_processes(self.pgid) if pid != self.proc.pid]

    def wait(self, timeout: float) -> int:
        """The launch's exit code, once its output is read to the end (the reader thread may
        still hold its last lines when the process has exited)."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"launch still running:\n{self.output[-4000:]}") from None
        self._reader.join(timeout=30)
        return rc

    def wait_group_empty(self, timeout: float = 20.0) -> list[tuple[int, str]]:
        deadline = time.monotonic() + timeout
        while (left := group_processes(self.pgid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.pgid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        for pid, _ in group_processes(self.pgid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._reader.join(timeout=5)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    make_checkpoint(run / "checkpoints" / "step_000000100")
    return run


@pytest.fixture
def launches() -> Iterator[list[Launch]]:
    started: list[Launch] = []
    yield started
    for launch in started:
        launch.close()


def _graph_args(run_dir: Path) -> list[str]:
    return [
        "learner:=false",
        f"run_dir:={run_dir}",
        f"policy_checkpoint:={run_dir / 'checkpoints' / 'step_000000100'}",
    ]


def _wait_up(launch: Launch, client: RosClient) -> None:
    from habc_msgs.msg import ExecutedCommand

    commands = client.record(ExecutedCommand, "/arx_x5_driver/applied_command")
    client.spin_until(
        lambda: len(commands) > 20,
        180.0,
        lambda: f"the driver executing commands\n{launch.output[-4000:]}",
    )
    running = " ".join(cmd for _, cmd in launch.nodes())
    for exe in (*NODE_EXECUTABLES, "episode_recorder"):
        assert exe in running, (exe, running)


def test_graph_comes_up_and_a_killed_required_node_stops_it_nonzero(
    env: dict[str, str], run_dir: Path, launches: list[Launch]
) -> None:
    launch = Launch(env, *_graph_args(run_dir))
    launches.append(launch)
    client = RosClient("launch_test_client")
    try:
        _wait_up(launch, client)
    finally:
        client.close()
    driver = next(pid for pid, cmd in launch.nodes() if "driver_node" in cmd)
    os.kill(driver, signal.SIGKILL)
    rc = launch.wait(60.0)
    assert rc != 0, launch.output[-3000:]
    assert "required node arx_x5_driver exited with code -9" in launch.output
    assert launch.wait_group_empty() == [], launch.output[-3000:]


def test_sigint_leaves_no_process(
    env: dict[str, str], run_dir: Path, launches: list[Launch]
) -> None:
    launch = Launch(env, *_graph_args(run_dir))
    launches.append(launch)
    client = RosClient("launch_sigint_client")
    try:
        _wait_up(launch, client)
    finally:
        client.close()
    assert len(launch.nodes()) >= 5
    launch.proc.send_signal(signal.SIGINT)  # Ctrl-C reaches ros2 launch
    launch.wait(60.0)
    assert launch.wait_group_empty() == [], launch.output[-3000:]


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (["task:=nonexistent"], "task:='nonexistent' is not one of"),
        (["backend:=ark"], "backend"),
        (["lerner:=false"], "unknown launch argument(s) ['lerner']"),
        (["operator:=joystick"], "executable 'joy_node' of package 'joy' not found"),
    ],
)
def test_bad_arguments_and_missing_executables_fail_before_any_node(
    env: dict[str, str],
    run_dir: Path,
    launches: list[Launch],
    arguments: list[str],
    reason: str,
) -> None:
    if "operator:=joystick" in arguments and _has_joy(env):
        pytest.skip("this ROS install has the joy package: nothing is missing")
    launch = Launch(env, *_graph_args(run_dir), *arguments)
    launches.append(launch)
    rc = launch.wait(60.0)
    assert rc != 0, launch.output[-3000:]
    assert reason in launch.output, launch.output[-3000:]
    assert "process started" not in launch.output  # no node was ever started
    assert launch.wait_group_empty(5.0) == []


def _has_joy(env: dict[str, str]) -> bool:
    return any(
        (Path(p) / "lib" / "joy" / "joy_node").exists()
        for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep)
        if p
    )


def test_arx_without_hardware_stops_the_launch_nonzero(
    env: dict[str, str], run_dir: Path, launches: list[Launch]
) -> None:
    """The driver refuses the real arms with sim safety values and exits; it is required. With
    the arx default (policy:=vision) it first refuses cameras without serials."""
    for policy, why in (
        ("policy:=state", "simulation's safety settings"),
        ("policy:=vision", "arx.camera_serials has 0 entries"),
    ):
        launch = Launch(env, *_graph_args(run_dir), "backend:=arx", "task:=fold_towel", policy)
        launches.append(launch)
        rc = launch.wait(120.0)
        assert rc != 0, launch.output[-3000:]
        assert why in launch.output, launch.output[-3000:]
        assert "required node arx_x5_driver exited with code 2" in launch.output
        assert launch.wait_group_empty() == [], launch.output[-3000:]

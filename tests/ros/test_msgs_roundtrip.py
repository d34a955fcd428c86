"""Every habc_msgs message and service, plus the standard messages the stack uses, round-trips
between two OS processes over real DDS (loopback only, a domain id of this test run's own)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros

ECHO = Path(__file__).with_name("roundtrip_echo.py")
TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def echo_process(ros_env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, str(ECHO)],
        env=ros_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield proc
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def node(echo_process: subprocess.Popen[str]) -> Iterator[Any]:
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("roundtrip_client", context=context)
    yield node
    node.destroy_node()
    rclpy.try_shutdown(context=context)


def _spin_until(node: Any, done: Callable[[], bool], what: str) -> None:
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {TIMEOUT_S} s waiting for {what}")
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.remove_node(node)


def _stamp(node: Any, sec: int, nanosec: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=sec, nanosec=nanosec)


def _messages() -> list[Any]:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from sensor_msgs.msg import CompressedImage, Image, JointState, Joy
    from std_msgs.msg import Header

    from habc_msgs.msg import ActionChunk, EpisodeEvent, ExecutedCommand

    rng = np.random.default_rng(7)
    h = Header(stamp=_stamp(None, 1_700_000_000, 123_456_789), frame_id="base_link")
    chunk = ActionChunk(
        header=h,
        checkpoint_id="ckpt-3f9a",
        learner_step=12_000,
        chunk_seq=2**40 + 5,
        horizon=50,
        action_dim=14,
        control_period=0.02,
        actions=rng.standard_normal(50 * 14).astype(np.float32),
    )
    command = ExecutedCommand(
        header=h,
        episode_id="ep-000042",
        step_index=317,
        controller=[ExecutedCommand.CONTROLLER_POLICY, ExecutedCommand.CONTROLLER_HUMAN],
        action=rng.standard_normal(14).astype(np.float32),
        hold=True,
        hold_reason="joystick_silent",
        checkpoint_id="ckpt-3f9a",
        chunk_seq=77,
        chunk_row=24,
        learner_step=-3,
    )
    event = EpisodeEvent(
        header=h,
        episode_id="ep-000042",
        event=EpisodeEvent.EVENT_END,
        outcome=EpisodeEvent.OUTCOME_FAILURE,
        marked_by="operator",
        task="transfer_cube",
        prompt="hand the red cube to the other arm",
        reason="cube dropped — ünïcode ok",
    )
    image = Image(
        header=h,
        height=480,
        width=640,
        encoding="rgb8",
        is_bigendian=0,
        step=640 * 3,
        data=rng.integers(0, 256, 480 * 640 * 3, dtype=np.uint8).tobytes(),
    )
    compressed = CompressedImage(header=h, format="jpeg", data=bytes(range(256)) * 40)
    joints = JointState(
        header=h,
        name=[f"left_j{i}" for i in range(7)] + [f"right_j{i}" for i in range(7)],
        position=rng.standard_normal(14).tolist(),
        velocity=rng.standard_normal(14).tolist(),
        effort=[],
    )
    joy = Joy(header=h, axes=[0.5, -1.0, 0.25], buttons=[1, 0, 0, 1])
    diag = DiagnosticArray(
        header=h,
        status=[
            DiagnosticStatus(
                level=DiagnosticStatus.WARN,
                name="arx_x5_driver: left arm",
                message="joint 3 near limit",
                hardware_id="arx-x5-left",
                values=[KeyValue(key="joint3_rad", value="2.91")],
            )
        ],
    )
    return [chunk, command, event, image, compressed, joints, joy, diag]


def _assert_same(sent: Any, got: Any, path: str = "") -> None:
    fields = getattr(type(sent), "get_fields_and_field_types", None)
    if fields is None:
        if (
            isinstance(sent, (list, tuple))
            and sent
            and hasattr(sent[0], "get_fields_and_field_types")
        ):
            assert len(sent) == len(got), path
            for i, (a, b) in enumerate(zip(sent, got)):
                _assert_same(a, b, f"{path}[{i}]")
            return
        a, b = np.asarray(sent), np.asarray(got)
        assert a.shape == b.shape, f"{path}: shape {a.shape} != {b.shape}"
        assert np.array_equal(a, b), f"{path}: {sent!r} != {got!r}"
        return
    for name in fields():
        _assert_same(getattr(sent, name), getattr(got, name), f"{path}.{name}")


def test_every_message_round_trips(node: Any) -> None:
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    for sent in _messages():
        name = type(sent).__name__
        received: list[Any] = []
        sub = node.create_subscription(type(sent), f"/roundtrip/out/{name}", received.append, qos)
        pub = node.create_publisher(type(sent), f"/roundtrip/in/{name}", qos)
        # Re-publish until the echo answers: discovery of a new pair takes a moment.
        last = 0.0

        def answered(pub: Any = pub, sent: Any = sent, received: list[Any] = received) -> bool:
            nonlocal last
            if not received and time.monotonic() - last > 0.25:
                pub.publish(sent)
                last = time.monotonic()
            return bool(received)

        _spin_until(node, answered, f"the echo of {name}")
        _assert_same(sent, received[0], name)
        node.destroy_publisher(pub)
        node.destroy_subscription(sub)


def _call(node: Any, srv_type: Any, name: str, request: Any) -> Any:
    client = node.create_client(srv_type, name)
    _spin_until(node, client.service_is_ready, f"service {name}")
    future = client.call_async(request)
    _spin_until(node, future.done, f"the response of {name}")
    node.destroy_client(client)
    return future.result()


def test_every_service_round_trips(node: Any) -> None:
    from habc_msgs.msg import EpisodeEvent
    from habc_msgs.srv import AnnounceCheckpoint, EndEpisode, StartEpisode

    res = _call(
        node,
        StartEpisode,
        "/roundtrip/start_episode",
        StartEpisode.Request(task="insertion", prompt="insert the peg", episode_id=""),
    )
    assert (res.success, res.episode_id, res.message) == (
        True,
        "ep-insertion",
        "insertion|insert the peg",
    )

    res = _call(
        node,
        EndEpisode,
        "/roundtrip/end_episode",
        EndEpisode.Request(
            episode_id="ep-7",
            outcome=EpisodeEvent.OUTCOME_SUCCESS,
            marked_by="operator",
            reason="12 chars …..",
        ),
    )
    assert (res.success, res.episode_id, res.num_steps, res.message) == (
        True,
        "ep-7",
        12,
        "operator",
    )

    res = _call(
        node,
        EndEpisode,
        "/roundtrip/end_episode",
        EndEpisode.Request(episode_id="ep-8", outcome=EpisodeEvent.OUTCOME_UNKNOWN),
    )
    assert res.success is False

    res = _call(
        node,
        AnnounceCheckpoint,
        "/roundtrip/announce_checkpoint",
        AnnounceCheckpoint.Request(
            checkpoint_id="ckpt-9", path="/ckpts/000900", sha256="ab" * 32, learner_step=900
        ),
    )
    assert (res.accepted, res.active_checkpoint_id, res.message) == (
        True,
        "ckpt-9",
        "/ckpts/000900@900",
    )


def test_echo_is_a_separate_process(echo_process: subprocess.Popen[str], node: Any) -> None:
    import os

    assert echo_process.poll() is None, "echo process died"
    assert echo_process.pid != os.getpid()
    names = {name for name, _ns in node.get_node_names_and_namespaces()}
    assert "roundtrip_echo" in names

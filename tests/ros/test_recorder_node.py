"""The episode recorder node over real DDS: bags per episode, outcome, crash recovery, disk."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from habc_common import bag_format as bf
from habc_learner.core.bag_reader import read_episode, read_episodes
from habc_learner.core.episode import HUMAN, POLICY, Outcome
from habc_learner.core.recorder import RecorderConfig, RecorderError, recover_partial_bags

pytestmark = pytest.mark.ros
TIMEOUT_S = 30.0


class Recorder:
    """An episode_recorder process whose output is collected line by line."""

    def __init__(self, ros_env: dict[str, str], bag_dir: Path, *extra: str) -> None:
        cmd = ["episode_recorder", "--ros-args", "-p", f"bag_dir:={bag_dir}"]
        cmd += ["-p", "cameras:=top", *extra]
        self.proc = subprocess.Popen(
            cmd, env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while "recording into" not in self.output:
            assert self.proc.poll() is None, f"recorder exited: {self.output}"
            assert time.monotonic() < deadline, f"recorder not ready: {self.output}"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGINT) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        return self.output


class Client:
    """The test side: publishes what the control path would and calls the services."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, JointState

        from habc_msgs.msg import EpisodeEvent, ExecutedCommand
        from habc_msgs.srv import EndEpisode, StartEpisode

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("recorder_test_client", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.cmd_pub = self.node.create_publisher(ExecutedCommand, bf.TOPIC_EXECUTED_COMMAND, qos)
        self.joint_pub = self.node.create_publisher(JointState, bf.TOPIC_JOINT_STATES, qos)
        self.image_pub = self.node.create_publisher(Image, bf.camera_topic("top"), qos)
        self.events: list[Any] = []
        self.node.create_subscription(EpisodeEvent, bf.TOPIC_EPISODE_EVENT, self.events.append, 10)
        self.start_cli = self.node.create_client(StartEpisode, "/habc/start_episode")
        self.end_cli = self.node.create_client(EndEpisode, "/habc/end_episode")
        self.StartEpisode, self.EndEpisode = StartEpisode, EndEpisode
        self.ExecutedCommand, self.JointState, self.Image = ExecutedCommand, JointState, Image

    def spin_until(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.executor.spin_once(timeout_sec=0.05)

    def call(self, client: Any, request: Any) -> Any:
        self.spin_until(client.service_is_ready, "the recorder's services")
        future = client.call_async(request)
        self.spin_until(future.done, "a service response")
        return future.result()

    def wait_for_subscribers(self) -> None:
        self.spin_until(
            lambda: (
                self.cmd_pub.get_subscription_count() > 0
                and self.joint_pub.get_subscription_count() > 0
                and self.image_pub.get_subscription_count() > 0
            ),
            "the recorder's subscriptions",
        )

    def publish_step(self, episode_id: str, step: int, controller: list[int]) -> None:
        js = self.JointState(name=[f"j{i}" for i in range(14)], position=[float(step)] * 14)
        self.joint_pub.publish(js)
        img = self.Image(height=2, width=3, encoding="rgb8", step=9, data=bytes([step % 256]) * 18)
        self.image_pub.publish(img)
        self._spin_for(0.01)  # the observation precedes the command it leads to
        cmd = self.ExecutedCommand(
            episode_id=episode_id,
            step_index=step,
            controller=controller,
            action=np.full(14, step, np.float32),
            checkpoint_id="ckpt-x",
            learner_step=42,
        )
        self.cmd_pub.publish(cmd)
        self._spin_for(0.01)

    def _spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.002)

    def close(self) -> None:
        import rclpy

        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture()
def client(ros_env: dict[str, str]) -> Iterator[Client]:
    c = Client()
    yield c
    c.close()


def _run_episode(client: Client, steps: int, takeover: range, outcome: int) -> str:
    from habc_msgs.msg import EpisodeEvent

    res = client.call(
        client.start_cli, client.StartEpisode.Request(task="transfer_cube", prompt="hand over")
    )
    assert res.success, res.message
    for t in range(steps):
        human = t in takeover
        client.publish_step(res.episode_id, t, [HUMAN if human else POLICY, POLICY])
    time.sleep(0.3)
    end = client.call(
        client.end_cli,
        client.EndEpisode.Request(outcome=outcome, marked_by="operator", reason="test"),
    )
    assert end.success, end.message
    assert end.num_steps == steps
    assert EpisodeEvent  # imported for the outcome constants used by callers
    return res.episode_id


def test_episodes_become_bags_with_authority_and_outcome(
    ros_env: dict[str, str], client: Client, tmp_path: Path
) -> None:
    from habc_msgs.msg import EpisodeEvent

    rec = Recorder(ros_env, tmp_path)
    try:
        rec.wait_ready()
        client.wait_for_subscribers()
        first = _run_episode(client, 30, range(10, 20), EpisodeEvent.OUTCOME_SUCCESS)
        second = _run_episode(client, 20, range(0), EpisodeEvent.OUTCOME_FAILURE)
        client.spin_until(lambda: len(client.events) >= 4, "four episode events")
    finally:
        rec.stop()
    ep = read_episode(tmp_path / first)
    assert ep.length == 30 and ep.outcome is Outcome.SUCCESS
    assert (ep.authority[10:20, 0] == HUMAN).all()
    assert (ep.authority[:10, 0] == POLICY).all() and (ep.authority[20:, 0] == POLICY).all()
    assert (ep.learner_steps == 42).all()
    np.testing.assert_array_equal(ep.proprio[:, 0], np.arange(30))  # joint state of each step
    assert ep.load_images("top", np.array([7]))[0, 0, 0, 0] == 7
    assert bf.read_custom_data(tmp_path / first)[bf.KEY_MARKED_BY] == "operator"
    assert read_episode(tmp_path / second).outcome is Outcome.FAILURE
    kinds = [(e.event, e.episode_id) for e in client.events]
    assert kinds == [(0, first), (1, first), (0, second), (1, second)]


def test_recorder_killed_mid_episode_keeps_earlier_bags(
    ros_env: dict[str, str], client: Client, tmp_path: Path
) -> None:
    from habc_msgs.msg import EpisodeEvent

    rec = Recorder(ros_env, tmp_path)
    try:
        rec.wait_ready()
        client.wait_for_subscribers()
        done = _run_episode(client, 15, range(0), EpisodeEvent.OUTCOME_SUCCESS)
        res = client.call(client.start_cli, client.StartEpisode.Request(task="t"))
        for t in range(10):
            client.publish_step(res.episode_id, t, [POLICY, POLICY])
        time.sleep(0.3)
    finally:
        rec.stop(signal.SIGKILL)
    partial = tmp_path / res.episode_id
    assert partial.is_dir()
    # Restart: the partial bag is flagged, the earlier one is intact.
    rec = Recorder(ros_env, tmp_path)
    try:
        rec.wait_ready()
    finally:
        out = rec.stop()
    assert "marked incomplete" in out
    assert not partial.exists() and (tmp_path / (res.episode_id + ".incomplete")).is_dir()
    episodes, report = read_episodes(tmp_path)
    assert [e.episode_id for e in episodes] == [done]
    assert [p.name for p, _ in report.skipped] == [res.episode_id + ".incomplete"]


def test_refuses_to_start_without_disk_space(ros_env: dict[str, str], tmp_path: Path) -> None:
    rec = Recorder(ros_env, tmp_path, "-p", "min_free_gb:=1000000.0")
    rec.proc.wait(timeout=30)
    out = rec.stop()
    assert rec.proc.returncode == 1
    assert "GiB free" in out and "need" in out


def test_recorder_core_refusals(tmp_path: Path) -> None:
    from habc_learner.core.recorder import EpisodeRecorder

    rec = EpisodeRecorder(RecorderConfig(bag_dir=tmp_path, min_free_bytes=0))
    with pytest.raises(RecorderError, match="no episode"):
        rec.end("success", "op", "", 0)
    ep = rec.start("t", "p", "ep-1", 1_000)
    with pytest.raises(RecorderError, match="still running"):
        rec.start("t", "p", "", 2_000)
    with pytest.raises(RecorderError, match="outcome"):
        rec.end("great", "op", "", 3_000)
    assert rec.end("aborted", "op", "", 3_000) == (ep, 0)
    with pytest.raises(RecorderError, match="already exists"):
        rec.start("t", "p", "ep-1", 4_000)
    assert recover_partial_bags(tmp_path) == []  # a closed (aborted) bag is complete


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system (tmpfs with a size limit): a disk that really fills (ENOSPC)."""
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_mid_episode_closes_the_bag_and_keeps_earlier_episodes(
    ros_env: dict[str, str], client: Client, small_disk: Path
) -> None:
    from habc_msgs.msg import EpisodeEvent

    rec = Recorder(ros_env, small_disk, "-p", "min_free_gb:=0.0")
    try:
        rec.wait_ready()
        client.wait_for_subscribers()
        first = _run_episode(client, 15, range(0), EpisodeEvent.OUTCOME_SUCCESS)
        res = client.call(client.start_cli, client.StartEpisode.Request(task="t"))
        assert res.success, res.message
        big = bytes(range(256)) * (96 * 128 * 3 // 256)  # 36 KiB per frame: fills 1 MiB fast

        def lost() -> bool:
            return any(
                e.episode_id == res.episode_id and e.outcome == EpisodeEvent.OUTCOME_ABORTED
                for e in client.events
            )

        for t in range(200):
            client.image_pub.publish(
                client.Image(height=96, width=128, encoding="rgb8", step=384, data=big)
            )
            client.publish_step(res.episode_id, t, [POLICY, POLICY])
            if lost():
                break
        client.spin_until(lost, "the recorder's aborted end event")
        assert rec.proc.poll() is None, rec.output  # the recorder lives on
        end = client.call(
            client.end_cli,
            client.EndEpisode.Request(outcome=EpisodeEvent.OUTCOME_SUCCESS, reason="test"),
        )
        assert not end.success and "was lost: disk full" in end.message, end.message
    finally:
        out = rec.stop()
    assert f"episode {res.episode_id} lost: disk full" in out
    assert not (small_disk / res.episode_id).exists()
    assert (small_disk / (res.episode_id + ".incomplete")).is_dir()
    episodes, report = read_episodes(small_disk)
    assert [e.episode_id for e in episodes] == [first]  # the earlier episode is intact
    assert episodes[0].length == 15
    assert [p.name for p, _ in report.skipped] == [res.episode_id + ".incomplete"]

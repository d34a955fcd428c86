"""Two robots' episode recorders (each in its own ROS domain, over real DDS) record into one
fleet root while a ``habc-learn --fleet`` job watches it: every closed bag is learned from
exactly once, a bag still being recorded is never read, a duplicate is reported, and each
round's report breaks success and takeovers down by robot."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.ros.test_recorder_node import Client, Recorder, _run_episode

pytestmark = pytest.mark.ros
TIMEOUT_S = 300.0


@pytest.fixture()
def second_domain() -> Iterator[int]:
    """A second ROS domain id no other habc test run holds (conftest's lock files)."""
    lock_dir = Path(tempfile.gettempdir()) / "habc_ros_domains"
    lock_dir.mkdir(exist_ok=True)
    mine = int(os.environ["ROS_DOMAIN_ID"])
    for domain in range(1, 101):
        if domain == mine:
            continue
        handle: IO[str] = open(lock_dir / f"{domain}.lock", "w")  # noqa: SIM115 - held below
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield domain
        finally:
            handle.close()
        return
    pytest.skip("no free second ROS domain id")


class Learner:
    """``habc-learn --fleet --watch`` as a process; its output collected line by line."""

    def __init__(self, root: Path, out: Path) -> None:
        cmd = [
            *(sys.executable, "-m", "habc_learner.learn", "--bag_dirs", f"[{root}]"),
            *("--out_dir", str(out), "--fleet", "true", "--watch", "true"),
            *("--min_new_episodes", "2", "--poll_period_s", "0.3", "--steps_per_round", "2"),
            *("--batch_size", "8", "--torch_threads", "1", "--progress", "false"),
            *("--policy.use_env_state", "false", "--policy.hidden_dim", "64"),
            *("--policy.feature_dim", "32", "--policy.num_blocks", "2"),
            *("--critic.hidden_dim", "32", "--critic.num_layers", "1"),
        ]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def rounds(self) -> list[str]:
        return [line for line in self.lines if line.startswith("habc-learn: round ")]

    def wait_for(self, what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not done():
            assert self.proc.poll() is None, f"learner exited: {self.output}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.output}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _client_in(domain: int) -> Client:
    saved = os.environ["ROS_DOMAIN_ID"]
    os.environ["ROS_DOMAIN_ID"] = str(domain)  # rclpy reads it when the context starts
    try:
        return Client()
    finally:
        os.environ["ROS_DOMAIN_ID"] = saved


def test_two_robots_record_into_one_root_while_a_learner_watches(
    ros_env: dict[str, str], second_domain: int, tmp_path: Path
) -> None:
    from habc_msgs.msg import EpisodeEvent

    ok, fail = EpisodeEvent.OUTCOME_SUCCESS, EpisodeEvent.OUTCOME_FAILURE
    root, out = tmp_path / "fleet", tmp_path / "learner"
    root.mkdir()
    env_b = dict(ros_env, ROS_DOMAIN_ID=str(second_domain))
    rec_a, rec_b = Recorder(ros_env, root / "arm_a"), Recorder(env_b, root / "arm_b")
    client_a, client_b = _client_in(int(ros_env["ROS_DOMAIN_ID"])), _client_in(second_domain)
    learner = Learner(root, out)
    try:
        for rec, client in ((rec_a, client_a), (rec_b, client_b)):
            rec.wait_ready()
            client.wait_for_subscribers()
        # Round 1: one episode per robot.
        a1 = _run_episode(client_a, 30, range(10, 20), ok)
        _run_episode(client_b, 20, range(0), fail)
        learner.wait_for("round 1", lambda: len(learner.rounds()) >= 1)
        first = learner.rounds()[0]
        assert "robot arm_a: 1 rollout(s), success 1/1 (100%), 1 takeover(s)" in first, first
        assert "robot arm_b: 1 rollout(s), success 0/1 (0%), 0 takeover(s)" in first, first

        # Robot a's next episode stays open while robot b records two: round 2 is b's alone.
        res = client_a.call(client_a.start_cli, client_a.StartEpisode.Request(task="t"))
        assert res.success, res.message
        live = root / "arm_a" / res.episode_id
        for t in range(15):
            client_a.publish_step(res.episode_id, t, [1, 1])
        _run_episode(client_b, 20, range(5, 8), ok)
        _run_episode(client_b, 20, range(0), ok)
        learner.wait_for("round 2", lambda: len(learner.rounds()) >= 2)
        second = learner.rounds()[1]
        assert "robot arm_a" not in second, second
        assert "robot arm_b: 2 rollout(s), success 2/2 (100%), 1 takeover(s)" in second, second
        state = json.loads((out / "learner_state.json").read_text())
        assert str(live.resolve()) not in state["consumed"] and not state["skipped"]
        assert live.is_dir() and not (live / "metadata.yaml").exists()  # still recording

        # A re-synced copy of a closed bag is a duplicate: reported, never learned from.
        shutil.copytree(root / "arm_a" / a1, root / "arm_a" / f"{a1}-copy")
        learner.wait_for("the duplicate", lambda: "duplicate episode" in learner.output)
        dup = [line for line in learner.lines if "duplicate episode" in line]
        assert dup[0].startswith(f"habc-learn: duplicate episode arm_a/{a1}: "), dup

        # The open episode ends; with one more of b's it makes round 3, read exactly once.
        end = client_a.call(
            client_a.end_cli,
            client_a.EndEpisode.Request(outcome=fail, marked_by="operator", reason="test"),
        )
        assert end.success, end.message
        _run_episode(client_b, 20, range(0), fail)
        learner.wait_for("round 3", lambda: len(learner.rounds()) >= 3)
        third = learner.rounds()[2]
        assert "robot arm_a: 1 rollout(s), success 0/1 (0%), 0 takeover(s)" in third, third
        assert "robot arm_b: 1 rollout(s), success 0/1 (0%), 0 takeover(s)" in third, third
    finally:
        learner.stop()
        for rec in (rec_a, rec_b):
            rec.stop()
        client_a.close()
        client_b.close()
    state = json.loads((out / "learner_state.json").read_text())
    assert state["rounds"] == 3 and len(state["consumed"]) == 6
    assert sorted(state["episodes"]) == sorted(
        f"{robot}/{p.name}"
        for robot in ("arm_a", "arm_b")
        for p in (root / robot).iterdir()
        if not p.name.endswith("-copy")
    )
    assert [k for k, why in state["skipped"].items() if "duplicate" in why] == [
        str((root / "arm_a" / f"{a1}-copy").resolve())
    ]

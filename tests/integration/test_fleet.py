"""Fleet ingest over real bags: <root>/<robot_id>/<episode>/, closed bags once, duplicates."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from habc_learner.core import fleet
from habc_learner.core.bag_reader import write_episode
from habc_learner.core.episode import HUMAN, POLICY, scenario_episode
from habc_learner.learn import LearnerJob, LearnerJobConfig


def _bag(root: Path, robot: str, name: str, scenario: str, episode_id: str, seed: int) -> Path:
    path = root / robot / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_episode(path, scenario_episode(scenario, seed=seed, length=80, episode_id=episode_id))
    return path


def test_count_takeovers_counts_onsets_of_human_control() -> None:
    P, H = POLICY, HUMAN
    authority = np.array([[P, P], [H, P], [H, H], [P, P], [P, H], [P, P]])
    assert fleet.count_takeovers(authority) == 2  # steps 1 and 4; step 2 continues the first
    assert fleet.count_takeovers(np.array([[H, P], [H, P], [P, P]])) == 1  # from t = 0
    assert fleet.count_takeovers(np.array([[P, P]])) == 0


def test_closed_bags_once_per_robot_duplicates_reported_live_bags_never_read(
    tmp_path: Path,
) -> None:
    root, out = tmp_path / "fleet", tmp_path / "learner"
    a1 = _bag(root, "arm_a", "ep-0001", "autonomous_success", "ep-0001", 1)
    _bag(root, "arm_a", "ep-0002", "two_takeovers", "ep-0002", 2)
    _bag(root, "arm_b", "ep-0001", "takeover_failure", "ep-0001", 3)  # same id, other robot
    _bag(root, "arm_b", "demo-1", "demo", "demo-1", 4)
    # A bag still being written: rosbag2 writes metadata.yaml only when it closes the bag.
    live = _bag(root, "arm_b", "ep-0002", "one_arm_takeover", "ep-0002", 5)
    (live / "metadata.yaml").rename(tmp_path / "live-metadata.yaml")
    (live / "data.mcap").write_bytes(b"half a recording")  # unreadable if anyone opened it

    config = LearnerJobConfig(
        bag_dirs=(root,),
        out_dir=out,
        fleet=True,
        min_new_episodes=1,
        steps_per_round=2,
        batch_size=16,
        progress=False,
    )
    job = LearnerJob(config)
    found = job.scan()
    assert sorted(e.episode_id for e in found.used) == [
        "arm_a/ep-0001",
        "arm_a/ep-0002",
        "arm_b/demo-1",
        "arm_b/ep-0001",
    ]
    assert found.skipped == [] and found.duplicates == []  # the live bag was not even opened
    assert {e.episode_id: e.robot_id for e in found.used}["arm_b/ep-0001"] == "arm_b"

    # The same episode once more (a re-synced copy): reported, never learned from twice.
    copy = root / "arm_a" / "ep-0001-resync"
    shutil.copytree(a1, copy)
    found = job.scan()
    assert found.used == []
    assert found.duplicates == [(copy.resolve(), "arm_a/ep-0001", str(a1.resolve()))]

    summary = job.run_round()
    assert summary.by_robot == (
        "robot arm_a: 2 rollout(s), success 2/2 (100%), 2 takeover(s) in 1 episode(s), 0 demo(s)",
        "robot arm_b: 1 rollout(s), success 0/1 (0%), 1 takeover(s) in 1 episode(s), 1 demo(s)",
    )
    assert "robot arm_b: 1 rollout(s)" in summary.line()
    # Windows carry the robot id (through their episode).
    robots = job.store.window_robot_ids()
    per_episode = {e.episode_id: e.robot_id for e in job.store.episodes}
    index = job.store.table.episode_index
    expected = np.array([per_episode[job.store.episodes[i].episode_id] for i in index])
    assert (robots == expected).all() and set(robots) == {"arm_a", "arm_b"}

    # The recorder closes the live bag: the next scan reads it, exactly once.
    (live / "data.mcap").unlink()
    shutil.rmtree(live)
    _bag(root, "arm_b", "ep-0002", "one_arm_takeover", "ep-0002", 5)
    assert [e.episode_id for e in job.scan().used] == ["arm_b/ep-0002"]
    assert job.scan().used == []
    job.run_round()
    job.close()

    # A restarted job remembers what it consumed and which bags were duplicates.
    again = LearnerJob(config)
    found = again.scan()
    assert found.used == [] and found.duplicates == [] and found.skipped == []
    assert len(again.store.episodes) == 5
    again.close()

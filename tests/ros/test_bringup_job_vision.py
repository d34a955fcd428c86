"""policy:=vision through the whole sim graph: cameras published, recorded, trained on and
served, with /habc/env_state never published (so never read) anywhere on that path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rosbags.rosbag2 import Reader

from habc_common import bag_format as bf
from habc_learner.core.bag_reader import read_episode

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]


def _topic_counts(bag: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with Reader(bag) as reader:
        for conn, _t, _raw in reader.messages():
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
    return counts


def test_vision_graph_trains_serves_and_records_one_round(
    ros_env: dict[str, str], tmp_path: Path
) -> None:
    from habc_learner.bringup_job import main
    from habc_policy.core.checkpoint import latest_checkpoint, load_policy

    out = tmp_path / "run"
    args = ["--out", str(out), "--policy", "vision", "--cameras", "top,left_wrist"]
    args += ["--image-size", "16", "--camera-size", "24", "32", "--demos", "3"]
    args += ["--sft-steps", "30", "--rounds", "1", "--episodes", "2", "--round-steps", "3"]
    args += ["--eval-episodes", "1", "--batch-size", "16", "--intervention-rate", "1.0"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    first, final = report["rounds"][0], report["rounds"][-1]
    # The learner's vision round was announced, verified and hot-swapped by the server.
    assert first["episodes"] == 2 and final["checkpoint_id"] != first["checkpoint_id"]
    assert final["learner_step"] == first["learner_step"] + 3
    served = load_policy(latest_checkpoint(out / "learner" / "checkpoints"))
    assert served.checkpoint_id == final["checkpoint_id"]
    cfg = served.config
    assert cfg.camera_names == ("top", "left_wrist") and cfg.image_size == (16, 16)
    assert cfg.proprio_dim == 14 and cfg.privileged_state_dim == 0  # joints only
    # The recorder stored the frames the policy saw; the driver never published env state
    # (the recorder subscribes to /habc/env_state, and got nothing).
    bags = sorted((out / "bags" / "rollouts").iterdir())
    assert len(bags) == 2
    for bag in bags:
        counts = _topic_counts(bag)
        steps = counts[bf.TOPIC_EXECUTED_COMMAND]
        assert counts.get(bf.TOPIC_ENV_STATE, 0) == 0
        assert counts[bf.camera_topic("top")] > steps / 3  # 30 Hz frames over 50 Hz ticks
        assert counts[bf.camera_topic("left_wrist")] > steps / 3
        ep = read_episode(bag, cameras=["top", "left_wrist"])
        assert ep.proprio_dim == 14 and ep.load_images("top", [0]).shape == (1, 24, 32, 3)
        assert ep.prompt.startswith("pick up the red cube")  # the prompt that was served
    # The learner decoded every bag it trained on once, into its cache.
    assert len(list((out / "learner" / "image_cache").iterdir())) == 3 + 2
    # habc-learn trains an image policy from the bags the graph recorded, as the node did.
    from habc_learner.learn import main as learn

    cli = ["--bags", str(out / "bags"), "--out", str(tmp_path / "cli"), "--method", "habc"]
    cli += ["--cameras", "top,left_wrist", "--image-size", "16", "--steps", "2"]
    assert learn([*cli, "--batch-size", "8", "--threads", "1", "--no-env-state"]) == 0
    assert load_policy(latest_checkpoint(tmp_path / "cli" / "checkpoints")).config.proprio_dim == 14
    log = (out / "launch.log").read_text()
    assert "image policy, cameras ['top', 'left_wrist']" in log
    assert "hot-swapped" in log

"""The demonstrations CLI writes episode bags that rosbags reads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from habc_common import bag_format as bf
from habc_sim.record_demos import main


def _read(bag: Path) -> tuple[dict[str, int], dict[str, list]]:
    counts: dict[str, int] = {}
    msgs: dict[str, list] = {}
    with AnyReader([bag], default_typestore=bf.typestore()) as reader:
        for conn, _, raw in reader.messages():
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
            msgs.setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    return counts, msgs


@pytest.mark.sim
def test_cli_writes_readable_episode_bags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demos"
    rc = main(
        [
            "--task",
            "transfer_cube",
            "-n",
            "2",
            "--out",
            str(out),
            "--seed",
            "4",
            "--cameras",
            "top",
            "--image-size",
            "24",
            "32",
            "--quiet",
        ]
    )
    assert rc == 0
    assert "2/2 successful demonstrations" in capsys.readouterr().out
    bags = sorted(out.iterdir())
    assert len(bags) == 2
    for bag in bags:
        custom = bf.read_custom_data(bag)
        counts, msgs = _read(bag)
        n = counts[bf.TOPIC_EXECUTED_COMMAND]
        assert n > 50
        assert counts[bf.TOPIC_JOINT_STATES] == n
        assert counts[bf.TOPIC_ENV_STATE] == n
        assert counts[bf.camera_topic("top")] == n
        assert counts[bf.TOPIC_EPISODE_EVENT] == 2
        cmds = msgs[bf.TOPIC_EXECUTED_COMMAND]
        assert [c.step_index for c in cmds] == list(range(n))
        assert all(list(c.controller) == [bf.CONTROLLER_HUMAN] * 2 for c in cmds)
        assert cmds[0].action.shape == (14,)
        stamps = [c.header.stamp.sec * 10**9 + c.header.stamp.nanosec for c in cmds]
        assert set(np.diff(stamps)) == {20_000_000}, "50 Hz control stamps"
        js = msgs[bf.TOPIC_JOINT_STATES][0]
        assert list(js.name)[:2] == ["left_waist", "left_shoulder"] and len(js.position) == 14
        img = msgs[bf.camera_topic("top")][0]
        assert (img.height, img.width, img.encoding) == (24, 32, "rgb8")
        assert len(img.data) == 24 * 32 * 3
        events = msgs[bf.TOPIC_EPISODE_EVENT]
        assert [e.event for e in events] == [bf.EVENT_START, bf.EVENT_END]
        assert events[1].outcome == bf.OUTCOME_CODES["success"]
        assert custom[bf.KEY_OUTCOME] == "success"
        assert custom[bf.KEY_NUM_STEPS] == str(n)
        assert custom[bf.KEY_SUCCESS_STEP] == str(n - 1)
        assert custom[bf.KEY_SOURCE] == "demo" and custom[bf.KEY_TASK] == "transfer_cube"
        assert custom[bf.KEY_ARMS] == "left:0:7,right:7:14"
        assert custom[bf.KEY_COMPLETE] == "true"


@pytest.mark.sim
def test_failed_demos_are_written_as_failures(tmp_path: Path) -> None:
    out = tmp_path / "fail"
    rc = main(["--task", "insertion", "-n", "1", "--out", str(out), "--max-steps", "30", "--quiet"])
    assert rc == 0
    (bag,) = out.iterdir()
    counts, msgs = _read(bag)
    assert counts[bf.TOPIC_EXECUTED_COMMAND] == 30
    assert msgs[bf.TOPIC_EPISODE_EVENT][-1].outcome == bf.OUTCOME_CODES["failure"]
    custom = bf.read_custom_data(bag)
    assert custom[bf.KEY_OUTCOME] == "failure" and custom[bf.KEY_SUCCESS_STEP] == ""


@pytest.mark.sim
def test_cli_metaworld_and_bad_arguments(tmp_path: Path) -> None:
    out = tmp_path / "mw"
    assert (
        main(
            [
                "--backend",
                "metaworld",
                "--task",
                "reach-v3",
                "-n",
                "1",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    (bag,) = out.iterdir()
    _, msgs = _read(bag)
    assert msgs[bf.TOPIC_EXECUTED_COMMAND][0].action.shape == (4,)
    assert list(msgs[bf.TOPIC_EXECUTED_COMMAND][0].controller) == [bf.CONTROLLER_HUMAN]
    assert main(["--task", "transfer_cube", "--out", str(out), "--cameras", "topp"]) == 2
    assert main(["--task", "transfer_cub", "--out", str(out)]) == 2

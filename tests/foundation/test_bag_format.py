"""The episode bag format: real rosbag2 (MCAP) directories written and read back with rosbags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from habc_common import bag_format as bf

META = bf.EpisodeMeta(
    episode_id="ep-000001",
    task="transfer_cube",
    prompt="hand the cube over",
    source="rollout",
    arms=(("left", 0, 7), ("right", 7, 14)),
)


def _write_steps(w: bf.EpisodeBagWriter, n: int) -> None:
    for t in range(n):
        t_ns = 1_000_000_000 + t * 20_000_000
        cmd = w.msg(
            bf.MSGTYPE_EXECUTED_COMMAND,
            header=bf.header(t_ns),
            episode_id=META.episode_id,
            step_index=t,
            controller=np.array([bf.CONTROLLER_POLICY, bf.CONTROLLER_HUMAN], dtype=np.uint8),
            action=np.full(14, t, dtype=np.float32),
            hold=False,
            hold_reason="",
            checkpoint_id="ckpt-1",
            chunk_seq=t // 25,
            chunk_row=t % 25,
            learner_step=900,
            clamped=False,
            task_success=False,
        )
        w.write(bf.TOPIC_EXECUTED_COMMAND, bf.MSGTYPE_EXECUTED_COMMAND, t_ns, cmd)
        w.count_step()


def test_written_bag_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "ep-000001"
    with bf.EpisodeBagWriter(path, META) as w:
        _write_steps(w, 5)
        w.finish("success", "simulator", success_step=4)

    store = bf.typestore()
    custom = bf.read_custom_data(path)
    with Reader(path) as reader:
        (conn,) = reader.connections
        assert conn.msgtype == bf.MSGTYPE_EXECUTED_COMMAND
        # The definition travels with the bag, so ros2 bag / Foxglove can decode it.
        assert "CONTROLLER_HUMAN" in conn.msgdef.data
        msgs = [store.deserialize_cdr(raw, conn.msgtype) for _, _, raw in reader.messages()]
    assert custom[bf.KEY_OUTCOME] == "success"
    assert custom[bf.KEY_COMPLETE] == "true"
    assert custom[bf.KEY_SUCCESS_STEP] == "4"
    assert custom[bf.KEY_NUM_STEPS] == "5"
    assert bf.decode_arms(custom[bf.KEY_ARMS]) == META.arms
    assert [m.step_index for m in msgs] == [0, 1, 2, 3, 4]
    assert msgs[3].action.tolist() == [3.0] * 14
    assert msgs[3].controller.tolist() == [1, 2]
    assert msgs[4].header.stamp.sec == 1 and msgs[4].header.stamp.nanosec == 80_000_000


def test_writer_that_dies_leaves_an_incomplete_aborted_bag(tmp_path: Path) -> None:
    path = tmp_path / "ep-crash"
    with pytest.raises(RuntimeError), bf.EpisodeBagWriter(path, META) as w:
        _write_steps(w, 3)
        raise RuntimeError("robot fell over")
    custom = bf.read_custom_data(path)
    assert custom[bf.KEY_COMPLETE] == "false"
    assert custom[bf.KEY_OUTCOME] == "aborted"
    assert "RuntimeError" in custom[bf.KEY_MARKED_BY]


def test_bad_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="source must be one of"):
        bf.EpisodeMeta("e", "t", "p", "teleop", (("left", 0, 7),))
    with pytest.raises(ValueError, match="malformed arm spec"):
        bf.decode_arms("left:0")
    with bf.EpisodeBagWriter(tmp_path / "e", META) as w, pytest.raises(ValueError, match="outcome"):
        w.finish("great", "me")
    with pytest.raises(FileExistsError):
        bf.EpisodeBagWriter(tmp_path / "e", META)
    assert bf.camera_topic("top", compressed=True) == "/cameras/top/image_raw/compressed"

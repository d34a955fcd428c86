"""The export's schema without LeRobot: code tables, the labels sidecar, the import mapping,
and the CLI's error when there is no LeRobot environment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from habc_bridge import lerobot_cli
from habc_bridge.core import dataset_schema as S
from habc_bridge.core import frame_labels as FL
from habc_common import bag_format as bf
from habc_learner.core.episode import scenario_episode
from habc_learner.core.labeling import LabelingConfig, Source


def test_code_tables_match_the_messages_and_the_learner() -> None:
    assert S.AUTHORITY_CODES == {
        "none": bf.CONTROLLER_NONE,
        "policy": bf.CONTROLLER_POLICY,
        "human": bf.CONTROLLER_HUMAN,
        "handback": bf.CONTROLLER_HANDBACK,
    }
    assert S.OUTCOME_CODES == bf.OUTCOME_CODES
    assert FL.source_names() == S.SOURCE_CODES
    assert S.code_name(S.AUTHORITY_CODES, 2) == "human"
    with pytest.raises(ValueError, match="code 7 is not one of"):
        S.code_name(S.AUTHORITY_CODES, 7)


def test_table_labels_by_hand_and_sidecar_round_trip(tmp_path: Path) -> None:
    # takeover_failure, 60 steps: policy 0..17, human 18..32, policy 33..59, failure.
    ep = scenario_episode("takeover_failure", seed=0, length=60)
    demo = scenario_episode("demo", seed=1, length=60, episode_id="demo-1")
    labels = FL.table_labels([ep, demo], ["a", "b"], LabelingConfig(horizon=50, min_human_steps=10))
    src = labels[0].source
    assert src[0] == Source.INTERVENTION  # 15 human steps in the first 50
    assert src[40] == Source.ROLLOUT_FAILURE  # post-takeover policy window of a failure
    assert np.all(labels[0].weight[src == Source.ROLLOUT_FAILURE] == 0)
    assert np.all(labels[1].source == Source.DEMO)
    # w̃: intervention and demo windows 1, everything else here 0 -> unit mean already
    w_all = np.concatenate([lab.weight for lab in labels])
    assert set(np.unique(w_all).tolist()) == {0.0, 1.0}
    S.write_labels(tmp_path, labels, [("bad", "incomplete")], {"weights_from": "table"})
    back, skipped, info = S.read_labels(tmp_path)
    assert skipped == [("bad", "incomplete")] and info == {"weights_from": "table"}
    for a, b in zip(labels, back, strict=True):
        assert (a.bag, a.episode_id) == (b.bag, b.episode_id)
        for name in S.LABEL_ARRAYS:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_column_mapping_errors_name_the_fix() -> None:
    feats = {
        "action": {"dtype": "float32", "shape": (7,)},
        "observation.state": {"dtype": "float32", "shape": (7,)},
        "observation.images.front": {"dtype": "video", "shape": (8, 8, 3)},
    }
    with pytest.raises(ValueError, match=r"'action' has 7 dims, the mapping reads indices"):
        S.ColumnMapping().check(feats)
    with pytest.raises(ValueError, match="one source index for each of the X5's 14"):
        S.ColumnMapping.from_dict({"action": {"index": [0, 1, 2]}})
    with pytest.raises(ValueError, match=r"unknown mapping keys \['actions'\]"):
        S.ColumnMapping.from_dict({"actions": {}})
    ok = S.ColumnMapping.from_dict(
        {
            "action": {"index": [0, 1, 2, 3, 4, 5, 6] * 2},
            "cameras": {"top": "observation.images.front"},
        }
    )
    ok.check(feats)
    with pytest.raises(ValueError, match="not an image/video column"):
        S.ColumnMapping(
            action_index=tuple([0] * 14), cameras=(("top", "observation.state"),)
        ).check(feats)


def test_cli_without_lerobot_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("HABC_LEROBOT_VENV", str(tmp_path / "nowhere"))
    assert lerobot_cli.export_main(["--bags", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no LeRobot environment" in capsys.readouterr().err
    assert lerobot_cli.train_main(["--help"]) == 2
    assert "scripts/setup_lerobot.sh" in capsys.readouterr().err

"""Episode bags -> LeRobotDataset v3 -> LeRobot's own reader -> episode bags, in the LeRobot
environment (.venv-lerobot): actions, authority, outcomes, labels, weights and images agree;
bad bags are listed; a foreign dataset maps to the X5 or is refused with a clear error."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from habc_bridge import lerobot_cli
from habc_bridge.core import dataset_schema as S
from habc_bridge.core import frame_labels as FL
from habc_learner.core.bag_reader import read_episodes
from habc_learner.core.critic import CriticConfig
from habc_learner.core.labeling import LabelingConfig, Source
from habc_learner.core.methods import get_method
from habc_learner.core.replay import ReplayStore
from habc_learner.core.trainer import Trainer, TrainerConfig
from habc_policy.core.configuration_flow import FlowPolicyConfig
from tests.bridge.conftest import BAG_CAMERAS as CAMS
from tests.bridge.conftest import lerobot_python

pytestmark = [pytest.mark.timeout(900)]

SCRIPTS = Path(__file__).parent / "lerobot_env"


@pytest.fixture(scope="module")
def lerobot_env() -> Path:
    return lerobot_python()


def read_back(python: Path, dataset: Path, tmp: Path) -> tuple[dict[str, np.ndarray], dict]:
    out = tmp / f"read_{dataset.name}.npz"
    proc = subprocess.run(
        [str(python), str(SCRIPTS / "read_dataset.py"), str(dataset), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out, allow_pickle=False) as npz:
        cols = {k: npz[k] for k in npz.files}
    return cols, json.loads(out.with_suffix(".json").read_text())


def test_export_read_import_round_trip(
    lerobot_env: Path, bags: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    dataset = tmp_path / "ds"
    assert lerobot_cli.export_main(["--bags", str(bags), "--out", str(dataset), "--no-video"]) == 0
    printed = capfd.readouterr().out
    assert "5 episode bag(s) used, 1 skipped" in printed
    assert "skipped zz-broken: incomplete" in printed
    meta = json.loads((dataset / "meta" / S.META_FILE).read_text())
    assert [s["bag"].endswith("zz-broken") for s in meta["skipped"]] == [True]
    assert meta["authority_codes"] == S.AUTHORITY_CODES
    assert meta["source_codes"] == FL.source_names()  # one table, the learner's

    episodes, _report = read_episodes(bags, use_env_state=False)
    labels = FL.table_labels(
        episodes, [str(bags / e.episode_id) for e in episodes], LabelingConfig(50, 10)
    )
    cols, doc = read_back(lerobot_env, dataset, tmp_path)
    assert doc["num_episodes"] == 5 and doc["fps"] == 50
    assert doc["last_chunk_shape"] == [8, 14] and doc["last_chunk_pad"][1:] == [True] * 7
    for e, (ep, lab) in enumerate(zip(episodes, labels, strict=True)):
        lo, hi = doc["episodes"][e]
        np.testing.assert_array_equal(cols["action"][lo:hi], ep.actions)
        np.testing.assert_array_equal(cols["observation.state"][lo:hi], ep.proprio)
        np.testing.assert_array_equal(cols[S.COL_AUTHORITY][lo:hi], ep.authority)
        assert set(cols[S.COL_OUTCOME][lo:hi].tolist()) == {S.OUTCOME_CODES[ep.outcome.value]}
        np.testing.assert_array_equal(cols[S.COL_SOURCE][lo:hi], lab.source)
        np.testing.assert_array_equal(cols[S.COL_WEIGHT][lo:hi], lab.weight)
        assert doc["strings"]["task"][lo] == ep.prompt
        assert doc["strings"]["habc.checkpoint_id"][lo:hi] == [str(c) for c in ep.checkpoint_ids]
        top = np.rint(cols["observation.images.cam_high"][lo:hi] * 255).astype(np.uint8)
        np.testing.assert_array_equal(
            top.transpose(0, 2, 3, 1), ep.load_images("top", np.arange(ep.length))
        )
    # The table's weights, by hand: demo and intervention windows 1, successful rollout windows
    # 1, failed and pre-takeover (unlabeled) windows 0; unit mean over the valid ones.
    source, weight = cols[S.COL_SOURCE], cols[S.COL_WEIGHT]
    for code in (Source.ROLLOUT_FAILURE, Source.UNLABELED):
        assert (source == code).any() and np.all(weight[source == code] == 0)
    assert np.all(weight[source == Source.DEMO] == 1.0)
    assert np.all(cols[S.COL_GATE] == 1.0) and np.all(np.isnan(cols[S.COL_P_V]))

    back = tmp_path / "bags_back"
    assert lerobot_cli.import_main([str(dataset), "--out", str(back)]) == 0
    again, report = read_episodes(back, use_env_state=False)
    assert not report.skipped
    assert [e.episode_id for e in again] == [e.episode_id for e in episodes]
    for ep, ep2 in zip(episodes, again, strict=True):
        np.testing.assert_array_equal(ep2.actions, ep.actions)
        np.testing.assert_array_equal(ep2.proprio, ep.proprio)
        np.testing.assert_array_equal(ep2.authority, ep.authority)
        assert ep2.outcome is ep.outcome and ep2.is_demonstration == ep.is_demonstration
        assert ep2.success_step == ep.success_step and ep2.prompt == ep.prompt
        assert list(ep2.checkpoint_ids) == list(ep.checkpoint_ids)
        for cam in CAMS:
            steps = np.arange(ep.length)
            np.testing.assert_array_equal(ep2.load_images(cam, steps), ep.load_images(cam, steps))


@pytest.fixture(scope="module")
def learner_checkpoint(bags: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HABC learner checkpoint (3 steps, warmup 0 so the gate is live) on these bags."""
    policy = FlowPolicyConfig(
        horizon=50,
        action_dim=14,
        proprio_dim=15,
        camera_names=CAMS,
        image_size=(32, 32),
        cnn_channels=(8, 16),
        feature_dim=32,
        hidden_dim=32,
        num_blocks=1,
        time_embed_dim=16,
        prompt_dim=8,
        prompt_buckets=64,
    )
    config = TrainerConfig(
        method=dataclasses.replace(get_method("habc"), name="habc_nowarmup", warmup_steps=0),
        policy=policy,
        critic=CriticConfig(hidden_dim=32, num_layers=1),
        batch_size=16,
        steps_per_round=3,
        progress=False,
        checkpoint_dir=str(tmp_path_factory.mktemp("learner") / "ckpt"),
    )
    episodes, _ = read_episodes(bags, cameras=CAMS)
    store = ReplayStore(config.replay_config())
    store.add_episodes(episodes)
    summary = Trainer(config, store).run_round()
    assert summary.checkpoint is not None
    return Path(summary.checkpoint)


def test_export_with_learner_checkpoint_carries_its_critic_weights(
    lerobot_env: Path, bags: Path, learner_checkpoint: Path, tmp_path: Path
) -> None:
    dataset = tmp_path / "ds_critic"
    args = ["--bags", str(bags), "--out", str(dataset), "--checkpoint", str(learner_checkpoint)]
    assert lerobot_cli.export_main(args) == 0  # video (AV1 through PyAV), the default
    episodes, _ = read_episodes(bags, cameras=CAMS)
    want, info = FL.critic_labels(
        episodes, [str(bags / e.episode_id) for e in episodes], learner_checkpoint
    )
    cols, doc = read_back(lerobot_env, dataset, tmp_path)
    assert doc["features"]["observation.images.cam_high"] == "video"
    meta = json.loads((dataset / "meta" / S.META_FILE).read_text())
    assert meta["labels"]["weights_from"] == "critic"
    assert meta["labels"]["checkpoint_id"] == info["checkpoint_id"]
    gate = np.concatenate([w.gate for w in want])
    weight = np.concatenate([w.weight for w in want])
    source = np.concatenate([w.source for w in want])
    np.testing.assert_allclose(cols[S.COL_GATE], gate, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cols[S.COL_WEIGHT], weight, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(cols[S.COL_SOURCE], source)
    np.testing.assert_array_equal(cols["action"], np.concatenate([e.actions for e in episodes]))
    # The critic's gate is live (not the table's g = 1), in (0, 2); Eq. 8: unit mean over the
    # valid frames; failed and unlabeled windows weigh 0.
    success = source == Source.ROLLOUT_SUCCESS
    assert np.all((gate[success] > 0) & (gate[success] < 2)) and np.std(gate[success]) > 0
    assert abs(weight[weight > 0].mean() - 1.0) < 1e-5
    assert np.all(weight[(source == Source.ROLLOUT_FAILURE) | (source == Source.UNLABELED)] == 0)
    assert np.all(np.isfinite(cols[S.COL_P_V]))


def test_foreign_dataset_mapping(lerobot_env: Path, tmp_path: Path, capfd: Any) -> None:
    foreign = tmp_path / "foreign"
    proc = subprocess.run(
        [str(lerobot_env), str(SCRIPTS / "make_foreign.py"), str(foreign)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert lerobot_cli.import_main([str(foreign), "--out", str(tmp_path / "no")]) == 2
    err = capfd.readouterr().err
    assert "action column 'action' has 16 dims" in err and "action.index" in err

    mapping = tmp_path / "mapping.json"
    mapping.write_text(
        json.dumps(
            {
                "action": {"key": "action", "index": list(range(2, 16))},
                "state": {"index": list(range(2, 16))},
                "cameras": {"top": "observation.images.front"},
            }
        )
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"action": {"index": list(range(3, 17))}}))
    assert (
        lerobot_cli.import_main(
            [str(foreign), "--out", str(tmp_path / "no"), "--mapping", str(bad)]
        )
        == 2
    )
    assert "reads indices" in capfd.readouterr().err

    out = tmp_path / "demos"
    assert (
        lerobot_cli.import_main([str(foreign), "--out", str(out), "--mapping", str(mapping)]) == 0
    )
    demos, report = read_episodes(out, use_env_state=False)
    assert len(demos) == 2 and not report.skipped
    for e, ep in enumerate(demos):
        t = np.arange(6)[:, None]
        np.testing.assert_array_equal(ep.actions, 100 * e + 10 * t + np.arange(2, 16))
        assert ep.is_demonstration and ep.outcome.value == "success"
        assert np.all(ep.authority == S.AUTHORITY_CODES["human"])
        assert ep.prompt == f"foreign task {e}"
        np.testing.assert_array_equal(
            ep.load_images("top", np.arange(6))[:, 0, 0, 0], 40 * e + 20 * np.arange(6)
        )
    # usable as SFT demonstrations: habc's own trainer learns from them
    config = TrainerConfig(
        method="sft",
        policy=FlowPolicyConfig(
            horizon=50,
            action_dim=14,
            proprio_dim=14,
            camera_names=("top",),
            image_size=(24, 24),
            cnn_channels=(8, 16),
            feature_dim=32,
            hidden_dim=32,
            num_blocks=1,
            time_embed_dim=16,
            prompt_dim=8,
            prompt_buckets=64,
        ),
        batch_size=4,
        steps_per_round=2,
        progress=False,
        checkpoint_dir=str(tmp_path / "sft"),
    )
    store = ReplayStore(config.replay_config())
    store.add_episodes(demos)
    assert store.source_counts()["demo"] == 12
    summary = Trainer(config, store).run_round()
    assert summary.checkpoint is not None and np.isfinite(summary.means["loss/actor"])

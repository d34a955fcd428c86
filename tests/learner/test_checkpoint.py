"""Checkpoint I/O: round trip, atomicity, corrupted / mismatched checkpoints rejected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from habc_policy.core import checkpoint as ckpt
from habc_policy.core.configuration_flow import FlowPolicyConfig
from habc_policy.core.modeling_flow import FlowPolicy
from habc_policy.core.normalize import NormalizationStats, Normalizer


@pytest.fixture
def saved(
    tmp_path: Path, tiny_policy_config: FlowPolicyConfig
) -> tuple[Path, FlowPolicy, Normalizer]:
    torch.manual_seed(0)
    policy = FlowPolicy(tiny_policy_config)
    p, d = tiny_policy_config.proprio_dim, tiny_policy_config.action_dim
    normalizer = Normalizer(
        NormalizationStats(np.arange(p, dtype=np.float32), np.full(p, 2.0)),
        NormalizationStats(np.full(d, 0.5), np.full(d, 0.1)),
    )
    path = tmp_path / "ckpts" / ckpt.checkpoint_name(1200)
    ckpt.save_policy(path, policy, normalizer, learner_step=1200, extra_manifest={"method": "habc"})
    return path, policy, normalizer


def test_round_trip(saved: tuple[Path, FlowPolicy, Normalizer]) -> None:
    path, policy, normalizer = saved
    loaded = ckpt.load_policy(path)
    assert loaded.learner_step == 1200 and loaded.manifest["method"] == "habc"
    assert loaded.config == policy.config
    assert len(loaded.checkpoint_id) == 16
    for k, v in policy.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    assert np.array_equal(loaded.normalizer.action.std, normalizer.action.std)
    assert not loaded.model.training
    # Only safetensors and JSON on disk: nothing to unpickle.
    assert sorted(p.name for p in path.iterdir()) == [
        "manifest.json",
        "model.safetensors",
        "normalizer.safetensors",
    ]
    assert not list(path.parent.glob(".*tmp*"))


def test_sample_actions_from_loaded_policy(saved: tuple[Path, FlowPolicy, Normalizer]) -> None:
    path, _, _ = saved
    loaded = ckpt.load_policy(path)
    q = np.zeros(15, dtype=np.float32)
    a = loaded.sample_actions(q, "fold the towel", seed=0)
    b = loaded.sample_actions(q, "fold the towel", seed=0)
    assert a.shape == (50, 14) and a.dtype == np.float32 and np.array_equal(a, b)
    batch = loaded.sample_actions(np.zeros((3, 15)), "fold the towel", seed=0)
    assert batch.shape == (3, 50, 14)
    with pytest.raises(ValueError, match=r"proprio must be \[15\]"):
        loaded.sample_actions(np.zeros(4), "x")


def test_corrupted_file_rejected(saved: tuple[Path, FlowPolicy, Normalizer]) -> None:
    path, _, _ = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=r"sha256 mismatch for 'model\.safetensors'"):
        ckpt.load_policy(path)


def test_manifest_hash_mismatch_rejected(saved: tuple[Path, FlowPolicy, Normalizer]) -> None:
    path, _, _ = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["content_sha256"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError, match="content_sha256"):
        ckpt.load_policy(path)


def test_missing_file_and_manifest_rejected(
    saved: tuple[Path, FlowPolicy, Normalizer], tmp_path: Path
) -> None:
    path, _, _ = saved
    (path / "normalizer.safetensors").unlink()
    with pytest.raises(
        ckpt.CheckpointError, match=r"'normalizer\.safetensors' listed in the manifest is missing"
    ):
        ckpt.load_policy(path)
    with pytest.raises(ckpt.CheckpointError, match=r"no manifest\.json"):
        ckpt.load_policy(tmp_path)


def test_shape_mismatch_rejected(
    saved: tuple[Path, FlowPolicy, Normalizer], tmp_path: Path
) -> None:
    _, policy, normalizer = saved
    other = FlowPolicyConfig.from_dict({**policy.config.to_dict(), "hidden_dim": 32})
    # A self-consistent checkpoint (valid hashes) whose config does not match its weights.
    bad = tmp_path / "bad"
    ckpt.write_checkpoint(
        bad,
        {
            "model.safetensors": policy.state_dict(),
            "normalizer.safetensors": normalizer.state_dict(),
        },
        manifest={"policy_config": other.to_dict(), "learner_step": 3},
    )
    with pytest.raises(ckpt.CheckpointError, match="has shape"):
        ckpt.load_policy(bad)


def test_write_is_atomic_and_refuses_to_clobber(saved: tuple[Path, FlowPolicy, Normalizer]) -> None:
    path, policy, normalizer = saved
    with pytest.raises(FileExistsError):
        ckpt.save_policy(path, policy, normalizer, learner_step=1200)

    class Boom(RuntimeError):
        pass

    class Exploding(dict):
        def items(self):  # fails half-way through the write
            raise Boom

    target = path.parent / "step_x"
    with pytest.raises(Boom):
        ckpt.write_checkpoint(
            target, {"a.safetensors": {"x": torch.zeros(1)}, "b.safetensors": Exploding()}
        )
    assert not target.exists()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_latest_pointer(tmp_path: Path, saved: tuple[Path, FlowPolicy, Normalizer]) -> None:
    path, _, _ = saved
    assert ckpt.latest_checkpoint(path.parent) is None
    ckpt.update_latest(path.parent, path.name)
    assert ckpt.latest_checkpoint(path.parent) == path
    ckpt.update_latest(path.parent, "step_missing")
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.latest_checkpoint(path.parent)

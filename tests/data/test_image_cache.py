"""The learner's image cache over real episode bags, and the train-time augmentations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from habc_learner.core.bag_reader import read_episode, write_episode
from habc_learner.core.episode import POLICY, Episode
from habc_learner.core.image_cache import ImageCache, bag_content_hash
from habc_learner.core.replay import ReplayConfig, ReplayStore
from habc_policy.core.images import random_crop, random_shift, resize_rgb

T = 12


def _episode(episode_id: str, seed: int, prompt: str = "hand the cube over") -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(
        episode_id=episode_id,
        task_id="transfer_cube",
        prompt=prompt,
        timestamps=5.0 + 0.02 * np.arange(T),
        proprio=rng.standard_normal((T, 14 + 7)).astype(np.float32),  # joints + env state
        actions=rng.standard_normal((T, 14)).astype(np.float32),
        authority=np.full((T, 2), POLICY, np.uint8),
        checkpoint_ids=np.array(["c"] * T, dtype=object),
        learner_steps=np.full(T, 10),
        outcome="success",
        success_step=T - 2,
        arm_slices=((0, 7), (7, 14)),
    )


def _frames(seed: int, shape: tuple[int, int] = (24, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (T, *shape, 3), dtype=np.uint8)


def test_frames_decoded_once_resized_and_served_without_the_bag(tmp_path: Path) -> None:
    top, wrist = _frames(1), _frames(2)
    bag = tmp_path / "bags" / "ep-a"
    write_episode(bag, _episode("ep-a", 0), joint_dim=14, images={"top": top, "wrist": wrist})
    cache = ImageCache(tmp_path / "cache")
    ep = read_episode(bag, cameras=["top", "wrist"], image_cache=cache, image_size=(16, 20))
    assert cache.decoded == 1
    steps = np.array([0, 7, 11, 7])
    want = np.stack([resize_rgb(top[s], (16, 20)) for s in steps])
    np.testing.assert_array_equal(ep.load_images("top", steps), want)
    np.testing.assert_array_equal(
        ep.load_images("wrist", steps), np.stack([resize_rgb(wrist[s], (16, 20)) for s in steps])
    )
    # One raw uint8 file per camera: N·h·w·3 bytes, N the camera's frames in the bag.
    entry = cache.entry_dir(bag_content_hash(bag), (16, 20))
    assert (entry / "top.u8").stat().st_size == T * 16 * 20 * 3
    assert json.loads((entry / "entry.json").read_text())["frames"] == {"top": T, "wrist": T}
    # A second read (a restarted learner) finds the entry: nothing decoded again.
    cache2 = ImageCache(tmp_path / "cache")
    read_episode(bag, cameras=["top", "wrist"], image_cache=cache2, image_size=(16, 20))
    assert cache2.decoded == 0
    # Sampling never reopens the bag: delete it and the frames still come from the cache.
    shutil.rmtree(bag)
    np.testing.assert_array_equal(ep.load_images("top", steps), want)


def test_the_cache_requires_a_size() -> None:
    with pytest.raises(ValueError, match="image_size"):
        read_episode("nowhere", cameras=["top"], image_cache=ImageCache("/tmp/habc-unused"))


def test_a_rewritten_bag_gets_a_new_entry_and_the_old_one_goes(tmp_path: Path) -> None:
    bag = tmp_path / "ep-a"
    cache = ImageCache(tmp_path / "cache")
    write_episode(bag, _episode("ep-a", 0), images={"top": _frames(1)})
    first = bag_content_hash(bag)
    read_episode(bag, cameras=["top"], image_cache=cache, image_size=(16, 16))
    shutil.rmtree(bag)
    new_frames = _frames(5)
    write_episode(bag, _episode("ep-a", 0), images={"top": new_frames})
    assert bag_content_hash(bag) != first
    ep = read_episode(bag, cameras=["top"], image_cache=cache, image_size=(16, 16))
    assert cache.decoded == 2
    np.testing.assert_array_equal(
        ep.load_images("top", [3])[0], resize_rgb(new_frames[3], (16, 16))
    )
    assert not cache.entry_dir(first, (16, 16)).exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        cache.entry_dir(bag_content_hash(bag), (16, 16)).name
    ]


def _shift_reference(img: np.ndarray, dy: int, dx: int, pad: int) -> np.ndarray:
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return padded[dy : dy + img.shape[0], dx : dx + img.shape[1]]


def test_random_shift_is_pad_and_crop_with_edge_replication() -> None:
    # 300 samples: every one of the 49 (dy, dx) offsets occurs, the extremes included.
    images = np.random.default_rng(0).integers(0, 256, (300, 5, 6, 3), dtype=np.uint8)
    pad = 3
    out = random_shift(images, pad, np.random.default_rng(7))
    draw = np.random.default_rng(7)
    dy, dx = draw.integers(0, 2 * pad + 1, 300), draw.integers(0, 2 * pad + 1, 300)
    assert len(set(zip(dy.tolist(), dx.tolist()))) == 49
    for b in range(300):
        np.testing.assert_array_equal(out[b], _shift_reference(images[b], dy[b], dx[b], pad))
    # Hand-checked corner: a shift of (+pad, +pad) of the identity offset moves pixel (0, 0)
    # to out[pad, pad] when dy = dx = 0.
    one = images[:1]
    zero_shift = _shift_reference(one[0], 0, 0, pad)
    assert (zero_shift[pad, pad] == one[0, 0, 0]).all() and (zero_shift[0, 0] == one[0, 0, 0]).all()


def test_random_crop_takes_a_window_and_resizes_it_back() -> None:
    images = np.arange(2 * 8 * 8 * 3, dtype=np.int64).reshape(2, 8, 8, 3).astype(np.uint8)
    out = random_crop(images, 2, np.random.default_rng(3))
    draw = np.random.default_rng(3)
    oy, ox = draw.integers(0, 5, 2), draw.integers(0, 5, 2)
    for b in range(2):
        window = images[b, oy[b] : oy[b] + 4, ox[b] : ox[b] + 4]
        # 4x4 -> 8x8 nearest neighbour: every source pixel twice along each axis.
        np.testing.assert_array_equal(out[b], window.repeat(2, axis=0).repeat(2, axis=1))


def test_the_batch_sampler_augments_only_when_asked(tmp_path: Path) -> None:
    frames = _frames(3, (16, 16))
    write_episode(tmp_path / "ep-a", _episode("ep-a", 0), images={"top": frames})
    ep = read_episode(
        tmp_path / "ep-a",
        cameras=["top"],
        image_cache=ImageCache(tmp_path / "c"),
        image_size=(16, 16),
    )
    store = ReplayStore(ReplayConfig(cameras=("top",), image_augment="shift", augment_pad=2))
    store.add_episode(ep)
    mixing = {"rollout_success": 1.0}
    plain = store.sample(64, mixing, np.random.default_rng(0))
    aug = store.sample(64, mixing, np.random.default_rng(0), augment=True)
    np.testing.assert_array_equal(plain.window_index.numpy(), aug.window_index.numpy())
    anchors = store.table.anchor[plain.window_index.numpy()]
    np.testing.assert_array_equal(plain.images["top"].numpy(), frames[anchors])
    shifted = aug.images["top"].numpy()
    assert shifted.shape == (64, 16, 16, 3) and not np.array_equal(shifted, frames[anchors])
    # Each augmented image is one of the 25 shifts of its own frame.
    for b in range(64):
        img = frames[anchors[b]]
        assert any(
            np.array_equal(shifted[b], _shift_reference(img, dy, dx, 2))
            for dy in range(5)
            for dx in range(5)
        )

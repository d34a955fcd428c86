"""Decoded camera frames of episode bags, once, as memory-mapped uint8 arrays.

The learner decodes each bag's frames a single time, in one pass over the bag, resized to the
policy's ``image_size`` (:func:`habc_policy.core.images.resize_rgb`, the serving rule), into
one raw uint8 file per camera ``[N, h, w, 3]`` (N frames of that camera in the bag, in bag
order). Sampling a batch then indexes those memory maps: it never opens a bag again.

Layout under the cache root (the learner keeps it beside its state, ``<out>/image_cache``)::

    <sha256 of the bag's files>-<h>x<w>/
        entry.json        bag path, hash, size, {camera: frames}
        <camera>.u8       N·h·w·3 bytes, C order

An entry is keyed by the **content hash** of the bag (every file of the bag directory, names
and bytes): a bag rewritten under the same path gets a new entry, and the stale entries of that
path are removed when the new one is written. Entries are written to a temporary directory and
renamed into place, so a crash never leaves a half-written entry that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from habc_learner.core.episode import ImageLoader

ENTRY_FILE = "entry.json"
HASH_CHUNK = 1 << 20


def bag_content_hash(path: str | Path) -> str:
    """sha256 over the bag directory's files: each file's name, size and bytes, sorted by name."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        digest.update(file.name.encode("utf-8") + b"\0")
        digest.update(str(file.stat().st_size).encode() + b"\0")
        with file.open("rb") as fh:
            while block := fh.read(HASH_CHUNK):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """The cached frames of one bag at one size: camera -> memory-mapped uint8 [N, h, w, 3]."""

    directory: Path
    bag_hash: str
    frames: Mapping[str, np.ndarray]

    def loader(self, camera: str, frame_of_step: np.ndarray) -> ImageLoader:
        """``steps -> frames[frame_of_step[steps]]`` (an :data:`ImageLoader`)."""
        frames = self.frames[camera]
        index = np.asarray(frame_of_step, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= frames.shape[0]):
            raise ValueError(
                f"camera {camera!r}: step frames in [{index.min()}, {index.max()}] but the "
                f"cache holds {frames.shape[0]} frames"
            )

        def load(steps: np.ndarray) -> np.ndarray:
            return frames[index[np.asarray(steps, dtype=np.int64)]]

        return load


class ImageCache:
    """Decode-once cache of episode-bag camera frames (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.decoded = 0  # entries this instance decoded (the rest were found on disk)

    def entry_dir(self, bag_hash: str, size: tuple[int, int]) -> Path:
        return self.root / f"{bag_hash}-{int(size[0])}x{int(size[1])}"

    def get(
        self,
        bag: str | Path,
        topics: Mapping[str, str],
        size: tuple[int, int],
        bag_hash: str | None = None,
    ) -> CacheEntry:
        """The entry of ``bag`` (camera -> topic) at ``size``; decodes the bag on a miss."""
        bag = Path(bag).resolve()
        size = (int(size[0]), int(size[1]))
        bag_hash = bag_hash or bag_content_hash(bag)
        directory = self.entry_dir(bag_hash, size)
        entry = self._open(directory, bag_hash, size, topics)
        if entry is None:
            self._build(bag, bag_hash, size, topics, directory)
            self.decoded += 1
            self._prune_path(bag, keep=directory)
            entry = self._open(directory, bag_hash, size, topics)
            assert entry is not None
        return entry

    def _open(
        self, directory: Path, bag_hash: str, size: tuple[int, int], topics: Mapping[str, str]
    ) -> CacheEntry | None:
        meta_path = directory / ENTRY_FILE
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        counts: dict[str, int] = meta["frames"]
        if meta.get("hash") != bag_hash or not set(topics) <= set(counts):
            return None  # another camera set: rebuilt below with every camera asked for
        frames = {}
        for cam in topics:
            n = int(counts[cam])
            shape = (n, size[0], size[1], 3)
            if n == 0:
                frames[cam] = np.zeros(shape, dtype=np.uint8)
            else:
                frames[cam] = np.memmap(directory / f"{cam}.u8", np.uint8, "r", shape=shape)
        return CacheEntry(directory, bag_hash, frames)

    def _build(
        self,
        bag: Path,
        bag_hash: str,
        size: tuple[int, int],
        topics: Mapping[str, str],
        directory: Path,
    ) -> None:
        from rosbags.rosbag2 import Reader

        from habc_common import bag_format as bf
        from habc_learner.core.bag_reader import _image_to_rgb
        from habc_policy.core.images import resize_rgb

        tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        by_topic = {topic: cam for cam, topic in topics.items()}
        counts = dict.fromkeys(topics, 0)
        files = {cam: (tmp / f"{cam}.u8").open("wb") for cam in topics}
        try:
            store = bf.typestore()
            with Reader(bag) as reader:
                conns = [c for c in reader.connections if c.topic in by_topic]
                for conn, _t, raw in reader.messages(connections=conns):
                    cam = by_topic[conn.topic]
                    msg = store.deserialize_cdr(raw, conn.msgtype)
                    rgb = resize_rgb(_image_to_rgb(msg, conn.msgtype), size)
                    files[cam].write(np.ascontiguousarray(rgb).tobytes())
                    counts[cam] += 1
        finally:
            for fh in files.values():
                fh.close()
        meta = {"bag": str(bag), "hash": bag_hash, "size": list(size), "frames": counts}
        (tmp / ENTRY_FILE).write_text(json.dumps(meta, indent=1))
        if directory.exists():  # a smaller camera set of the same bag: replaced
            shutil.rmtree(directory)
        os.replace(tmp, directory)

    def _prune_path(self, bag: Path, keep: Path) -> None:
        """Remove the entries of ``bag`` at other content hashes (the bag changed)."""
        for meta_path in self.root.glob(f"*/{ENTRY_FILE}"):
            directory = meta_path.parent
            if directory == keep:
                continue
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if meta.get("bag") == str(bag) and meta.get("hash") != keep.name.split("-")[0]:
                shutil.rmtree(directory, ignore_errors=True)

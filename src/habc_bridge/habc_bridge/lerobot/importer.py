"""A LeRobotDataset -> habc episode bags (LeRobot environment).

    python -m habc_bridge.lerobot.importer DATASET --out BAGS [--repo-id ID] [--mapping FILE]
        [--as-demos]

Columns become the X5's 14 action dims through a declared mapping
(:class:`~habc_bridge.core.dataset_schema.ColumnMapping`, a JSON or YAML file); without one,
``action`` must already have 14 dims, and every image column becomes a camera. A mismatch is
refused with the key, its shape and the mapping entry to declare.

A dataset habc exported (it has ``meta/habc.json``) comes back with its recorded authority,
outcomes, episode ids and checkpoint ids. Any other dataset, or ``--as-demos``, becomes
SFT demonstrations: source ``demo``, every arm under HUMAN authority, outcome ``success``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from habc_bridge.core import dataset_schema as S
from habc_learner.core.bag_reader import write_episode
from habc_learner.core.episode import Episode, Outcome

VIDEO_BACKEND = "pyav"


def load_mapping(path: Path | None) -> S.ColumnMapping | None:
    if path is None:
        return None
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        doc = yaml.safe_load(text)
    else:
        doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a mapping file holds a map, got {type(doc).__name__}")
    return S.ColumnMapping.from_dict(doc)


def default_mapping(features: dict[str, dict], habc_meta: dict | None) -> S.ColumnMapping:
    """Identity on ``action`` / ``observation.state``; image columns named back to habc's
    cameras through the export's camera map (or by their own suffix)."""
    back = {v: k for k, v in (habc_meta or {}).get("camera_map", {}).items()}
    cams = tuple(
        (back.get(key, key[len(S.IMAGE_PREFIX) :]), key)
        for key, ft in sorted(features.items())
        if ft["dtype"] in ("image", "video") and key.startswith(S.IMAGE_PREFIX)
    )
    return S.ColumnMapping(cameras=cams)


def to_uint8_hwc(value: Any) -> np.ndarray:
    """LeRobot's float [3, h, w] in [0, 1] -> uint8 [h, w, 3]."""
    arr = np.asarray(value, dtype=np.float32)
    return np.clip(np.rint(arr.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)


def import_dataset(
    root: Path,
    out: Path,
    repo_id: str | None = None,
    mapping: S.ColumnMapping | None = None,
    as_demos: bool = False,
) -> list[Path]:
    """Write one bag per episode under ``out``; return their paths."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    meta_path = root / "meta" / S.META_FILE
    habc_meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if repo_id is None:
        repo_id = "local/" + root.name
    ds = LeRobotDataset(repo_id, root=root, video_backend=VIDEO_BACKEND)
    features = ds.meta.features
    mapping = mapping or default_mapping(features, habc_meta)
    mapping.check(features)
    recorded = habc_meta is not None and not as_demos and S.COL_AUTHORITY in features
    arm_slices = tuple((lo, hi) for _n, lo, hi in mapping.arms)
    arm_names = [n for n, _lo, _hi in mapping.arms]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for e in range(ds.num_episodes):
        lo = int(ds.meta.episodes[e]["dataset_from_index"])
        hi = int(ds.meta.episodes[e]["dataset_to_index"])
        frames = [ds[i] for i in range(lo, hi)]
        t_len = len(frames)
        actions = np.stack([np.asarray(f[mapping.action_key]) for f in frames])
        # (fancy indexing on the last axis need not give C order; the CDR writer needs it)
        actions = np.ascontiguousarray(actions[:, list(mapping.action_index)], np.float32)
        state = np.stack([np.asarray(f[mapping.state_key]) for f in frames]).astype(np.float32)
        if mapping.state_index is not None:
            state = np.ascontiguousarray(state[:, list(mapping.state_index)])
        images = {
            cam: np.stack([to_uint8_hwc(f[key]) for f in frames]) for cam, key in mapping.cameras
        }
        timestamps = np.array([float(f["timestamp"]) for f in frames])
        task = str(frames[0].get("task", ""))
        if recorded:
            assert habc_meta is not None
            info = habc_meta["episodes"][e]
            authority = np.stack([np.asarray(f[S.COL_AUTHORITY]) for f in frames]).astype(np.uint8)
            unknown = sorted(set(np.unique(authority).tolist()) - set(S.AUTHORITY_CODES.values()))
            if unknown:
                raise ValueError(
                    f"episode {e}: authority codes {unknown} not in {S.AUTHORITY_CODES}"
                )
            outcome = Outcome(S.code_name(S.OUTCOME_CODES, int(frames[0][S.COL_OUTCOME])))
            checkpoint_ids = np.array([str(f[S.COL_CHECKPOINT]) for f in frames], dtype=object)
            policy = (authority == S.AUTHORITY_CODES["policy"]).any(axis=1)
            episode_id, is_demo = str(info["episode_id"]), info["source"] == "demo"
            success_step = info.get("success_step")
            task_id = str(info.get("task_id", ""))
            del policy
            learner_steps = np.full(t_len, -1, np.int64)  # not exported: unknown
        else:
            authority = np.full((t_len, len(arm_slices)), S.AUTHORITY_CODES["human"], np.uint8)
            outcome, success_step, is_demo = Outcome.SUCCESS, None, True
            checkpoint_ids = np.array([""] * t_len, dtype=object)
            learner_steps = np.full(t_len, -1, np.int64)
            episode_id = f"{root.name}-{e:05d}"
            task_id = root.name
        episode = Episode(
            episode_id=episode_id,
            task_id=task_id,
            prompt=task,
            timestamps=timestamps,
            proprio=state,
            actions=actions,
            authority=authority,
            checkpoint_ids=checkpoint_ids,
            learner_steps=learner_steps,
            outcome=outcome,
            arm_slices=arm_slices,
            success_step=success_step,
            is_demonstration=is_demo,
        )
        path = out / episode_id
        write_episode(path, episode, arm_names=arm_names, images=images)
        written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="habc-import-lerobot", description=__doc__)
    p.add_argument("dataset", type=Path, help="LeRobotDataset root folder")
    p.add_argument("--out", required=True, type=Path, help="folder for the episode bags")
    p.add_argument("--repo-id", default=None, help="default: local/<folder name>")
    p.add_argument("--mapping", type=Path, default=None, help="column mapping (JSON or YAML)")
    p.add_argument("--as-demos", action="store_true", help="write SFT demonstrations")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        paths = import_dataset(
            args.dataset, args.out, args.repo_id, load_mapping(args.mapping), args.as_demos
        )
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"habc-import-lerobot: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} episode bags to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Episode bags + a labels sidecar -> a LeRobotDataset v3 (LeRobot environment).

    python -m habc_bridge.lerobot.export --labels DIR --out DATASET [--repo-id local/habc]
        [--fps HZ] [--no-video] [--env-state] [--camera-map top:cam_high,...]

Usually run by ``habc-export-lerobot`` (main venv), which writes the sidecar first. The
columns and ``meta/habc.json`` are described in :mod:`habc_bridge.core.dataset_schema`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from habc_bridge.core import dataset_schema as S
from habc_bridge.core.openpi_protocol import openpi_camera, parse_camera_map
from habc_learner.core.bag_reader import BagSkipped, read_episode
from habc_learner.core.episode import Episode

VIDEO_BACKEND = "pyav"  # torchcodec needs Debian's FFmpeg 5.1 libraries; PyAV bundles its own


def control_rate(timestamps: np.ndarray, default: int = 50) -> int:
    """The episode's control rate in Hz (1 / median step), ``default`` when it has one step."""
    steps = np.diff(np.asarray(timestamps, dtype=np.float64))
    steps = steps[steps > 0]
    return round(1.0 / float(np.median(steps))) if steps.size else default


def features_of(ep: Episode, images: dict[str, np.ndarray], use_video: bool, cam_key: dict):
    """LeRobot feature spec of an exported episode."""
    arms = [f"arm{i}" for i in range(ep.n_arms)]
    feats: dict[str, dict[str, Any]] = {}
    for cam, frames in images.items():
        feats[cam_key[cam]] = {
            "dtype": "video" if use_video else "image",
            "shape": tuple(frames.shape[1:]),
            "names": ["height", "width", "channels"],
        }
    feats[S.KEY_STATE] = {"dtype": "float32", "shape": (ep.proprio_dim,), "names": None}
    feats[S.KEY_ACTION] = {"dtype": "float32", "shape": (ep.action_dim,), "names": None}
    feats[S.COL_AUTHORITY] = {"dtype": "int64", "shape": (ep.n_arms,), "names": arms}
    for col in (S.COL_OUTCOME, S.COL_SOURCE, S.COL_OUTCOME_LABEL):
        feats[col] = {"dtype": "int64", "shape": (1,), "names": None}
    for col in (S.COL_GATE, S.COL_WEIGHT, S.COL_P_V):
        feats[col] = {"dtype": "float32", "shape": (1,), "names": None}
    feats[S.COL_CHECKPOINT] = {"dtype": "string", "shape": (1,), "names": None}
    return feats


def export(
    labels_dir: Path,
    out: Path,
    repo_id: str = "local/habc",
    fps: int | None = None,
    use_video: bool = True,
    use_env_state: bool = False,
    camera_map: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write the dataset; return the ``meta/habc.json`` document."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if out.exists():
        raise FileExistsError(f"output dataset {out} already exists; choose a new --out")
    labels, skipped, info = S.read_labels(labels_dir)
    camera_map = camera_map or parse_camera_map("")
    skipped = list(skipped)
    dataset = None
    episodes_meta: list[dict[str, Any]] = []
    cam_key: dict[str, str] = {}
    first_shape: tuple | None = None
    for lab in labels:
        try:
            ep = read_episode(lab.bag, use_env_state=use_env_state)
        except BagSkipped as exc:  # the bag changed since the labels were computed
            skipped.append((lab.bag, str(exc)))
            continue
        if ep.episode_id != lab.episode_id or ep.length != lab.length:
            raise RuntimeError(
                f"{lab.bag}: the bag holds {ep.episode_id!r} with {ep.length} steps, the labels "
                f"{lab.episode_id!r} with {lab.length}: recompute the labels"
            )
        steps = np.arange(ep.length)
        images = {cam: ep.load_images(cam, steps) for cam in sorted(ep.images)}
        shape = (
            ep.proprio_dim,
            ep.action_dim,
            ep.n_arms,
            {c: v.shape[1:] for c, v in images.items()},
        )
        if dataset is None:
            fps = fps or control_rate(ep.timestamps)
            cam_key = {c: S.IMAGE_PREFIX + openpi_camera(c, camera_map) for c in images}
            dataset = LeRobotDataset.create(
                repo_id=repo_id,
                fps=fps,
                features=features_of(ep, images, use_video, cam_key),
                root=out,
                robot_type="arx_x5_bimanual",
                use_videos=use_video,
                video_backend=VIDEO_BACKEND,
            )
            first_shape = shape
        elif shape != first_shape:
            skipped.append((lab.bag, f"shape {shape} differs from the export's {first_shape}"))
            continue
        outcome = S.OUTCOME_CODES[ep.outcome.value]
        task = ep.prompt or ep.task_id or "habc episode"
        for t in range(ep.length):
            frame: dict[str, Any] = {cam_key[c]: images[c][t] for c in images}
            frame[S.KEY_STATE] = ep.proprio[t]
            frame[S.KEY_ACTION] = ep.actions[t]
            frame[S.COL_AUTHORITY] = ep.authority[t].astype(np.int64)
            frame[S.COL_OUTCOME] = np.array([outcome], np.int64)
            frame[S.COL_SOURCE] = np.array([lab.source[t]], np.int64)
            frame[S.COL_OUTCOME_LABEL] = np.array([lab.outcome_label[t]], np.int64)
            frame[S.COL_GATE] = np.array([lab.gate[t]], np.float32)
            frame[S.COL_WEIGHT] = np.array([lab.weight[t]], np.float32)
            frame[S.COL_P_V] = np.array([lab.p_v[t]], np.float32)
            frame[S.COL_CHECKPOINT] = str(ep.checkpoint_ids[t])
            frame["task"] = task
            dataset.add_frame(frame)
        dataset.save_episode()
        episodes_meta.append(
            {
                "index": len(episodes_meta),
                "bag": lab.bag,
                "episode_id": ep.episode_id,
                "task_id": ep.task_id,
                "length": ep.length,
                "outcome": ep.outcome.value,
                "success_step": ep.success_step,
                "source": "demo" if ep.is_demonstration else "rollout",
                "checkpoint_ids": sorted({str(c) for c in ep.checkpoint_ids if c}),
                "arm_slices": [list(s) for s in ep.arm_slices],
            }
        )
    if dataset is None:
        raise RuntimeError(
            "no usable episode bags; skipped: "
            + "; ".join(f"{Path(b).name}: {r}" for b, r in skipped)
        )
    dataset.finalize()
    doc = {
        "format": S.FORMAT,
        "fps": fps,
        "authority_codes": S.AUTHORITY_CODES,
        "outcome_codes": S.OUTCOME_CODES,
        "source_codes": S.SOURCE_CODES,
        "camera_map": {c: k for c, k in cam_key.items()},
        "use_env_state": use_env_state,
        "labels": info,
        "episodes": episodes_meta,
        "skipped": [{"bag": b, "reason": r} for b, r in skipped],
    }
    (out / "meta" / S.META_FILE).write_text(json.dumps(doc, indent=1))
    return doc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="habc_bridge.lerobot.export", description=__doc__)
    p.add_argument("--labels", required=True, type=Path, help="labels sidecar folder")
    p.add_argument("--out", required=True, type=Path, help="new dataset folder")
    p.add_argument("--repo-id", default="local/habc")
    p.add_argument("--fps", type=int, default=None, help="default: the bags' control rate")
    p.add_argument("--no-video", action="store_true", help="PNG frames instead of AV1 video")
    p.add_argument("--env-state", action="store_true", help="append /habc/env_state (sim)")
    p.add_argument("--camera-map", default="", help="habc:openpi camera names")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        doc = export(
            args.labels,
            args.out,
            args.repo_id,
            args.fps,
            not args.no_video,
            args.env_state,
            parse_camera_map(args.camera_map),
        )
    except (FileExistsError, RuntimeError, ValueError) as exc:
        print(f"habc-export-lerobot: {exc}", file=sys.stderr)
        return 2
    frames = sum(e["length"] for e in doc["episodes"])
    print(f"wrote {len(doc['episodes'])} episodes / {frames} frames to {args.out}")
    for e in doc["episodes"]:
        print(
            f"  used    {Path(e['bag']).name}: {e['source']}, {e['outcome']}, {e['length']} steps"
        )
    for s in doc["skipped"]:
        print(f"  skipped {Path(s['bag']).name}: {s['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

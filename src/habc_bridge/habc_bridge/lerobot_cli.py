"""Entry points of the LeRobot bridge, run from the main venv (``source env.sh``).

- ``habc-export-lerobot --bags DIR… --out DATASET [--checkpoint LEARNER_CKPT]``: reads the
  episode bags (bad ones listed, as the learner lists them), computes per-frame labels here
  (habc's critic runs on this venv's torch) into a sidecar, then writes the LeRobotDataset in
  the LeRobot environment.
- ``habc-import-lerobot DATASET --out BAGS [--mapping FILE] [--as-demos]``: in the LeRobot
  environment.
- ``habc-lerobot-train --dataset DATASET --out DIR [--policy smolvla|pi0|pi05] …``: in the
  LeRobot environment.
- ``habc-serve-lerobot --checkpoint RUN/checkpoints/N/pretrained_model [--port 8000]``: a
  LeRobot checkpoint over openpi's protocol, in the LeRobot environment.

The LeRobot environment is ``$HABC_LEROBOT_VENV`` (default ``<repo>/.venv-lerobot``), made by
``scripts/setup_lerobot.sh`` when a Python 3.12 interpreter exists.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from habc_bridge.core import dataset_schema as S


def repo_root() -> Path:
    env = os.environ.get("HABC_ROOT")
    if env:
        return Path(env)
    # src/habc_bridge/habc_bridge/lerobot_cli.py -> repo root
    return Path(__file__).resolve().parents[3]


def lerobot_python() -> Path:
    """The LeRobot environment's interpreter; ``FileNotFoundError`` saying how to make it."""
    venv = Path(os.environ.get("HABC_LEROBOT_VENV", str(repo_root() / ".venv-lerobot")))
    python = venv / "bin" / "python"
    if not python.is_file():
        raise FileNotFoundError(
            f"no LeRobot environment at {venv}: run scripts/setup_lerobot.sh (needs Python 3.12; "
            "set HABC_LEROBOT_PYTHON to its interpreter)"
        )
    return python


def run_in_lerobot_env(module: str, args: list[str]) -> int:
    """``python -m module args`` in the LeRobot environment (its own venv, no ROS, no PYTHONPATH
    of this workspace: it finds habc_bridge and habc_learner's bag modules through a .pth)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "AMENT_PREFIX_PATH")
    }
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [str(lerobot_python()), "-m", module, *args], env=env, check=False
    ).returncode


def compute_labels(
    bag_dirs: list[Path], checkpoint: Path | None, out: Path, horizon: int, min_human: int
) -> str:
    """Read the bags, label every frame, write the sidecar; return the bag report."""
    from habc_bridge.core import frame_labels as FL
    from habc_learner.core.bag_reader import BagReport, read_episodes
    from habc_learner.core.labeling import LabelingConfig

    cameras, proprio_dim = None, None
    if checkpoint is not None:
        from habc_policy.core.checkpoint import read_manifest

        cfg = FL.trainer_config_from_manifest(read_manifest(checkpoint)).policy
        cameras, proprio_dim = cfg.camera_names, cfg.proprio_dim

    def read(use_env_state: bool) -> tuple[list, list[str], BagReport]:
        episodes, bags, report = [], [], BagReport()
        for folder in bag_dirs:
            eps, rep = read_episodes(folder, use_env_state=use_env_state, cameras=cameras)
            report.used += rep.used
            report.skipped += rep.skipped
            episodes += eps
            bags += [str(u.path) for u in rep.used]
        return episodes, bags, report

    # The critic's policy was trained with or without the sim's privileged env state.
    episodes, bags, report = read(use_env_state=True)
    if episodes and proprio_dim is not None and episodes[0].proprio_dim != proprio_dim:
        episodes, bags, report = read(use_env_state=False)
    if checkpoint is None:
        labels = FL.table_labels(episodes, bags, LabelingConfig(horizon, min_human))
        info = {
            "weights_from": "source table, g = 1 (no learner checkpoint given)",
            "horizon": horizon,
            "min_human_steps": min_human,
            "labeling": "intervention_aware",
        }
    else:
        labels, info = FL.critic_labels(episodes, bags, checkpoint)
    S.write_labels(out, labels, [(str(p), r) for p, r in report.skipped], info)
    return report.format()


def export_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="habc-export-lerobot", description="episode bags -> LeRobotDataset v3"
    )
    p.add_argument("--bags", nargs="+", required=True, type=Path, help="bag folder(s)")
    p.add_argument("--out", required=True, type=Path, help="new dataset folder")
    p.add_argument("--checkpoint", type=Path, default=None, help="learner checkpoint (gate, w)")
    p.add_argument("--horizon", type=int, default=50, help="H of the windows (no checkpoint)")
    p.add_argument("--min-human-steps", type=int, default=10)
    p.add_argument("--repo-id", default="local/habc")
    p.add_argument("--fps", type=int, default=None, help="default: the bags' control rate")
    p.add_argument("--no-video", action="store_true", help="PNG frames instead of AV1 video")
    p.add_argument("--env-state", action="store_true", help="append /habc/env_state (sim)")
    p.add_argument("--camera-map", default="")
    args = p.parse_args(argv)
    try:
        lerobot_python()
        if args.out.exists():
            raise FileExistsError(f"output dataset {args.out} already exists")
        with tempfile.TemporaryDirectory(prefix="habc_labels_") as tmp:
            print(
                compute_labels(
                    args.bags, args.checkpoint, Path(tmp), args.horizon, args.min_human_steps
                ),
                flush=True,
            )
            extra = ["--no-video"] if args.no_video else []
            extra += ["--fps", str(args.fps)] if args.fps else []
            extra += ["--env-state"] if args.env_state else []
            return run_in_lerobot_env(
                "habc_bridge.lerobot.export",
                [
                    "--labels",
                    tmp,
                    "--out",
                    str(args.out),
                    "--repo-id",
                    args.repo_id,
                    "--camera-map",
                    args.camera_map,
                    *extra,
                ],
            )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"habc-export-lerobot: {exc}", file=sys.stderr)
        return 2


def _passthrough(module: str, prog: str, argv: list[str] | None) -> int:
    try:
        return run_in_lerobot_env(module, list(sys.argv[1:] if argv is None else argv))
    except FileNotFoundError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2


def import_main(argv: list[str] | None = None) -> int:
    return _passthrough("habc_bridge.lerobot.importer", "habc-import-lerobot", argv)


def train_main(argv: list[str] | None = None) -> int:
    return _passthrough("habc_bridge.lerobot.train", "habc-lerobot-train", argv)


def serve_main(argv: list[str] | None = None) -> int:
    return _passthrough("habc_bridge.lerobot.serve", "habc-serve-lerobot", argv)


if __name__ == "__main__":
    sys.exit(export_main())

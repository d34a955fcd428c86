"""Learner jobs over a folder of episode bags: one code path for the CLI and the learner node.

    habc-learn --bags runs/bags --out runs/learner --method habc --steps 1000 \\
        --init runs/sft/checkpoints/step_000001500
    habc-learn --bags runs/bags --out runs/learner --watch --min-new 10   # keep following
    habc-learn --bags runs/bags --out runs/vision --method sft --cameras top,left_wrist \\
        --image-size 96                                # an image policy, joints-only proprio

A :class:`LearnerJob` scans the bag folders (recursively), reads every new complete episode
through the bag reader (bad bags are skipped and reported once), and runs a training round of
the chosen method whenever at least ``min_new_episodes`` new episodes came in. Each round ends
with an atomically written checkpoint (safetensors + manifest) and an atomically written
``learner_state.json`` naming the episodes consumed. A job killed mid-round starts again from
its last checkpoint and redoes that round; nothing else is lost. Needs ``rosbags`` and torch,
never rclpy: learner jobs run on machines without ROS (``--device cuda`` on a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from habc_learner.core.bag_reader import BagSkipped, read_episode
from habc_learner.core.episode import Episode
from habc_learner.core.image_cache import ImageCache
from habc_learner.core.methods import get_method
from habc_learner.core.replay import ReplayStore
from habc_learner.core.trainer import RoundSummary, Trainer, TrainerConfig

STATE_NAME = "learner_state.json"


@dataclass(frozen=True)
class LearnerJobConfig:
    """A learner job.

    Attributes:
        bag_dirs: folders searched (recursively) for episode bags.
        out_dir: checkpoints (``checkpoints/``), TensorBoard logs (``tensorboard/``) and the
            job state.
        method: learner method name (see ``habc_learner.core.methods``).
        steps_per_round: gradient steps of one round.
        min_new_episodes: new usable episodes that trigger a round.
        init_checkpoint: policy to start from (e.g. the SFT checkpoint) when ``out_dir`` holds
            no checkpoint yet; its policy config is kept.
        batch_size: learner batch size.
        device: torch device.
        use_env_state: feed the privileged simulator state to the policy (state-only policies
            only: with ``cameras`` the proprioception is the joints alone and
            ``/habc/env_state`` is never read).
        count_demos: demonstrations count toward ``min_new_episodes`` (``False`` in an online
            bringup: its demonstrations are training data but only rollouts trigger a round).
        cameras: cameras of an image policy (empty: state-only). Their frames are decoded once
            per bag into ``<out_dir>/image_cache`` (memory maps, keyed by the bag's content
            hash); batches never reopen a bag.
        image_size: (height, width) the policy sees; frames are resized to it once, in the cache.
        image_augment, augment_pad: train-time augmentation of a policy sized by this job
            (``none`` | ``shift`` | ``crop``; see ``habc_policy.core.images``).
    """

    bag_dirs: tuple[Path, ...]
    out_dir: Path
    method: str = "habc"
    steps_per_round: int = 1000
    min_new_episodes: int = 10
    init_checkpoint: Path | None = None
    batch_size: int = 256
    device: str = "cpu"
    use_env_state: bool = True
    seed: int = 0
    progress: bool = True
    count_demos: bool = True
    cameras: tuple[str, ...] = ()
    image_size: tuple[int, int] = (96, 96)
    image_augment: str = "shift"
    augment_pad: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", tuple(c for c in self.cameras if c))
        size = self.image_size
        if isinstance(size, int):
            size = (size, size)
        object.__setattr__(self, "image_size", tuple(int(v) for v in size))
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ValueError(f"image_size must be (height, width) >= 8, got {self.image_size}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras has duplicates: {self.cameras}")
        from habc_policy.core.images import IMAGE_AUGMENTS

        if self.image_augment not in IMAGE_AUGMENTS:
            raise ValueError(f"image_augment={self.image_augment!r} is not one of {IMAGE_AUGMENTS}")
        if not self.bag_dirs:
            raise ValueError("bag_dirs must name at least one folder")
        get_method(self.method)  # raises with "did you mean" on a typo
        if self.steps_per_round < 1:
            raise ValueError(f"steps_per_round must be >= 1, got {self.steps_per_round}")
        if self.min_new_episodes < 1:
            raise ValueError(f"min_new_episodes must be >= 1, got {self.min_new_episodes}")


@dataclass
class ScanResult:
    """What one scan of the bag folders found that the job had not seen before."""

    used: list[Episode] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _is_bag(path: Path) -> bool:
    return path.is_dir() and (any(path.glob("*.mcap")) or any(path.glob("*.db3")))


def find_bags_recursive(folders: tuple[Path, ...]) -> list[Path]:
    """Every episode bag directory below ``folders`` (sorted, no duplicates)."""
    found: set[Path] = set()
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"bag folder {folder} does not exist")
        for meta in folder.rglob("metadata.yaml"):
            found.add(meta.parent.resolve())
        for mcap in folder.rglob("*.mcap"):  # bags whose recorder died (no metadata.yaml)
            found.add(mcap.parent.resolve())
    return sorted(p for p in found if _is_bag(p))


class LearnerJob:
    """Turns new episode bags into training rounds and checkpoints (see module docstring)."""

    def __init__(self, config: LearnerJobConfig) -> None:
        self.config = config
        self.out_dir = Path(config.out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.state_path = self.out_dir / STATE_NAME
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = self._load_state()
        self.consumed: set[str] = set(state.get("consumed", []))
        self.skipped: dict[str, str] = dict(state.get("skipped", {}))
        self.rounds_done: int = int(state.get("rounds", 0))
        self.pending: list[tuple[str, Episode]] = []
        self.image_cache = ImageCache(self.out_dir / "image_cache") if config.cameras else None
        self.store = ReplayStore(self._trainer_config(None).replay_config())
        self.trainer: Trainer | None = None
        self.last_summary: RoundSummary | None = None
        # Episodes consumed by earlier rounds are training data again after a restart.
        self._reload_consumed()

    # -- state ---------------------------------------------------------------------------
    def _load_state(self) -> dict:
        if not self.state_path.is_file():
            return {}
        try:
            return json.loads(self.state_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.state_path} is corrupt: {exc}") from exc

    def _save_state(self) -> None:
        tmp = self.state_path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(
            json.dumps(
                {
                    "consumed": sorted(self.consumed),
                    "skipped": self.skipped,
                    "rounds": self.rounds_done,
                    "method": self.config.method,
                },
                indent=1,
            )
        )
        os.replace(tmp, self.state_path)

    @property
    def uses_env_state(self) -> bool:
        """The privileged ``/habc/env_state`` is read only for state-only policies."""
        return self.config.use_env_state and not self.config.cameras

    def _read(self, path: Path) -> Episode:
        cameras = self.config.cameras
        return read_episode(
            path,
            use_env_state=self.uses_env_state,
            cameras=cameras if cameras else (),
            image_cache=self.image_cache,
            image_size=self.config.image_size if cameras else None,
        )

    def _reload_consumed(self) -> None:
        if not self.consumed:
            return
        episodes = []
        for path in find_bags_recursive(tuple(Path(d) for d in self.config.bag_dirs)):
            if str(path) in self.consumed:
                try:
                    episodes.append(self._read(path))
                except BagSkipped:
                    continue  # deleted or damaged since: it simply stops being data
        self.store.add_episodes(episodes)

    # -- scanning ------------------------------------------------------------------------
    def scan(self) -> ScanResult:
        """Read the bags not seen yet; they wait in :attr:`pending` for the next round."""
        result = ScanResult()
        pending_paths = {p for p, _ in self.pending}
        for path in find_bags_recursive(tuple(Path(d) for d in self.config.bag_dirs)):
            key = str(path)
            if key in self.consumed or key in self.skipped or key in pending_paths:
                continue
            try:
                episode = self._read(path)
            except BagSkipped as exc:
                reason = str(exc)
                if reason.startswith(("incomplete", "no metadata.yaml")) and self._maybe_live(path):
                    continue  # a bag still being recorded: look again next scan
                self.skipped[key] = reason
                result.skipped.append((path, reason))
                continue
            self.pending.append((key, episode))
            result.used.append(episode)
        return result

    @staticmethod
    def _maybe_live(path: Path, quiet_s: float = 30.0) -> bool:
        """A bag written to in the last ``quiet_s`` seconds may still be recording."""
        newest = max((p.stat().st_mtime for p in path.iterdir()), default=0.0)
        return time.time() - newest < quiet_s

    @property
    def new_count(self) -> int:
        """Pending episodes that count toward the next round."""
        if self.config.count_demos:
            return len(self.pending)
        return sum(not ep.is_demonstration for _, ep in self.pending)

    @property
    def ready(self) -> bool:
        return self.new_count >= self.config.min_new_episodes

    # -- training ------------------------------------------------------------------------
    def _trainer_config(self, policy_config: object | None) -> TrainerConfig:
        from habc_policy.core.configuration_flow import FlowPolicyConfig

        kwargs = {}
        if policy_config is not None:
            kwargs["policy"] = policy_config
        else:  # the store's view before the policy is sized: cameras, size, augmentation
            kwargs["policy"] = FlowPolicyConfig(
                camera_names=self.config.cameras,
                image_size=self.config.image_size,
                image_augment=self.config.image_augment,
                augment_pad=self.config.augment_pad,
            )
        return TrainerConfig(
            method=self.config.method,
            batch_size=self.config.batch_size,
            steps_per_round=self.config.steps_per_round,
            device=self.config.device,
            seed=self.config.seed,
            checkpoint_dir=str(self.checkpoint_dir),
            log_dir=str(self.out_dir / "tensorboard"),
            progress=self.config.progress,
            policy=kwargs.get("policy", FlowPolicyConfig()),
        )

    def _ensure_trainer(self) -> Trainer:
        if self.trainer is not None:
            return self.trainer
        from habc_policy.core.checkpoint import latest_checkpoint, load_policy, read_manifest
        from habc_policy.core.configuration_flow import FlowPolicyConfig

        existing = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir.exists() else None
        if existing is not None:
            policy_config = load_policy(existing).config
            origin = str(existing)
        elif self.config.init_checkpoint is not None:
            read_manifest(self.config.init_checkpoint)  # fail early on a bad checkpoint
            policy_config = load_policy(self.config.init_checkpoint).config
            origin = str(self.config.init_checkpoint)
        else:
            if not self.pending:
                raise RuntimeError("no episodes to size the policy from")
            key, sample = self.pending[0]
            privileged = 0
            if self.uses_env_state:  # the trailing dims read from /habc/env_state
                joints = read_episode(key, use_env_state=False, cameras=())
                privileged = sample.proprio_dim - joints.proprio_dim
            policy_config = FlowPolicyConfig(
                action_dim=sample.action_dim,
                proprio_dim=sample.proprio_dim,
                camera_names=self.config.cameras,
                image_size=self.config.image_size,
                image_augment=self.config.image_augment,
                augment_pad=self.config.augment_pad,
                privileged_state_dim=privileged,
            )
            origin = ""
        if origin and tuple(policy_config.camera_names) != self.config.cameras:
            raise ValueError(
                f"{origin} is a policy for cameras {list(policy_config.camera_names)} but this "
                f"job reads cameras {list(self.config.cameras)}: pass the same --cameras"
            )
        if origin and self.config.cameras and policy_config.image_size != self.config.image_size:
            raise ValueError(
                f"{origin} sees images of {policy_config.image_size} but this job caches "
                f"{self.config.image_size}: pass the same --image-size"
            )
        self._check_store_matches(policy_config)
        trainer = Trainer.resume(self._trainer_config(policy_config), self.store)
        if existing is None and self.config.init_checkpoint is not None:
            trainer.init_policy_from(self.config.init_checkpoint)
        self.trainer = trainer
        return trainer

    def _check_store_matches(self, policy_config: object) -> None:
        """The store was built before the policy was known; rebuild it when its augmentation
        settings differ (e.g. a checkpoint with its own ``image_augment``)."""
        want = self._trainer_config(policy_config).replay_config()
        if want != self.store.config:
            episodes = self.store.episodes
            self.store = ReplayStore(want)
            self.store.add_episodes(episodes)

    def store_episodes(self) -> list[Episode]:
        return [ep for _, ep in self.pending]

    def run_round(self) -> RoundSummary:
        """Add the pending episodes, train one round, checkpoint, record the state."""
        if not self.pending:
            raise RuntimeError("no new episodes: scan() first")
        from habc_policy.core.checkpoint import DivergedModelError

        self.store.add_episodes([ep for _, ep in self.pending])
        trainer = self._ensure_trainer()
        try:
            summary = trainer.run_round(self.config.steps_per_round)
            checkpoint = trainer.save_checkpoint()
        except DivergedModelError:
            # No checkpoint from a diverged model; the next round starts again from the last
            # good one (LATEST), with these episodes already in the store.
            self.trainer = None
            trainer.close()
            self.consumed.update(p for p, _ in self.pending)
            self.pending = []
            self._save_state()
            raise
        summary.checkpoint = checkpoint
        self.consumed.update(p for p, _ in self.pending)
        self.pending = []
        self.rounds_done += 1
        self._save_state()
        self.last_summary = summary
        return summary

    def close(self) -> None:
        if self.trainer is not None:
            self.trainer.close()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="habc-learn", description=__doc__.split("\n\n")[0])
    p.add_argument("--bags", type=Path, nargs="+", required=True, help="bag folder(s)")
    p.add_argument("--out", type=Path, required=True, help="checkpoints, logs and job state")
    p.add_argument("--method", default="habc")
    p.add_argument("--steps", type=int, default=1000, help="gradient steps per round")
    p.add_argument("--init", type=Path, default=None, help="start from this checkpoint")
    p.add_argument("--min-new", type=int, default=1, help="new episodes that trigger a round")
    p.add_argument("--rounds", type=int, default=1, help="rounds to run (without --watch)")
    p.add_argument("--watch", action="store_true", help="keep following the folders")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between scans (--watch)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    p.add_argument("--no-env-state", action="store_true", help="joints only (no sim state)")
    p.add_argument(
        "--cameras",
        default="",
        help="comma-separated cameras of an image policy, e.g. top,left_wrist,right_wrist "
        "(default: none, a state-only policy); with cameras /habc/env_state is never read",
    )
    p.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        default=[96],
        metavar="N",
        help="image size the policy sees: N (square) or H W (default 96)",
    )
    p.add_argument(
        "--augment",
        default="shift",
        choices=("none", "shift", "crop"),
        help="train-time image augmentation of a new image policy (default shift)",
    )
    p.add_argument("--augment-pad", type=int, default=4, help="shift / crop margin in px")
    args = p.parse_args(argv)
    if len(args.image_size) not in (1, 2):
        p.error("--image-size takes N or H W")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch

    torch.set_num_threads(args.threads)
    missing = [str(d) for d in args.bags if not d.is_dir()]
    if missing:
        print(f"habc-learn: error: bag folder(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        job = LearnerJob(
            LearnerJobConfig(
                bag_dirs=tuple(args.bags),
                out_dir=args.out,
                method=args.method,
                steps_per_round=args.steps,
                min_new_episodes=args.min_new,
                init_checkpoint=args.init,
                batch_size=args.batch_size,
                device=args.device,
                use_env_state=not args.no_env_state,
                cameras=tuple(c.strip() for c in args.cameras.split(",") if c.strip()),
                image_size=tuple(args.image_size * (2 if len(args.image_size) == 1 else 1)),
                image_augment=args.augment,
                augment_pad=args.augment_pad,
            )
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"habc-learn: error: {exc}", file=sys.stderr)
        return 2
    rounds = 0
    try:
        while True:
            found = job.scan()
            for path, reason in found.skipped:
                print(f"habc-learn: skipped {path.name}: {reason}", flush=True)
            if found.used:
                print(
                    f"habc-learn: {len(found.used)} new episode(s), {len(job.pending)} pending",
                    flush=True,
                )
            if job.ready:
                summary = job.run_round()
                rounds += 1
                print(f"habc-learn: {summary.line()}", flush=True)
                print(f"habc-learn: checkpoint {summary.checkpoint}", flush=True)
                if not args.watch and rounds >= args.rounds:
                    return 0
            elif not args.watch:
                if rounds == 0:
                    print(
                        f"habc-learn: {len(job.pending)} new episode(s) < --min-new "
                        f"{args.min_new}: nothing to train",
                        file=sys.stderr,
                    )
                    return 1
                return 0
            else:
                time.sleep(args.poll)
    except KeyboardInterrupt:
        print("habc-learn: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    finally:
        job.close()


if __name__ == "__main__":
    sys.exit(main())

"""Learner jobs over a folder of episode bags: one code path for the CLI and the learner node.

    habc-learn --bags runs/bags --out runs/learner --method habc --steps 1000 \\
        --init runs/sft/checkpoints/step_000001500
    habc-learn --bags runs/bags --out runs/learner --watch --min-new 10   # keep following
    habc-learn --bags runs/bags --out runs/vision --method sft --cameras top,left_wrist \\
        --image-size 96                                # an image policy, joints-only proprio
    habc-learn --config_path learner.yaml --critic.efficiency_target td   # YAML + overrides
    habc-learn --bag_dirs '[runs/fleet]' --fleet true --watch true  # <root>/<robot>/<episode>/
    torchrun --nproc-per-node 2 -m habc_learner.learn --bags runs/bags --out runs/ddp

Every knob is a key of the typed :class:`~habc_learner.core.learner_config.LearnerConfig`
(``habc-learn --help`` lists them with their defaults); the short flags above are the old
spellings of ``bag_dirs``, ``out_dir``, ``steps_per_round``, ``min_new_episodes``, … The config
is saved into every checkpoint (``learner_config.json``), and a resume refuses a config that
changes the model's shape.

A :class:`LearnerJob` scans the bag folders (recursively; with ``fleet``, only closed bags of
``<root>/<robot_id>/<episode>/``, see :mod:`habc_learner.core.fleet`), reads every new complete
episode through the bag reader (bad bags are skipped and reported once, an episode id seen
twice is reported and not learned from twice), and runs a training round of the chosen method
whenever at least ``min_new_episodes`` new episodes came in. Each round ends with an atomically
written checkpoint (safetensors + manifest) and an atomically written ``learner_state.json``
naming the episodes consumed. A job killed mid-round starts again from its last checkpoint and
redoes that round; nothing else is lost. Under torchrun the round is data-parallel
(:mod:`habc_learner.core.distributed`). Needs ``rosbags`` and torch, never rclpy: learner jobs
run on machines without ROS (``--device cuda`` on a GPU machine).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from habc_learner.core import distributed as D
from habc_learner.core import fleet
from habc_learner.core.bag_reader import BagSkipped, read_episode
from habc_learner.core.episode import Episode
from habc_learner.core.image_cache import ImageCache
from habc_learner.core.learner_config import (
    CONFIG_FILE,
    LearnerConfig,
    PolicyKnobs,
    parse_cli,
    shape_changes,
    yield_cpu,
)
from habc_learner.core.replay import ReplayStore
from habc_learner.core.trainer import RoundSummary, Trainer, TrainerConfig

if TYPE_CHECKING:
    from habc_policy.core.configuration_flow import FlowPolicyConfig

STATE_NAME = "learner_state.json"
#: Skip reason of a bag its recorder has not closed (yet): read again once it is closed.
UNCLOSED = "no metadata.yaml"


def LearnerJobConfig(
    bag_dirs: tuple[Path, ...] | list[Path],
    out_dir: Path,
    *,
    cameras: tuple[str, ...] = (),
    image_size: tuple[int, int] | int = (96, 96),
    image_augment: str = "shift",
    augment_pad: int = 4,
    use_env_state: bool = True,
    min_new_episodes: int = 10,
    **knobs: object,
) -> LearnerConfig:
    """A :class:`~habc_learner.core.learner_config.LearnerConfig` from the flat keyword names
    of the job config before the typed config (the policy's knobs now live in ``policy``)."""
    return LearnerConfig(
        bag_dirs=tuple(Path(d) for d in bag_dirs),
        out_dir=Path(out_dir),
        min_new_episodes=min_new_episodes,
        policy=PolicyKnobs(
            cameras=tuple(cameras),
            image_size=image_size,  # type: ignore[arg-type]
            image_augment=image_augment,  # type: ignore[arg-type]
            augment_pad=augment_pad,
            use_env_state=use_env_state,
        ),
        **knobs,  # type: ignore[arg-type]
    )


@dataclass
class ScanResult:
    """What one scan of the bag folders found that the job had not seen before."""

    used: list[Episode] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    #: ``(bag, episode id, the bag that has it already)``: never learned from twice.
    duplicates: list[tuple[Path, str, str]] = field(default_factory=list)


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
    """Turns new episode bags into training rounds and checkpoints (see module docstring).

    On W torchrun processes (``dist``) rank 0 scans the folders and tells the others which bags
    it read, so every rank holds the same store; only rank 0 writes checkpoints, TensorBoard and
    the job state.
    """

    def __init__(self, config: LearnerConfig, dist: D.DistContext = D.SINGLE) -> None:
        self.config = config
        self.dist = dist
        self.out_dir = Path(config.out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.state_path = self.out_dir / STATE_NAME
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = self._load_state()
        self.consumed: set[str] = set(state.get("consumed", []))
        self.skipped: dict[str, str] = dict(state.get("skipped", {}))
        self.rounds_done: int = int(state.get("rounds", 0))
        #: fleet-wide episode id -> the bag it was read from (duplicates are refused).
        self.episode_bags: dict[str, str] = dict(state.get("episodes", {}))
        self.pending: list[tuple[str, Episode]] = []
        self.image_cache = ImageCache(self.out_dir / "image_cache") if config.cameras else None
        self.store = ReplayStore(self._trainer_config(None).replay_config())
        self.trainer: Trainer | None = None
        self.last_summary: RoundSummary | None = None
        # Episodes consumed by earlier rounds are training data again after a restart. Rank 0
        # reads first (it fills the image cache), then the others (cache hits).
        if not dist.is_main:
            D.barrier(dist)
        self._reload_consumed()
        if dist.is_main:
            D.barrier(dist)

    # -- state ---------------------------------------------------------------------------
    def _load_state(self) -> dict:
        if not self.state_path.is_file():
            return {}
        try:
            return json.loads(self.state_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.state_path} is corrupt: {exc}") from exc

    def _save_state(self) -> None:
        if not self.dist.is_main:
            return
        tmp = self.state_path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(
            json.dumps(
                {
                    "consumed": sorted(self.consumed),
                    "skipped": self.skipped,
                    "rounds": self.rounds_done,
                    "method": self.config.method,
                    "episodes": self.episode_bags,
                },
                indent=1,
            )
        )
        os.replace(tmp, self.state_path)

    @property
    def uses_env_state(self) -> bool:
        """The privileged ``/habc/env_state`` is read only for state-only policies."""
        return self.config.use_env_state and not self.config.cameras

    def _read(self, path: Path, robot_id: str = "") -> Episode:
        cameras = self.config.cameras
        episode = read_episode(
            path,
            use_env_state=self.uses_env_state,
            cameras=cameras if cameras else (),
            image_cache=self.image_cache,
            image_size=self.config.image_size if cameras else None,
        )
        if not self.config.fleet:
            return episode
        return dataclasses.replace(
            episode,
            episode_id=fleet.fleet_episode_id(robot_id, episode.episode_id),
            robot_id=robot_id,
        )

    def _bags(self) -> list[tuple[Path, str]]:
        """``(bag, robot id)`` of every bag to consider; with ``fleet`` only closed bags (a bag
        still being written is never opened)."""
        roots = tuple(Path(d) for d in self.config.bag_dirs)
        if self.config.fleet:
            closed, _writing = fleet.find_fleet_bags(roots)
            return [(b.path, b.robot_id) for b in closed]
        return [(p, "") for p in find_bags_recursive(roots)]

    def _reload_consumed(self) -> None:
        if not self.consumed:
            return
        episodes = []
        for path, robot in self._bags():
            if str(path) in self.consumed:
                try:
                    episodes.append(self._read(path, robot))
                except BagSkipped:
                    continue  # deleted or damaged since: it simply stops being data
        self.store.add_episodes(episodes)

    # -- scanning ------------------------------------------------------------------------
    def scan(self) -> ScanResult:
        """Read the bags not seen yet; they wait in :attr:`pending` for the next round.

        Distributed: rank 0 scans and broadcasts the bags it took; the others read exactly
        those (a collective: every rank calls it)."""
        if not self.dist.enabled:
            return self._scan_local()
        result = self._scan_local() if self.dist.is_main else ScanResult()
        taken = [(key, ep.robot_id) for key, ep in self.pending]
        taken = D.broadcast_object(self.dist, taken)
        if not self.dist.is_main:
            have = {key for key, _ in self.pending}
            for key, robot in taken:
                if key not in have:
                    episode = self._read(Path(key), robot)
                    self.pending.append((key, episode))
                    self.episode_bags[episode.episode_id] = key
        return result

    def _scan_local(self) -> ScanResult:
        result = ScanResult()
        # A bag skipped as never closed is read again once its metadata.yaml appears (a
        # recorder stalled past the live window closes its bag later).
        for key, reason in list(self.skipped.items()):
            if reason.startswith(UNCLOSED) and (Path(key) / "metadata.yaml").is_file():
                del self.skipped[key]
        pending_paths = {p for p, _ in self.pending}
        for path, robot in self._bags():
            key = str(path)
            if key in self.consumed or key in self.skipped or key in pending_paths:
                continue
            try:
                episode = self._read(path, robot)
            except BagSkipped as exc:
                reason = str(exc)
                if reason.startswith(("incomplete", UNCLOSED)) and self._maybe_live(path):
                    continue  # a bag still being recorded: look again next scan
                self.skipped[key] = reason
                result.skipped.append((path, reason))
                continue
            first = self.episode_bags.get(episode.episode_id)
            if first is not None and first != key:
                self.skipped[key] = f"duplicate episode id {episode.episode_id} (of {first})"
                result.duplicates.append((path, episode.episode_id, first))
                continue
            self.episode_bags[episode.episode_id] = key
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

        cfg = self.config
        if policy_config is None:  # the store's view before the policy is sized
            policy_config = FlowPolicyConfig(
                camera_names=cfg.cameras,
                image_size=cfg.image_size,
                image_augment=cfg.image_augment,
                augment_pad=cfg.augment_pad,
                **cfg.policy.shape_overrides(),
            )
        return TrainerConfig(
            method=cfg.method,
            policy=policy_config,  # type: ignore[arg-type]
            critic=cfg.critic,
            window=cfg.window,
            batch_size=cfg.batch_size,
            steps_per_round=cfg.steps_per_round,
            actor_lr=cfg.optimizer.actor_lr,
            weight_decay=cfg.optimizer.weight_decay,
            grad_clip=cfg.optimizer.grad_clip,
            seed=cfg.seed,
            device=self.dist.device(cfg.device),
            stale_cutoff=cfg.stale_cutoff,
            heldout_fraction=cfg.replay.heldout_fraction,
            recap_threshold_every=cfg.replay.recap_threshold_every,
            recap_heldout_windows=cfg.replay.recap_heldout_windows,
            checkpoint_dir=str(self.checkpoint_dir),
            log_dir=str(self.out_dir / "tensorboard"),
            progress=cfg.progress,
        )

    def _check_policy(self, origin: str, policy_config: FlowPolicyConfig) -> None:
        """Refuse a job whose config would change the shape of ``origin``'s model."""
        cfg = self.config
        changes = [
            f"policy.{k}: {getattr(policy_config, k)!r} -> {v!r}"
            for k, v in cfg.policy.shape_overrides().items()
            if getattr(policy_config, k) != v
        ]
        if tuple(policy_config.camera_names) != cfg.cameras:
            changes.append(
                f"policy.cameras: {list(policy_config.camera_names)} -> {list(cfg.cameras)}"
            )
        if cfg.cameras and policy_config.image_size != cfg.image_size:
            changes.append(f"policy.image_size: {policy_config.image_size} -> {cfg.image_size}")
        saved = Path(origin) / CONFIG_FILE
        if saved.is_file():
            changes += [
                c for c in shape_changes(json.loads(saved.read_text()), cfg) if c not in changes
            ]
        if changes:
            raise ValueError(
                f"{origin} was trained with another model shape; this config changes "
                + "; ".join(changes)
                + " (start a new out_dir to train another shape)"
            )

    def _ensure_trainer(self) -> Trainer:
        if self.trainer is not None:
            return self.trainer
        from habc_policy.core.checkpoint import latest_checkpoint, load_policy, read_manifest
        from habc_policy.core.configuration_flow import FlowPolicyConfig

        existing = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir.exists() else None
        existing = D.broadcast_object(self.dist, existing)  # every rank resumes rank 0's
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
                **self.config.policy.shape_overrides(),
            )
            origin = ""
        if origin:
            self._check_policy(origin, policy_config)
        self._check_store_matches(policy_config)
        trainer = Trainer.resume(
            self._trainer_config(policy_config), self.store, existing, dist=self.dist
        )
        if existing is None and self.config.init_checkpoint is not None:
            trainer.init_policy_from(self.config.init_checkpoint)
        trainer.checkpoint_json[CONFIG_FILE] = self.config.to_dict()
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

        episodes = [ep for _, ep in self.pending]
        self.store.add_episodes(episodes)
        trainer = self._ensure_trainer()
        try:
            summary = trainer.run_round(self.config.steps_per_round)
        except DivergedModelError:
            # No checkpoint from a diverged model; the next round starts again from the last
            # good one (LATEST), with these episodes already in the store.
            self.trainer = None
            trainer.close()
            self.consumed.update(p for p, _ in self.pending)
            self.pending = []
            self._save_state()
            raise
        summary.by_robot = self._robot_report(trainer, episodes)
        self.consumed.update(p for p, _ in self.pending)
        self.pending = []
        self.rounds_done += 1
        self._save_state()
        self.last_summary = summary
        return summary

    def _robot_report(self, trainer: Trainer, episodes: list[Episode]) -> tuple[str, ...]:
        """The round's episodes per robot (fleet ingest); also to TensorBoard ``fleet/*``."""
        if not self.config.fleet:
            return ()
        stats = fleet.robot_breakdown(episodes)
        writer = trainer.writer
        if writer is not None:
            for robot, s in stats.items():
                step = trainer.learner_step
                if s.rollouts:
                    writer.add_scalar(f"fleet/{robot}/success_rate", s.success_rate, step)
                writer.add_scalar(f"fleet/{robot}/takeovers", s.takeovers, step)
                writer.add_scalar(f"fleet/{robot}/episodes", s.rollouts + s.demonstrations, step)
            writer.flush()
        return tuple(s.line(robot) for robot, s in stats.items())

    def close(self) -> None:
        if self.trainer is not None:
            self.trainer.close()


def main(argv: list[str] | None = None) -> int:
    """``habc-learn``: see the module docstring and ``habc-learn --help``."""
    try:
        config = parse_cli(argv)
    except SystemExit as exc:  # --help (0) or a bad value (2), already printed
        return int(exc.code or 0)
    import torch

    torch.set_num_threads(config.torch_threads)
    yield_cpu(config.cpu_nice)
    missing = [str(d) for d in config.bag_dirs if not d.is_dir()]
    if missing:
        print(f"habc-learn: error: bag folder(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    dist = D.init(config.device)
    say = print if dist.is_main else (lambda *a, **k: None)
    try:
        job = LearnerJob(config, dist)
    except (ValueError, FileNotFoundError) as exc:
        print(f"habc-learn: error: {exc}", file=sys.stderr)
        D.shutdown()
        return 2
    if dist.enabled:
        say(f"habc-learn: {dist.world_size} processes, batch {config.batch_size} each", flush=True)
    rounds = 0
    try:
        while True:
            found = job.scan()
            for path, reason in found.skipped:
                say(f"habc-learn: skipped {path.name}: {reason}", flush=True)
            for path, episode_id, first in found.duplicates:
                say(f"habc-learn: duplicate episode {episode_id}: {path} (of {first})", flush=True)
            if found.used:
                say(
                    f"habc-learn: {len(found.used)} new episode(s), {len(job.pending)} pending",
                    flush=True,
                )
            if job.ready:
                summary = job.run_round()
                rounds += 1
                say(f"habc-learn: {summary.line()}", flush=True)
                say(f"habc-learn: checkpoint {summary.checkpoint}", flush=True)
                if not config.watch and rounds >= config.rounds:
                    return 0
            elif not config.watch:
                if rounds == 0:
                    if dist.is_main:
                        print(
                            f"habc-learn: {len(job.pending)} new episode(s) < min_new_episodes "
                            f"{config.min_new_episodes}: nothing to train",
                            file=sys.stderr,
                        )
                    return 1
                return 0
            else:
                time.sleep(config.poll_period_s)
    except KeyboardInterrupt:
        print("habc-learn: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    except ValueError as exc:  # e.g. a config that changes the checkpoint's model shape
        print(f"habc-learn: error: {exc}", file=sys.stderr)
        return 2
    finally:
        job.close()
        D.shutdown()


if __name__ == "__main__":
    sys.exit(main())

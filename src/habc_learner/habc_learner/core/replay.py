"""Replay store over many episodes: stale-rollout cutoff and batch sampling by data source.

Windows are kept columnar (:class:`~habc_learner.core.windows.WindowTable`); episode arrays are
concatenated once so a batch is a handful of vectorized gathers. Images stay behind each
episode's loaders (memory maps of the learner's image cache, or lazy bag readers) and are
loaded only for the sampled windows; the configured train-time augmentation runs here.

Stale-rollout cutoff (``HABC_METHOD.md``): a rollout window whose producing checkpoint is more
than ``stale_cutoff`` (10000) learner steps older than the current one is dropped. Demos are
never stale; which sources count as rollout data is ``ReplayConfig.stale_sources``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import Tensor

from habc_learner.core.episode import Episode, arm_of_dim
from habc_learner.core.labeling import Source, arm_target_mask, expand_arm_mask, label_episode
from habc_learner.core.windows import WindowConfig, WindowTable, episode_windows
from habc_policy.core.images import IMAGE_AUGMENTS, augment_images
from habc_policy.core.modeling_flow import tokenize_prompt

SPLITS = ("all", "train", "heldout")


@dataclass(frozen=True)
class ReplayConfig:
    """Attributes:
    window: windowing/labeling config.
    stale_cutoff: drop rollout windows whose checkpoint is more than this many learner steps
        older than the current one (10000).
    stale_sources: sources the cutoff applies to (rollout data; demos never go stale).
    heldout_fraction: fraction of rollout episodes (by a stable hash of the episode id) kept as
        the held-out split (Imit-Recap picks its threshold there).
    cameras: camera names to load for a batch (empty: state-only).
    prompt_buckets, prompt_max_tokens: prompt hashing (must match the policy config).
    image_augment, augment_pad: train-time augmentation of sampled images
        (:func:`habc_policy.core.images.augment_images`; the policy config's values).
    """

    window: WindowConfig = field(default_factory=WindowConfig)
    stale_cutoff: int = 10000
    stale_sources: tuple[str, ...] = (
        "rollout_success",
        "rollout_failure",
        "unlabeled",
        "intervention",
    )
    heldout_fraction: float = 0.1
    cameras: tuple[str, ...] = ()
    prompt_buckets: int = 1024
    prompt_max_tokens: int = 16
    image_augment: str = "none"
    augment_pad: int = 4

    def __post_init__(self) -> None:
        if self.image_augment not in IMAGE_AUGMENTS:
            raise ValueError(f"image_augment={self.image_augment!r} is not one of {IMAGE_AUGMENTS}")
        if self.stale_cutoff < 0:
            raise ValueError(f"stale_cutoff must be >= 0, got {self.stale_cutoff}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        object.__setattr__(self, "stale_sources", tuple(self.stale_sources))
        object.__setattr__(self, "cameras", tuple(self.cameras))
        for name in self.stale_sources:
            Source.parse(name)
        if Source.DEMO in {Source.parse(s) for s in self.stale_sources}:
            raise ValueError("stale_sources must not include 'demo': demonstrations never go stale")


@dataclass
class Batch:
    """A training batch (torch tensors; B windows).

    Observation fields are raw (unnormalized); the trainer normalizes.

    Attributes:
        proprio, next_proprio: q_t, q_n [B, p] float32.
        actions: A_t [B, H, d] float32 (padding repeats the last action).
        action_mask: m [B, H, d] bool; pad_mask: [B, H] bool, True on padding.
        prompt_tokens: [B, L] int64.
        images, next_images: camera -> uint8 [B, h, w, 3] (empty when state-only).
        source: [B] int64 Source codes; outcome_label: [B] float32 (-1 unlabeled).
        has_next, success_done, episode_success: [B] bool.
        step_cost, steps_to_go: [B] float32 (steps_to_go NaN outside successful episodes).
        recap_reward, recap_discount, recap_mc_return: [B] float32 (NaN without outcome).
        producer_step: [B] int64; heldout: [B] bool.
        window_index: [B] int64 row of each window in the store's table.
    """

    proprio: Tensor
    next_proprio: Tensor
    actions: Tensor
    action_mask: Tensor
    pad_mask: Tensor
    prompt_tokens: Tensor
    images: dict[str, Tensor]
    next_images: dict[str, Tensor]
    source: Tensor
    outcome_label: Tensor
    has_next: Tensor
    success_done: Tensor
    episode_success: Tensor
    step_cost: Tensor
    steps_to_go: Tensor
    recap_reward: Tensor
    recap_discount: Tensor
    recap_mc_return: Tensor
    producer_step: Tensor
    heldout: Tensor
    window_index: Tensor

    def __len__(self) -> int:
        return int(self.proprio.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        kwargs = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                kwargs[f.name] = {k: v.to(device) for k, v in value.items()}
            else:
                kwargs[f.name] = value.to(device)
        return Batch(**kwargs)


def is_heldout_episode(episode_id: str, fraction: float) -> bool:
    """Stable split: crc32(episode_id) decides membership of the held-out fraction."""
    return (zlib.crc32(episode_id.encode("utf-8")) % 10_000) < round(fraction * 10_000)


class ReplayStore:
    """Episodes, their windows, the stale cutoff and source-mixed sampling."""

    def __init__(self, config: ReplayConfig | None = None) -> None:
        self.config = config if config is not None else ReplayConfig()
        self._episodes: list[Episode] = []
        self._tables: list[WindowTable] = []
        self._heldout: list[bool] = []
        self._tokens: list[np.ndarray] = []
        self._dirty = True
        self._table = WindowTable.empty()
        self._index_cache: dict[tuple[str, int], np.ndarray] = {}
        self._stale_source_codes = np.array(
            [int(Source.parse(s)) for s in self.config.stale_sources], dtype=np.uint8
        )
        self._dropped = 0
        self._oldest_rollout_step: int | None = None

    # ----------------------------------------------------------------------------- building
    @property
    def episodes(self) -> list[Episode]:
        return list(self._episodes)

    @property
    def num_dropped(self) -> int:
        """Windows dropped by the stale cutoff so far."""
        return self._dropped

    def add_episode(self, episode: Episode) -> int:
        """Label, window and store ``episode``; return its index."""
        if self._episodes:
            first = self._episodes[0]
            if (episode.proprio_dim, episode.action_dim, episode.arm_slices) != (
                first.proprio_dim,
                first.action_dim,
                first.arm_slices,
            ):
                raise ValueError(
                    f"episode {episode.episode_id!r} has (proprio_dim, action_dim, arm_slices) = "
                    f"{(episode.proprio_dim, episode.action_dim, episode.arm_slices)}, the store "
                    f"holds {(first.proprio_dim, first.action_dim, first.arm_slices)}"
                )
        if any(e.episode_id == episode.episode_id for e in self._episodes):
            raise ValueError(f"episode id {episode.episode_id!r} is already in the store")
        missing = [c for c in self.config.cameras if c not in episode.images]
        if missing:
            raise ValueError(f"episode {episode.episode_id!r} lacks cameras {missing}")
        index = len(self._episodes)
        labels = label_episode(episode, self.config.window.labeling_config)
        self._episodes.append(episode)
        self._tables.append(episode_windows(episode, self.config.window, index, labels))
        self._heldout.append(
            (not episode.is_demonstration)
            and is_heldout_episode(episode.episode_id, self.config.heldout_fraction)
        )
        self._tokens.append(
            tokenize_prompt(
                episode.prompt, self.config.prompt_buckets, self.config.prompt_max_tokens
            )
        )
        self._dirty = True
        return index

    def window_robot_ids(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The robot id of each window at ``rows`` (all windows by default), through its
        episode (fleet ingest; "" for episodes of no fleet)."""
        self._rebuild()
        robots = np.array([e.robot_id for e in self._episodes] or [""], dtype=object)
        index = self._table.episode_index if rows is None else self._table.episode_index[rows]
        return robots[index]

    def add_episodes(self, episodes: Iterable[Episode]) -> None:
        for episode in episodes:
            self.add_episode(episode)

    def _rebuild(self) -> None:
        if not self._dirty:
            return
        self._table = WindowTable.concatenate(self._tables)
        if self._episodes:
            lengths = np.array([e.length for e in self._episodes], dtype=np.int64)
            self._offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            self._lengths = lengths
            self._proprio = np.concatenate([e.proprio for e in self._episodes])
            self._actions = np.concatenate([e.actions for e in self._episodes])
            self._authority = np.concatenate([e.authority for e in self._episodes])
            self._token_array = np.stack(self._tokens)
            self._heldout_array = np.array(self._heldout, dtype=bool)
            first = self._episodes[0]
            self._dim_arm = arm_of_dim(first.arm_slices, first.action_dim)
        candidates = np.isin(self._table.source, self._stale_source_codes) & (
            self._table.producer_step >= 0
        )
        self._oldest_rollout_step = (
            int(self._table.producer_step[candidates].min()) if candidates.any() else None
        )
        self._index_cache = {}
        self._dirty = False

    @property
    def table(self) -> WindowTable:
        """All windows currently in the store."""
        self._rebuild()
        return self._table

    def __len__(self) -> int:
        return len(self.table)

    # ----------------------------------------------------------------------------- stale cutoff
    def stale_mask(self, current_step: int) -> np.ndarray:
        """[N] bool: rollout windows produced more than ``stale_cutoff`` steps before now."""
        table = self.table
        return (
            np.isin(table.source, self._stale_source_codes)
            & (table.producer_step >= 0)
            & (current_step - table.producer_step > self.config.stale_cutoff)
        )

    def drop_stale(self, current_step: int) -> int:
        """Permanently drop stale rollout windows; return how many were dropped."""
        self._rebuild()
        oldest = self._oldest_rollout_step
        if oldest is None or current_step - oldest <= self.config.stale_cutoff:
            return 0  # fast path: called every learner step
        stale = self.stale_mask(current_step)
        count = int(stale.sum())
        if count == 0:
            return 0
        keep = ~stale
        episode_index = self._table.episode_index
        self._tables = [t.select(keep[episode_index == i]) for i, t in enumerate(self._tables)]
        self._dropped += count
        self._dirty = True
        return count

    # ----------------------------------------------------------------------------- sampling
    def _split_mask(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        table = self.table
        if split == "all" or len(table) == 0:
            return np.ones(len(table), dtype=bool)
        held = self._heldout_array[table.episode_index]
        return held if split == "heldout" else ~held

    def source_indices(self, source: Source | str, split: str = "all") -> np.ndarray:
        """Row indices of the windows of one source in a split."""
        code = int(Source.parse(source))
        key = (split, code)
        self._rebuild()
        if key not in self._index_cache:
            mask = (self._table.source == code) & self._split_mask(split)
            self._index_cache[key] = np.flatnonzero(mask)
        return self._index_cache[key]

    def source_counts(self, split: str = "all") -> dict[str, int]:
        return {s.name.lower(): len(self.source_indices(s, split)) for s in Source}

    def sample_indices(
        self,
        batch_size: int,
        mixing: Mapping[str, float],
        rng: np.random.Generator,
        proportional: bool = False,
        split: str = "all",
        fixed_shares: Mapping[str, float] | None = None,
    ) -> np.ndarray:
        """Draw ``batch_size`` window rows, mixing sources.

        Source s is drawn with probability ∝ ratio_s (× its window count when
        ``proportional``, i.e. uniform over the union of the listed sources). Sources without
        windows are skipped and the rest renormalized; within a source, rows are uniform with
        replacement. The per-source counts come from one multinomial draw, and rows are
        returned grouped by source.

        ``fixed_shares`` (source -> share of the batch, summing to < 1) pins those sources'
        probability whatever their window counts; the other sources of ``mixing`` share the
        remainder by the rule above. A pinned source without windows gives its share back to
        the rest (and when only pinned sources have windows, they are renormalized).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        fixed = dict(fixed_shares or {})
        if any(v < 0 for v in fixed.values()) or sum(fixed.values()) >= 1.0:
            raise ValueError(f"fixed_shares must be >= 0 and sum to < 1, got {fixed}")
        names, probs, pools, pinned = [], [], [], []
        for name, ratio in mixing.items():
            if ratio < 0:
                raise ValueError(f"mixing ratio for {name!r} must be >= 0, got {ratio}")
            pool = self.source_indices(name, split)
            if ratio == 0 or len(pool) == 0:
                continue
            names.append(name)
            probs.append(ratio * (len(pool) if proportional else 1.0))
            pools.append(pool)
            pinned.append(name in fixed)
        if not pools:
            raise ValueError(
                f"no windows to sample for sources {sorted(mixing)} in split {split!r}; "
                f"store has {self.source_counts(split)}"
            )
        p = np.asarray(probs, dtype=np.float64)
        is_pinned = np.asarray(pinned, dtype=bool)
        if is_pinned.any() and not is_pinned.all():
            free = p[~is_pinned] / p[~is_pinned].sum()
            pinned_share = np.asarray([fixed[n] for n, k in zip(names, pinned) if k])
            p = np.empty(len(names), dtype=np.float64)
            p[is_pinned] = pinned_share
            p[~is_pinned] = free * (1.0 - pinned_share.sum())
        elif is_pinned.all() and sum(fixed[n] for n in names) > 0:
            p = np.asarray([fixed[n] for n in names], dtype=np.float64)
        counts = rng.multinomial(batch_size, p / p.sum())
        rows = [pool[rng.integers(0, len(pool), size=c)] for pool, c in zip(pools, counts) if c > 0]
        return np.concatenate(rows)

    def gather(self, rows: np.ndarray, load_images: bool = True, next_images: bool = True) -> Batch:
        """Materialize the windows at table ``rows`` as a :class:`Batch`."""
        self._rebuild()
        rows = np.asarray(rows, dtype=np.int64)
        table = self._table.select(rows)
        horizon = self.config.window.horizon
        ep = table.episode_index
        offsets, lengths = self._offsets[ep], self._lengths[ep]
        step = table.anchor[:, None] + np.arange(horizon)
        valid = step < lengths[:, None]
        flat = offsets[:, None] + np.minimum(step, lengths[:, None] - 1)
        arm_mask = arm_target_mask(self._authority[flat], valid, table.mask_rule)
        action_mask = expand_arm_mask(arm_mask, self._dim_arm)
        images: dict[str, Tensor] = {}
        nxt_images: dict[str, Tensor] = {}
        if load_images and self.config.cameras:
            for cam in self.config.cameras:
                images[cam] = torch.from_numpy(self._load_images(cam, ep, table.anchor))
                if next_images:
                    nxt_images[cam] = torch.from_numpy(self._load_images(cam, ep, table.next_index))
        f32 = torch.float32
        return Batch(
            proprio=torch.from_numpy(self._proprio[offsets + table.anchor]),
            next_proprio=torch.from_numpy(self._proprio[offsets + table.next_index]),
            actions=torch.from_numpy(self._actions[flat]),
            action_mask=torch.from_numpy(action_mask),
            pad_mask=torch.from_numpy(~valid),
            prompt_tokens=torch.from_numpy(self._token_array[ep]),
            images=images,
            next_images=nxt_images,
            source=torch.from_numpy(table.source.astype(np.int64)),
            outcome_label=torch.from_numpy(table.outcome_label.astype(np.float32)),
            has_next=torch.from_numpy(table.has_next),
            success_done=torch.from_numpy(table.success_done),
            episode_success=torch.from_numpy(table.episode_success),
            step_cost=torch.from_numpy(table.step_cost).to(f32),
            steps_to_go=torch.from_numpy(table.steps_to_go).to(f32),
            recap_reward=torch.from_numpy(table.recap_reward).to(f32),
            recap_discount=torch.from_numpy(table.recap_discount).to(f32),
            recap_mc_return=torch.from_numpy(table.recap_mc_return).to(f32),
            producer_step=torch.from_numpy(table.producer_step),
            heldout=torch.from_numpy(self._heldout_array[ep]),
            window_index=torch.from_numpy(rows),
        )

    def _load_images(self, camera: str, episode_index: np.ndarray, steps: np.ndarray) -> np.ndarray:
        out: np.ndarray | None = None
        for e in np.unique(episode_index):
            sel = np.flatnonzero(episode_index == e)
            imgs = self._episodes[int(e)].load_images(camera, steps[sel])
            if out is None:
                out = np.empty((len(steps), *imgs.shape[1:]), dtype=np.uint8)
            out[sel] = imgs
        assert out is not None
        return out

    def sample(
        self,
        batch_size: int,
        mixing: Mapping[str, float],
        rng: np.random.Generator,
        proportional: bool = False,
        split: str = "all",
        load_images: bool = True,
        next_images: bool = True,
        augment: bool = False,
        shard: slice | None = None,
        augment_rng: np.random.Generator | None = None,
        fixed_shares: Mapping[str, float] | None = None,
    ) -> Batch:
        """:meth:`sample_indices` then :meth:`gather`; with ``augment``, the configured image
        augmentation (drawn from ``augment_rng``, default ``rng``, independently per sample and
        camera, s and s'). ``shard``: keep only these rows of the ``batch_size`` drawn (a
        data-parallel rank's share of the global batch, :mod:`habc_learner.core.distributed`)."""
        rows = self.sample_indices(batch_size, mixing, rng, proportional, split, fixed_shares)
        if shard is not None:
            rows = rows[shard]
        batch = self.gather(rows, load_images, next_images)
        if augment and self.config.image_augment != "none":
            kind, pad = self.config.image_augment, self.config.augment_pad
            aug_rng = rng if augment_rng is None else augment_rng
            for images in (batch.images, batch.next_images):
                for cam, value in images.items():
                    images[cam] = torch.from_numpy(
                        augment_images(value.numpy(), kind, pad, aug_rng)
                    )
        return batch

    def all_proprio_actions(
        self, sources: Sequence[Source | str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Proprio [M, p] and actions [M, d] of all steps (of demo episodes when ``sources`` is
        ``("demo",)`` and there are any): the normalization statistics' input."""
        if not self._episodes:
            raise ValueError("the replay store is empty")
        episodes = self._episodes
        if sources is not None and {Source.parse(s) for s in sources} == {Source.DEMO}:
            demos = [e for e in episodes if e.is_demonstration]
            episodes = demos or episodes
        return (
            np.concatenate([e.proprio for e in episodes]),
            np.concatenate([e.actions for e in episodes]),
        )

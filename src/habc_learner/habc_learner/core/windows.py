"""Training windows: anchor step t, chunk A_t = a_{t:t+H}, masks, next-state index, source.

One window per anchor step. Windows are stored columnar (:class:`WindowTable`, one row per
anchor); chunks and masks are gathered from the episode arrays only when a batch is drawn, so
a replay store of many episodes stays small. :func:`make_window` materializes a single window
with full arrays (tests, inspection).

Next state (``HABC_METHOD.md``, "one step" with stride Δ **(choice)**): n = min(t + Δ, T − 1),
clipped further to T_s in a successful episode so the TD chain ends exactly at the success
step; the step cost is n − t. The last step of an episode has no next state.

Imit-Recap rewards (Appendix A/F): r_t = −1 per step **(choice)**; in a successful episode r = 0
from the success step T_s on; a failed episode's terminal transition (t = T − 1) gets −C
(C = 100). The MC return G_t = Σ_k γ^(k−t) r_k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from habc_learner.core.episode import Episode, Outcome
from habc_learner.core.labeling import (
    EpisodeLabels,
    LabelingConfig,
    Source,
    chunk_indices,
    label_episode,
    window_action_mask,
)


@dataclass(frozen=True)
class WindowConfig:
    """Windowing configuration.

    Attributes:
        horizon: H, chunk length (50).
        stride: Δ, steps between s_t and its "next" state s_{t+Δ} for the one-step terms
            **(choice: 1)**; the step cost is Δ.
        min_human_steps: human steps that make an intervention window (10).
        labeling: ``"intervention_aware"`` (HABC) or ``"naive"`` (ablation / Imit-Recap).
        failed_corrections: ``"imitate"`` or ``"drop"`` the intervention windows of failed
            episodes (:class:`~habc_learner.core.labeling.LabelingConfig`).
        gamma: γ of the Imit-Recap parent value head (0.99).
        failure_penalty: C, −C is the reward of a failed episode's terminal transition (100).
    """

    horizon: int = 50
    stride: int = 1
    min_human_steps: int = 10
    labeling: str = "intervention_aware"
    failed_corrections: str = "imitate"
    gamma: float = 0.99
    failure_penalty: float = 100.0

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.failure_penalty < 0:
            raise ValueError(f"failure_penalty must be >= 0, got {self.failure_penalty}")
        self.labeling_config  # noqa: B018 (validates them)

    @property
    def labeling_config(self) -> LabelingConfig:
        return LabelingConfig(
            self.horizon, self.min_human_steps, self.labeling, self.failed_corrections
        )


@dataclass(frozen=True, eq=False)
class WindowTable:
    """Columnar windows, every field [N].

    Attributes:
        episode_index: index of the window's episode in its store (0 for a single episode).
        anchor: anchor step t.
        source: :class:`~habc_learner.core.labeling.Source` code.
        outcome_label: 0/1 outcome label, -1 when unlabeled (D_lab = label >= 0).
        mask_rule: :class:`~habc_learner.core.labeling.MaskRule` code.
        next_index: n, index of the next state s_n.
        has_next: False at the last step of the episode (advantages are 0 there).
        step_cost: n − t (Δ, shorter at the end).
        success_done: d_t, the anchor is at or past the success step T_s (efficiency target 0).
        episode_success: the episode succeeded.
        steps_to_go: T_s − t (≥ 0) in successful episodes, NaN otherwise (MC efficiency target).
        producer_step: learner step of the checkpoint that produced the window (-1: none).
        recap_reward: discounted reward from t to n (Imit-Recap), NaN without outcome label.
        recap_discount: γ^(n − t).
        recap_mc_return: G_t, NaN without outcome label.
    """

    episode_index: np.ndarray
    anchor: np.ndarray
    source: np.ndarray
    outcome_label: np.ndarray
    mask_rule: np.ndarray
    next_index: np.ndarray
    has_next: np.ndarray
    step_cost: np.ndarray
    success_done: np.ndarray
    episode_success: np.ndarray
    steps_to_go: np.ndarray
    producer_step: np.ndarray
    recap_reward: np.ndarray
    recap_discount: np.ndarray
    recap_mc_return: np.ndarray

    def __post_init__(self) -> None:
        n = self.anchor.shape[0]
        for f in fields(self):
            value = getattr(self, f.name)
            if value.shape != (n,):
                raise ValueError(f"WindowTable.{f.name} has shape {value.shape}, expected ({n},)")

    def __len__(self) -> int:
        return int(self.anchor.shape[0])

    def select(self, index: np.ndarray) -> WindowTable:
        """Rows by boolean mask or integer index."""
        return WindowTable(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def concatenate(cls, tables: Sequence[WindowTable]) -> WindowTable:
        if not tables:
            return cls.empty()
        return cls(
            **{f.name: np.concatenate([getattr(t, f.name) for t in tables]) for f in fields(cls)}
        )

    @classmethod
    def empty(cls) -> WindowTable:
        ints = ("episode_index", "anchor", "next_index", "producer_step")
        return cls(
            **{
                f.name: np.zeros(0, dtype=np.int64 if f.name in ints else np.float32)
                for f in fields(cls)
            }
        )


def recap_rewards(episode: Episode, failure_penalty: float) -> np.ndarray:
    """Per-step rewards r_t [T] of the parent value head: −1 per step (choice), 0 from T_s on in
    a success, −C on a failed episode's terminal transition; NaN when the outcome is unknown."""
    length = episode.length
    rewards = np.full(length, -1.0, dtype=np.float64)
    if episode.outcome is Outcome.SUCCESS:
        assert episode.success_step is not None  # set by Episode.__post_init__
        rewards[episode.success_step :] = 0.0
    elif episode.outcome is Outcome.FAILURE:
        rewards[-1] = -failure_penalty
    else:
        rewards[:] = np.nan
    return rewards


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + γ G_{t+1}, G_T = 0, [T]."""
    returns = np.zeros(rewards.shape[0] + 1, dtype=np.float64)
    for t in range(rewards.shape[0] - 1, -1, -1):
        returns[t] = rewards[t] + gamma * returns[t + 1]
    return returns[:-1]


def episode_windows(
    episode: Episode,
    config: WindowConfig,
    episode_index: int = 0,
    labels: EpisodeLabels | None = None,
) -> WindowTable:
    """One window per anchor step of ``episode`` (all T of them, every source)."""
    if labels is None:
        labels = label_episode(episode, config.labeling_config)
    length = episode.length
    t = np.arange(length, dtype=np.int64)
    success = episode.outcome is Outcome.SUCCESS
    next_index = np.minimum(t + config.stride, length - 1)
    if success:
        assert episode.success_step is not None
        t_s = episode.success_step
        next_index = np.where(t < t_s, np.minimum(next_index, t_s), next_index)
        steps_to_go = np.maximum(t_s - t, 0).astype(np.float32)
        success_done = t >= t_s
    else:
        steps_to_go = np.full(length, np.nan, dtype=np.float32)
        success_done = np.zeros(length, dtype=bool)
    has_next = t < length - 1
    step_cost = (next_index - t).astype(np.float32)
    rewards = recap_rewards(episode, config.failure_penalty)
    returns = discounted_returns(rewards, config.gamma)
    returns_ext = np.concatenate([returns, [0.0]])
    discount = config.gamma ** (next_index - t).astype(np.float64)
    # Discounted reward from t to n: G_t − γ^(n−t) G_n (n = t at the end: the terminal reward).
    reward_to_next = np.where(has_next, returns - discount * returns_ext[next_index], rewards)
    producer = np.where(
        episode.learner_steps >= 0, episode.learner_steps, episode.producer_learner_step()
    ).astype(np.int64)
    if episode.is_demonstration:
        producer[:] = -1
    return WindowTable(
        episode_index=np.full(length, episode_index, dtype=np.int64),
        anchor=t,
        source=labels.source.astype(np.uint8),
        outcome_label=labels.outcome_label.astype(np.int8),
        mask_rule=labels.mask_rule.astype(np.uint8),
        next_index=next_index.astype(np.int64),
        has_next=has_next,
        step_cost=step_cost,
        success_done=success_done,
        episode_success=np.full(length, success, dtype=bool),
        steps_to_go=steps_to_go,
        producer_step=producer,
        recap_reward=reward_to_next.astype(np.float32),
        recap_discount=discount.astype(np.float32),
        recap_mc_return=returns.astype(np.float32),
    )


@dataclass(frozen=True, eq=False)
class Window:
    """One materialized window (for tests and inspection).

    Attributes:
        episode_id, anchor, source, outcome_label: as in :class:`WindowTable`.
        proprio: q_t [p]; next_proprio: q_n [p]; next_index: n; has_next.
        actions: A_t [H, d], padded with the last action past the episode end.
        pad_mask: [H] True on padded steps.
        action_mask: [H, d] per-step, per-dimension target mask m.
        producer_step: learner step of the producing checkpoint.
    """

    episode_id: str
    anchor: int
    source: Source
    outcome_label: int
    proprio: np.ndarray
    next_proprio: np.ndarray
    next_index: int
    has_next: bool
    actions: np.ndarray
    pad_mask: np.ndarray
    action_mask: np.ndarray
    producer_step: int


def make_window(
    episode: Episode, anchor: int, config: WindowConfig, labels: EpisodeLabels | None = None
) -> Window:
    """Materialize the window anchored at ``anchor``."""
    if not 0 <= anchor < episode.length:
        raise ValueError(f"anchor={anchor} is outside [0, {episode.length})")
    if labels is None:
        labels = label_episode(episode, config.labeling_config)
    table = episode_windows(episode, config, labels=labels).select(np.array([anchor]))
    idx, valid = chunk_indices(anchor, config.horizon, episode.length)
    return Window(
        episode_id=episode.episode_id,
        anchor=anchor,
        source=Source(int(table.source[0])),
        outcome_label=int(table.outcome_label[0]),
        proprio=episode.proprio[anchor],
        next_proprio=episode.proprio[int(table.next_index[0])],
        next_index=int(table.next_index[0]),
        has_next=bool(table.has_next[0]),
        actions=episode.actions[idx],
        pad_mask=~valid,
        action_mask=window_action_mask(episode, labels, anchor, config.horizon),
        producer_step=int(table.producer_step[0]),
    )

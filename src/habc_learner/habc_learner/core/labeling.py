"""Controller segments and intervention-aware credit assignment (paper §3.3, Appendix D).

Rules (``HABC_METHOD.md``):

- Fully autonomous episode: every policy window gets the outcome label z_e.
- Episode with ≥ 1 intervention: only windows anchored in the post-intervention policy suffix
  get z_e; earlier policy windows stay **unlabeled** (no critic label, no actor weight).
- Intervention window: ≥ 10 human-controlled steps among its H = 50. Never outcome-labeled;
  imitation data (only human-controlled steps/arms are targets) and, in successful episodes,
  progress targets for the efficiency head.
- Aborted / unknown outcomes are never outcome-labeled.
- Naive labeling (ablation): every rollout window gets z_e.

A step counts as human-controlled when at least one arm is under HUMAN authority; per-arm
action masks then keep only that arm's dimensions as targets.

Hand-back ramp ticks (HANDBACK: the arbiter blends the operator's last action into the
policy's after a takeover) are nobody's decision: they are part of the intervention for the
suffix rule (the suffix starts after the ramp), they never count as human steps of an
intervention window, they anchor no labeled window, and no mask rule makes them a target.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from habc_learner.core.episode import HANDBACK, HUMAN, NONE, POLICY, Episode, Outcome, arm_of_dim

LABELING_MODES = ("intervention_aware", "naive")
FAILED_CORRECTIONS = ("imitate", "drop")


class Source(enum.IntEnum):
    """Data source of a window (the anchor's role), the key of the weight table."""

    DEMO = 0
    ROLLOUT_SUCCESS = 1  # outcome-labeled policy window of a successful episode
    ROLLOUT_FAILURE = 2  # outcome-labeled policy window of a failed episode
    UNLABELED = 3  # policy window without outcome label (pre-intervention, or unknown outcome)
    INTERVENTION = 4  # >= min_human_steps human steps in the window

    @classmethod
    def parse(cls, name: str | int | Source) -> Source:
        if isinstance(name, Source):
            return name
        if isinstance(name, int):
            return cls(name)
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(
                f"source {name!r} is not one of {[s.name.lower() for s in cls]}"
            ) from None


class MaskRule(enum.IntEnum):
    """Which steps/arms of a window's action chunk are targets."""

    ALL_VALID = 0  # demonstrations: every non-padded step
    POLICY = 1  # policy windows: steps/arms under POLICY authority
    HUMAN = 2  # intervention windows: steps/arms under HUMAN authority
    ANY_CONTROLLER = 3  # naive labeling: steps/arms under POLICY or HUMAN (never HANDBACK)


@dataclass(frozen=True)
class Segment:
    """Maximal run [start, stop) of steps under one controller (NONE / POLICY / HUMAN)."""

    controller: int
    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class LabelingConfig:
    """Attributes: horizon H (50); min_human_steps (10) of an intervention window; mode
    ``"intervention_aware"`` (HABC) or ``"naive"`` (ablation, Imit-Recap); failed_corrections
    ``"imitate"`` (the paper: every intervention window is imitation data, whatever the
    outcome) or ``"drop"`` (the intervention windows of a failed episode stay unlabeled: an
    operator's correction that did not save the episode is not imitated)."""

    horizon: int = 50
    min_human_steps: int = 10
    mode: str = "intervention_aware"
    failed_corrections: str = "imitate"

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if not 1 <= self.min_human_steps <= self.horizon:
            raise ValueError(
                f"min_human_steps must be in [1, horizon={self.horizon}], "
                f"got {self.min_human_steps}"
            )
        if self.mode not in LABELING_MODES:
            raise ValueError(f"labeling mode {self.mode!r} is not one of {LABELING_MODES}")
        if self.failed_corrections not in FAILED_CORRECTIONS:
            raise ValueError(
                f"failed_corrections {self.failed_corrections!r} is not one of {FAILED_CORRECTIONS}"
            )


def step_controllers(authority: np.ndarray) -> np.ndarray:
    """Collapse per-arm authority [T, n_arms] to one controller per step [T] uint8.

    HUMAN if any arm is human-controlled, else HANDBACK if any arm is in the hand-back ramp,
    else POLICY if any arm is policy-controlled, else NONE.
    """
    authority = np.asarray(authority)
    if authority.ndim != 2:
        raise ValueError(f"authority must be [T, n_arms], got shape {authority.shape}")
    out = np.full(authority.shape[0], NONE, dtype=np.uint8)
    out[(authority == POLICY).any(axis=1)] = POLICY
    out[(authority == HANDBACK).any(axis=1)] = HANDBACK
    out[(authority == HUMAN).any(axis=1)] = HUMAN
    return out


def segment_controllers(authority: np.ndarray) -> list[Segment]:
    """Split an episode into maximal controller segments (on :func:`step_controllers`)."""
    ctrl = step_controllers(authority)
    if ctrl.size == 0:
        return []
    change = np.flatnonzero(np.diff(ctrl.astype(np.int16))) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [ctrl.size]])
    return [Segment(int(ctrl[s]), int(s), int(e)) for s, e in zip(starts, stops)]


def post_intervention_suffix_start(authority: np.ndarray) -> int:
    """First step after the last human-controlled or hand-back step (0 if the episode has none).

    Equals T when a takeover (or its hand-back ramp) runs to the end (no policy suffix).
    """
    ctrl = step_controllers(authority)
    intervened = (ctrl == HUMAN) | (ctrl == HANDBACK)
    if not intervened.any():
        return 0
    return int(np.flatnonzero(intervened)[-1]) + 1


def human_steps_in_window(authority: np.ndarray, horizon: int) -> np.ndarray:
    """Number of human-controlled steps in steps [t, min(t + H, T)) for every anchor t, [T]."""
    human = (step_controllers(authority) == HUMAN).astype(np.int64)
    csum = np.concatenate([[0], np.cumsum(human)])
    t = np.arange(human.size)
    return csum[np.minimum(t + horizon, human.size)] - csum[t]


def intervention_window_anchors(
    authority: np.ndarray, horizon: int = 50, min_human_steps: int = 10
) -> np.ndarray:
    """[T] bool: the window anchored at t has at least ``min_human_steps`` human steps."""
    return human_steps_in_window(authority, horizon) >= min_human_steps


@dataclass(frozen=True, eq=False)
class EpisodeLabels:
    """Per-anchor labels of one episode (all arrays [T]).

    Attributes:
        source: :class:`Source` code per anchor.
        outcome_label: z_e as 0/1 where outcome-labeled, -1 elsewhere.
        mask_rule: :class:`MaskRule` code per anchor.
        human_count: human steps in the window anchored at t.
        suffix_start: first step of the post-intervention policy suffix (0 when autonomous,
            T when a takeover runs to the end).
    """

    source: np.ndarray
    outcome_label: np.ndarray
    mask_rule: np.ndarray
    human_count: np.ndarray
    suffix_start: int

    @property
    def is_labeled(self) -> np.ndarray:
        return self.outcome_label >= 0


def label_episode(episode: Episode, config: LabelingConfig) -> EpisodeLabels:
    """Label every anchor of ``episode`` with its source, outcome label and mask rule."""
    length = episode.length
    authority = episode.authority
    human_count = human_steps_in_window(authority, config.horizon)
    suffix_start = post_intervention_suffix_start(authority)
    source = np.full(length, Source.UNLABELED, dtype=np.uint8)
    outcome_label = np.full(length, -1, dtype=np.int8)
    mask_rule = np.full(length, MaskRule.POLICY, dtype=np.uint8)
    z = 1 if episode.outcome is Outcome.SUCCESS else 0
    labeled_source = Source.ROLLOUT_SUCCESS if z else Source.ROLLOUT_FAILURE

    if episode.is_demonstration:
        source[:] = Source.DEMO
        mask_rule[:] = MaskRule.ALL_VALID
    elif config.mode == "naive":
        mask_rule[:] = MaskRule.ANY_CONTROLLER
        if episode.outcome.is_labeled:
            source[:] = labeled_source
            outcome_label[:] = z
    else:
        ctrl = step_controllers(authority)
        intervention = human_count >= config.min_human_steps
        t = np.arange(length)
        labeled = (ctrl == POLICY) & (t >= suffix_start) & ~intervention
        if episode.outcome.is_labeled:
            source[labeled] = labeled_source
            outcome_label[labeled] = z
        failed = episode.outcome is Outcome.FAILURE
        if not (failed and config.failed_corrections == "drop"):
            source[intervention] = Source.INTERVENTION
            mask_rule[intervention] = MaskRule.HUMAN
    return EpisodeLabels(
        source=source,
        outcome_label=outcome_label,
        mask_rule=mask_rule,
        human_count=human_count,
        suffix_start=suffix_start,
    )


def arm_target_mask(authority: np.ndarray, valid: np.ndarray, rule: np.ndarray) -> np.ndarray:
    """Per-step, per-arm target mask under each window's :class:`MaskRule`.

    Args:
        authority: [..., H, n_arms] authority of the chunk's steps.
        valid: [..., H] bool, False on padding past the episode end.
        rule: [...] mask rule per window.

    Returns:
        [..., H, n_arms] bool.
    """
    rule = np.asarray(rule)[..., None, None]
    valid = np.asarray(valid)[..., None]
    mask = np.where(
        rule == MaskRule.POLICY,
        authority == POLICY,
        np.where(
            rule == MaskRule.HUMAN,
            authority == HUMAN,
            np.where(
                rule == MaskRule.ANY_CONTROLLER,
                (authority == POLICY) | (authority == HUMAN),
                authority != HANDBACK,
            ),
        ),
    )
    return mask & valid


def expand_arm_mask(arm_mask: np.ndarray, dim_arm: np.ndarray) -> np.ndarray:
    """[..., n_arms] per-arm mask -> [..., d] per-dimension mask (``dim_arm`` [d] arm index)."""
    return arm_mask[..., np.asarray(dim_arm)]


def chunk_indices(
    anchor: np.ndarray | int, horizon: int, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Step indices of chunks a_{t:t+H}, clipped to T-1 (padding repeats the last action).

    Returns (indices [..., H], valid [..., H]).
    """
    idx = np.asarray(anchor)[..., None] + np.arange(horizon)
    return np.minimum(idx, length - 1), idx < length


def window_action_mask(
    episode: Episode, labels: EpisodeLabels, anchor: int, horizon: int
) -> np.ndarray:
    """Per-step, per-dimension target mask [H, d] of the window anchored at ``anchor``."""
    idx, valid = chunk_indices(anchor, horizon, episode.length)
    arm_mask = arm_target_mask(episode.authority[idx], valid, labels.mask_rule[anchor])
    return expand_arm_mask(arm_mask, arm_of_dim(episode.arm_slices, episode.action_dim))


def label_counts(
    labels: EpisodeLabels, sources: Sequence[Source] = tuple(Source)
) -> dict[str, int]:
    """Number of anchors per source name (for logging)."""
    return {s.name.lower(): int((labels.source == s).sum()) for s in sources}

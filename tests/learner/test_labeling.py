"""Credit assignment on crafted episodes (H = 50, intervention windows: >= 10 human steps)."""

from __future__ import annotations

import numpy as np
import pytest

from habc_learner.core.episode import HUMAN, NONE, POLICY, Outcome, synthetic_episode
from habc_learner.core.labeling import (
    LabelingConfig,
    Source,
    label_episode,
    post_intervention_suffix_start,
    segment_controllers,
    window_action_mask,
)

CFG = LabelingConfig(horizon=50, min_human_steps=10)


def anchors(labels, source: Source) -> list[int]:
    return np.flatnonzero(labels.source == source).tolist()


def rng_(a: int, b: int) -> list[int]:
    """Inclusive integer range."""
    return list(range(a, b + 1))


def test_autonomous_success_labels_every_window() -> None:
    ep = synthetic_episode([("policy", 100)], "success")
    labels = label_episode(ep, CFG)
    assert anchors(labels, Source.ROLLOUT_SUCCESS) == rng_(0, 99)
    assert (labels.outcome_label == 1).all()
    mask = window_action_mask(ep, labels, 80, 50)
    assert mask[:20].all() and not mask[20:].any()  # padding past the end is masked


def test_autonomous_failure_labels_every_window_zero() -> None:
    labels = label_episode(synthetic_episode([("policy", 100)], "failure"), CFG)
    assert anchors(labels, Source.ROLLOUT_FAILURE) == rng_(0, 99)
    assert (labels.outcome_label == 0).all()


def test_one_takeover_then_success_labels_only_the_suffix() -> None:
    ep = synthetic_episode([("policy", 100), ("human", 20), ("policy", 80)], "success")
    labels = label_episode(ep, CFG)
    assert labels.suffix_start == 120
    assert anchors(labels, Source.ROLLOUT_SUCCESS) == rng_(120, 199)
    # Window [t, t+50) holds >= 10 of the human steps 100..119 iff 60 <= t <= 110.
    assert anchors(labels, Source.INTERVENTION) == rng_(60, 110)
    assert anchors(labels, Source.UNLABELED) == rng_(0, 59) + rng_(111, 119)
    assert (labels.outcome_label[:120] == -1).all()
    # Intervention windows imitate only the human-controlled steps.
    mask = window_action_mask(ep, labels, 90, 50)
    assert not mask[:10].any() and mask[10:30].all() and not mask[30:].any()


def test_one_takeover_then_failure() -> None:
    ep = synthetic_episode([("policy", 100), ("human", 20), ("policy", 80)], "failure")
    labels = label_episode(ep, CFG)
    assert anchors(labels, Source.ROLLOUT_FAILURE) == rng_(120, 199)
    assert anchors(labels, Source.INTERVENTION) == rng_(60, 110)
    assert (labels.outcome_label[120:] == 0).all() and (labels.outcome_label[:120] == -1).all()


def test_two_takeovers_label_after_the_last() -> None:
    ep = synthetic_episode(
        [("policy", 40), ("human", 20), ("policy", 40), ("human", 20), ("policy", 80)], "success"
    )
    labels = label_episode(ep, CFG)
    assert labels.suffix_start == 120
    assert anchors(labels, Source.ROLLOUT_SUCCESS) == rng_(120, 199)
    # The middle policy segment (60..99) is never outcome-labeled.
    assert (labels.outcome_label[60:100] == -1).all()
    # Human steps 40..59 and 100..119; anchors 51..59 see 60 - t + t - 50 = 10 of them together.
    assert anchors(labels, Source.INTERVENTION) == rng_(0, 110)


def test_takeover_running_to_the_end_has_no_labeled_window() -> None:
    ep = synthetic_episode([("policy", 50), ("human", 50)], "success")
    labels = label_episode(ep, CFG)
    assert labels.suffix_start == 100
    assert not labels.is_labeled.any()
    assert anchors(labels, Source.INTERVENTION) == rng_(10, 90)
    assert anchors(labels, Source.UNLABELED) == rng_(0, 9) + rng_(91, 99)


def test_one_arm_takeover_masks_only_that_arm() -> None:
    ep = synthetic_episode(
        [("policy", 40), (("human", "policy"), 30), ("policy", 60)],
        "success",
        arm_slices=((0, 7), (7, 14)),
    )
    labels = label_episode(ep, CFG)
    assert labels.suffix_start == 70
    assert anchors(labels, Source.ROLLOUT_SUCCESS) == rng_(70, 129)
    assert anchors(labels, Source.INTERVENTION) == rng_(0, 60)
    mask = window_action_mask(ep, labels, 30, 50)  # steps 30..79, human arm 0 at 40..69
    assert mask[10:40, :7].all() and not mask[10:40, 7:].any()
    assert not mask[:10].any() and not mask[40:].any()
    labeled = window_action_mask(ep, labels, 70, 50)
    assert labeled[:50].all()


@pytest.mark.parametrize(("human_steps", "expected"), [(9, []), (10, rng_(20, 60))])
def test_exactly_9_vs_10_human_steps(human_steps: int, expected: list[int]) -> None:
    ep = synthetic_episode([("policy", 60), ("human", human_steps), ("policy", 60)], "success")
    labels = label_episode(ep, CFG)
    assert anchors(labels, Source.INTERVENTION) == expected
    # Either way it is an intervention: only the suffix is labeled.
    assert anchors(labels, Source.ROLLOUT_SUCCESS) == rng_(60 + human_steps, 119 + human_steps)


@pytest.mark.parametrize("outcome", ["aborted", "unknown"])
def test_aborted_and_unknown_are_never_outcome_labeled(outcome: str) -> None:
    ep = synthetic_episode([("policy", 60), ("human", 20), ("policy", 60)], outcome)
    for mode in ("intervention_aware", "naive"):
        labels = label_episode(ep, LabelingConfig(mode=mode))
        assert not labels.is_labeled.any()
        assert not np.isin(labels.source, [Source.ROLLOUT_SUCCESS, Source.ROLLOUT_FAILURE]).any()


def test_naive_labeling_labels_every_window() -> None:
    ep = synthetic_episode([("policy", 60), ("human", 20), ("policy", 60)], "success")
    labels = label_episode(ep, LabelingConfig(mode="naive"))
    assert anchors(labels, Source.ROLLOUT_SUCCESS) == rng_(0, 139)
    mask = window_action_mask(ep, labels, 40, 50)
    assert mask.all()  # policy and human steps are both targets


def test_demo_windows() -> None:
    ep = synthetic_episode([("human", 80)], "success", is_demonstration=True)
    labels = label_episode(ep, CFG)
    assert anchors(labels, Source.DEMO) == rng_(0, 79)
    assert not labels.is_labeled.any()
    assert window_action_mask(ep, labels, 0, 50).all()


def test_hold_steps_are_not_labeled_and_not_targets() -> None:
    ep = synthetic_episode([("policy", 30), ("none", 5), ("policy", 30)], "success")
    labels = label_episode(ep, CFG)
    assert anchors(labels, Source.ROLLOUT_SUCCESS) == rng_(0, 29) + rng_(35, 64)
    mask = window_action_mask(ep, labels, 25, 50)
    assert mask[:5].all() and not mask[5:10].any() and mask[10:40].all()


def test_segments_and_suffix() -> None:
    auth = np.array([[POLICY]] * 3 + [[HUMAN]] * 2 + [[NONE]] + [[POLICY]] * 4, dtype=np.uint8)
    segs = segment_controllers(auth)
    assert [(s.controller, s.start, s.stop) for s in segs] == [
        (POLICY, 0, 3),
        (HUMAN, 3, 5),
        (NONE, 5, 6),
        (POLICY, 6, 10),
    ]
    assert post_intervention_suffix_start(auth) == 5
    assert post_intervention_suffix_start(auth[:3]) == 0


def test_labeling_config_validation() -> None:
    with pytest.raises(ValueError, match="naive"):
        LabelingConfig(mode="smart")
    with pytest.raises(ValueError, match="min_human_steps"):
        LabelingConfig(horizon=5, min_human_steps=10)
    assert Outcome.parse("success") is Outcome.SUCCESS


# Hand-back ramp ticks: nobody's decision -------------------------------------------------
def test_handback_ramp_is_neither_label_nor_target() -> None:
    """policy 0..99, human 100..119, hand-back ramp 120..144, policy 145..224, success."""
    ep = synthetic_episode(
        [("policy", 100), ("human", 20), ("handback", 25), ("policy", 80)], "success"
    )
    labels = label_episode(ep, CFG)
    # The suffix starts after the ramp, not after the last human step.
    assert labels.suffix_start == 145
    assert anchors(labels, Source.ROLLOUT_SUCCESS) == rng_(145, 224)
    # Only the 20 human steps count toward an intervention window: [t, t+50) holds >= 10 of
    # 100..119 iff 60 <= t <= 110, exactly as without a ramp.
    assert anchors(labels, Source.INTERVENTION) == rng_(60, 110)
    assert anchors(labels, Source.UNLABELED) == rng_(0, 59) + rng_(111, 144)
    # The intervention window anchored at 110 imitates human steps 110..119 only; the ramp
    # 120..144 and the policy steps after it are not targets.
    mask = window_action_mask(ep, labels, 110, 50)
    assert mask[:10].all() and not mask[10:].any()
    # A suffix window whose chunk reaches back into... (none can: chunks run forward); a naive
    # window over the ramp masks the ramp out.
    naive = label_episode(ep, LabelingConfig(mode="naive"))
    mask = window_action_mask(ep, naive, 100, 50)
    assert mask[:20].all() and not mask[20:45].any() and mask[45:].all()


def test_a_ramp_alone_is_no_intervention() -> None:
    """25 ramp ticks clear the 10-step threshold only if they count as human: they must not."""
    ep = synthetic_episode([("policy", 50), ("handback", 25), ("policy", 50)], "success")
    labels = label_episode(ep, CFG)
    assert not (labels.source == Source.INTERVENTION).any()
    assert labels.suffix_start == 75
    assert anchors(labels, Source.ROLLOUT_SUCCESS) == rng_(75, 124)


def test_failed_corrections_can_be_left_out() -> None:
    ep = synthetic_episode(
        [("policy", 100), ("human", 20), ("handback", 25), ("policy", 80)], "failure"
    )
    paper = label_episode(ep, CFG)
    drop = label_episode(ep, LabelingConfig(failed_corrections="drop"))
    assert anchors(paper, Source.INTERVENTION) == rng_(60, 110)
    assert not (drop.source == Source.INTERVENTION).any()
    assert anchors(drop, Source.UNLABELED) == rng_(0, 144)
    # The suffix keeps its failure label either way.
    assert anchors(drop, Source.ROLLOUT_FAILURE) == rng_(145, 224)
    # A successful episode's corrections are imitated under both rules.
    ok = synthetic_episode([("policy", 100), ("human", 20), ("policy", 80)], "success")
    assert anchors(
        label_episode(ok, LabelingConfig(failed_corrections="drop")), Source.INTERVENTION
    )
    with pytest.raises(ValueError, match="failed_corrections"):
        LabelingConfig(failed_corrections="maybe")

"""Property tests: where outcome labels may land, and what Eq. 8 normalization preserves."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from habc_learner.core.episode import HUMAN, POLICY, Outcome, synthetic_episode
from habc_learner.core.labeling import (
    LabelingConfig,
    MaskRule,
    Source,
    human_steps_in_window,
    label_episode,
    window_action_mask,
)
from habc_learner.core.weights import normalize_weights

ARM_CONTROLLERS = st.sampled_from(["policy", "human", "none"])
SEGMENT = st.tuples(
    st.one_of(ARM_CONTROLLERS, st.tuples(ARM_CONTROLLERS, ARM_CONTROLLERS)),
    st.integers(min_value=1, max_value=40),
)


@settings(max_examples=150, deadline=None)
@given(
    segments=st.lists(SEGMENT, min_size=1, max_size=6),
    outcome=st.sampled_from(list(Outcome)),
    horizon=st.sampled_from([10, 25, 50]),
)
def test_outcome_labels_only_on_post_intervention_policy_anchors(
    segments, outcome, horizon
) -> None:
    ep = synthetic_episode(segments, outcome, arm_slices=((0, 3), (3, 6)))
    cfg = LabelingConfig(horizon=horizon, min_human_steps=min(10, horizon))
    labels = label_episode(ep, cfg)
    human = (ep.authority == HUMAN).any(axis=1)
    last_human = int(np.flatnonzero(human)[-1]) if human.any() else -1
    labeled = np.flatnonzero(labels.outcome_label >= 0)
    # Never anchored before (or at) the last intervention step, never on a human-controlled step.
    assert (labeled > last_human).all()
    assert not human[labeled].any()
    assert ((ep.authority[labeled] == POLICY).any(axis=1)).all()
    # Intervention windows are never outcome-labeled, and only labeled outcomes produce labels.
    interv = labels.source == Source.INTERVENTION
    assert (labels.outcome_label[interv] == -1).all()
    assert (interv == (human_steps_in_window(ep.authority, horizon) >= cfg.min_human_steps)).all()
    if not outcome.is_labeled:
        assert labeled.size == 0
    # Targets of a labeled window never include a human-controlled arm-step; targets of an
    # intervention window are exactly human-controlled arm-steps.
    for t in labeled[:: max(1, labeled.size // 5)]:
        mask = window_action_mask(ep, labels, int(t), horizon)
        steps = np.minimum(np.arange(t, t + horizon), ep.length - 1)
        arm_of = np.repeat([0, 1], 3)
        assert not (mask & (ep.authority[steps][:, arm_of] == HUMAN)).any()
    for t in np.flatnonzero(interv)[::7]:
        assert labels.mask_rule[t] == MaskRule.HUMAN
        mask = window_action_mask(ep, labels, int(t), horizon)
        steps = np.arange(t, t + horizon)
        valid = steps < ep.length
        arm_of = np.repeat([0, 1], 3)
        expected = (ep.authority[np.minimum(steps, ep.length - 1)][:, arm_of] == HUMAN) & valid[
            :, None
        ]
        assert (mask == expected).all()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.just(0.0), st.floats(min_value=1e-3, max_value=2.0)), min_size=1, max_size=64
    )
)
def test_normalized_weights_unit_mean_over_valid_and_zeros_stay_zero(values) -> None:
    w_tilde = torch.tensor(values, dtype=torch.float64)
    w = normalize_weights(w_tilde)
    valid = w_tilde > 0
    assert (w[~valid] == 0).all()
    assert (w[valid] > 0).all()
    if valid.any():
        assert abs(float(w[valid].mean()) - 1.0) < 1e-9
        # Ratios between valid samples are preserved.
        ratio = w[valid] / w_tilde[valid]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio))

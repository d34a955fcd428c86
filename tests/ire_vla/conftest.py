"""Shared fixtures of the iRe-VLA tests: one thread, tiny models."""

from __future__ import annotations

import pytest
import torch

from habc_learner.core.critic import CriticConfig
from habc_policy.core.configuration_flow import FlowPolicyConfig


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def tiny_policy_config() -> FlowPolicyConfig:
    """A small actor for 14-dim bimanual chunks of H = 50 (fast on CPU)."""
    return FlowPolicyConfig(
        horizon=50,
        action_dim=14,
        proprio_dim=15,
        feature_dim=32,
        hidden_dim=64,
        num_blocks=2,
        time_embed_dim=16,
        prompt_dim=8,
        prompt_buckets=64,
    )


@pytest.fixture
def tiny_critic_config() -> CriticConfig:
    return CriticConfig(hidden_dim=32, num_layers=1)

"""Shared pytest fixtures.

ROS isolation: every pytest run takes a ROS domain id no other habc test run on this machine
holds (a lock file per id), and discovery is loopback-only, so parallel runs never talk to each
other or leave the machine. Child processes inherit the environment set here.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from habc_learner.core.critic import CriticConfig
from habc_policy.core.configuration_flow import FlowPolicyConfig

REPO_ROOT = Path(__file__).resolve().parents[1]

_DOMAIN_LOCK = None  # keeps the lock file open (and held) for the whole run


def _claim_ros_domain() -> int:
    """Lock and return the first free ROS domain id in 1..100 (valid for loopback on any rmw)."""
    global _DOMAIN_LOCK
    lock_dir = Path(tempfile.gettempdir()) / "habc_ros_domains"
    lock_dir.mkdir(exist_ok=True)
    for domain in range(1, 101):
        handle = open(lock_dir / f"{domain}.lock", "w")  # noqa: SIM115 - held for the session
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _DOMAIN_LOCK = handle
        return domain
    raise RuntimeError(f"all ROS domain ids 1..100 are held by other test runs ({lock_dir})")


def pytest_configure(config: pytest.Config) -> None:
    # Before any test imports rclpy: rclpy reads these when a context is initialised.
    if "HABC_TEST_ROS_DOMAIN_ID" not in os.environ:
        os.environ["HABC_TEST_ROS_DOMAIN_ID"] = str(_claim_ros_domain())
    os.environ["ROS_DOMAIN_ID"] = os.environ["HABC_TEST_ROS_DOMAIN_ID"]
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_LOCALHOST_ONLY"] = "1"
    fastdds_profile = REPO_ROOT / "config" / "fastdds_localhost.xml"
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(fastdds_profile))
    os.environ.setdefault("MUJOCO_GL", "egl")


def ros_available() -> tuple[bool, str]:
    """Whether rclpy and the built habc_msgs import (the workspace environment is sourced)."""
    try:
        import rclpy  # noqa: F401

        import habc_msgs.msg  # noqa: F401
    except ImportError as exc:
        return False, f"{exc} (run 'bash scripts/setup.sh && source env.sh')"
    return True, ""


@pytest.fixture(scope="session")
def ros_env() -> Iterator[dict[str, str]]:
    """The environment for ROS tests and their child processes.

    Without the built workspace the ROS tests skip, unless HABC_REQUIRE_ROS=1 (set by
    scripts/test.sh and so in CI), where they fail instead: CI must never pass by skipping.
    """
    ok, why = ros_available()
    if not ok:
        if os.environ.get("HABC_REQUIRE_ROS") == "1":
            pytest.fail(f"ROS 2 workspace required but not importable: {why}")
        pytest.skip(f"ROS 2 workspace not importable: {why}")
    yield dict(os.environ)


# -- tiny models for the learner and iRe-VLA tests ---------------------------------------------
@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    torch.set_num_threads(1)


def small_policy_config() -> FlowPolicyConfig:
    """A small actor for 14-dim bimanual chunks of H = 50 (fast on CPU); also for processes
    that cannot take fixtures (spawned ranks)."""
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
def tiny_policy_config() -> FlowPolicyConfig:
    """A small actor for 14-dim bimanual chunks of H = 50 (fast on CPU)."""
    return small_policy_config()


@pytest.fixture
def tiny_critic_config() -> CriticConfig:
    return CriticConfig(hidden_dim=32, num_layers=1)

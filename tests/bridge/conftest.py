"""Fixtures of the bridge tests: a tiny habc checkpoint, the vendored openpi-client, the
LeRobot environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from habc_common import bag_format as bf
from habc_learner.core.bag_reader import write_episode
from habc_learner.core.episode import scenario_episode
from tests.conftest import REPO_ROOT
from tests.nodes.conftest import make_checkpoint

OPENPI_DIR = REPO_ROOT / ".vendor" / "openpi-client"
LEROBOT_PYTHON = (
    Path(os.environ.get("HABC_LEROBOT_VENV", str(REPO_ROOT / ".venv-lerobot"))) / "bin" / "python"
)
CAMERAS = ("top", "left_wrist", "right_wrist")
BAG_CAMERAS = ("top", "left_wrist")
SCENARIOS = (
    "demo",
    "autonomous_success",
    "takeover_failure",
    "autonomous_failure",
    "takeover_success",
)


@pytest.fixture(scope="session")
def flow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight habc checkpoint with three 32×32 cameras and 14-dim state."""
    path = tmp_path_factory.mktemp("flow_ckpt") / "step_000000042"
    make_checkpoint(
        path, learner_step=42, proprio_dim=14, horizon=10, cameras=CAMERAS, image_size=(32, 32)
    )
    return path


@pytest.fixture(scope="session")
def openpi_client() -> Iterator[object]:
    """The published ``openpi-client`` 0.1.2, installed by scripts/setup.sh with ``--no-deps``
    into ``.vendor/openpi-client`` (it pins numpy<2; the venv has numpy 2) and put on
    ``sys.path`` for these tests only."""
    if not (OPENPI_DIR / "openpi_client" / "websocket_client_policy.py").is_file():
        pytest.skip(f"openpi-client not installed in {OPENPI_DIR} (run scripts/setup.sh)")
    sys.path.insert(0, str(OPENPI_DIR))
    try:
        import openpi_client.msgpack_numpy
        import openpi_client.websocket_client_policy

        yield openpi_client
    finally:
        sys.path.remove(str(OPENPI_DIR))


@pytest.fixture(scope="session")
def bags(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five recorded episodes (demo, rollouts with and without takeovers, both outcomes) and
    one bag whose recorder died mid-episode."""
    folder = tmp_path_factory.mktemp("bags")
    for i, scenario in enumerate(SCENARIOS):
        ep = scenario_episode(
            scenario,
            seed=i,
            length=60,
            cameras=BAG_CAMERAS,
            image_size=(32, 32),
            episode_id=f"ep{i}-{scenario}",
        )
        images = {c: ep.load_images(c, np.arange(ep.length)) for c in BAG_CAMERAS}
        write_episode(folder / ep.episode_id, ep, images=images)
    meta = bf.EpisodeMeta("broken", "t", "p", "rollout", (("left", 0, 7), ("right", 7, 14)))
    with bf.EpisodeBagWriter(folder / "zz-broken", meta) as w:
        w.write_command(0, step_index=0, controller=[1, 1], action=np.zeros(14))
    return folder


def lerobot_python() -> Path:
    """The LeRobot environment's interpreter, or a skip saying why there is none."""
    if not LEROBOT_PYTHON.is_file():
        pytest.skip(
            f"no LeRobot environment at {LEROBOT_PYTHON.parent.parent}: scripts/setup.sh "
            "creates it when a Python 3.12 interpreter is found"
        )
    probe = subprocess.run(
        [str(LEROBOT_PYTHON), "-c", "import lerobot, rosbags"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"the LeRobot environment does not import lerobot: {probe.stderr[-300:]}")
    return LEROBOT_PYTHON

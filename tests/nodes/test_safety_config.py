"""Safety settings per backend and frozen-camera detection (pure cores)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from arx_x5_driver.core.camera import FrameWatch
from arx_x5_driver.core.config import SIM_SAFETY_DEFAULTS, arx_safety_problems
from tests.conftest import REPO_ROOT

CONFIG = REPO_ROOT / "config"


def _flat(doc: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _driver_values(*files: str) -> dict:
    values = {"safety.workspace_enabled": True, **SIM_SAFETY_DEFAULTS}
    for name in files:
        doc = yaml.safe_load((CONFIG / name).read_text())
        values.update(_flat(doc["arx_x5_driver"]["ros__parameters"]))
    return values


def test_sim_defaults_are_refused_for_the_real_arms() -> None:
    problems = arx_safety_problems(_driver_values())
    text = "\n".join(problems)
    for key in SIM_SAFETY_DEFAULTS:
        assert key in text, key  # max_joint_velocities: named as the alternative
    assert "30.0" in text and "'clamp'" in text


def test_shipped_arx_file_sets_x5_limits_and_leaves_only_the_cell_boxes() -> None:
    values = _driver_values("driver.yaml", "driver_arx.yaml")
    assert values["safety.max_joint_velocities"] == [5.0, 5.0, 5.5, 5.5, 5.0, 5.0]
    assert values["safety.velocity_mode"] == "reject"
    problems = arx_safety_problems({**values, "estop_latch_file": "/run/estop.latch"})
    assert sorted(p.split()[0] for p in problems) == [
        "safety.left_box_high",
        "safety.left_box_low",
        "safety.right_box_high",
        "safety.right_box_low",
    ]
    boxes = {
        "safety.left_box_low": [0.1, -0.3, 0.0],
        "safety.left_box_high": [0.5, 0.3, 0.4],
        "safety.right_box_low": [0.1, -0.3, 0.0],
        "safety.right_box_high": [0.5, 0.3, 0.4],
        "estop_latch_file": "/run/estop.latch",
    }
    assert arx_safety_problems({**values, **boxes}) == []
    assert arx_safety_problems({**values, **boxes, "safety.workspace_enabled": False})
    # a uniform real limit instead of per-joint ones is accepted; 30 rad/s is not
    uniform = {**values, **boxes, "safety.max_joint_velocities": []}
    assert "safety.max_joint_velocity is" in " ".join(arx_safety_problems(uniform))
    assert arx_safety_problems({**uniform, "safety.max_joint_velocity": 3.0}) == []


def test_sim_file_keeps_the_sim_values() -> None:
    values = _driver_values("driver.yaml", "driver_sim.yaml")
    for key, default in SIM_SAFETY_DEFAULTS.items():
        assert values[key] == default, key


def _img(value: int) -> np.ndarray:
    return np.full((4, 4, 3), value, dtype=np.uint8)


def test_frame_sequence_stuck_is_stale_after_the_timeout() -> None:
    w = FrameWatch(stale_after_s=0.5, check_content=False)
    assert w.update(7, _img(1), 0.0) == ""
    assert w.update(7, _img(2), 0.5) == ""  # not longer than the timeout yet
    assert "sequence stuck at 7" in w.update(7, _img(3), 0.51)
    assert w.update(8, _img(4), 0.6) == ""  # streams again


def test_identical_content_is_stale_even_with_a_rising_sequence() -> None:
    w = FrameWatch(stale_after_s=0.2, check_content=True)
    assert w.update(1, _img(5), 0.0) == ""
    assert w.update(2, _img(5), 0.1) == ""
    assert "identical image content" in w.update(3, _img(5), 0.3)
    noisy = _img(5)
    noisy[0, 0, 0] = 6  # one pixel of sensor noise: a live camera
    assert w.update(4, noisy, 0.35) == ""


def test_sim_without_sequence_never_goes_stale_on_a_still_scene() -> None:
    w = FrameWatch(stale_after_s=0.1, check_content=False)
    for k in range(10):
        assert w.update(None, _img(9), k * 0.1) == ""
    with pytest.raises(ValueError, match="stale_after_s"):
        FrameWatch(stale_after_s=0.0)

"""Nothing in the pure cores imports rclpy or a ROS message package."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cores_import_with_ros_blocked() -> None:
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys

        BLOCKED = ("rclpy", "rosidl", "rosbag2", "std_msgs", "sensor_msgs", "habc_msgs",
                   "builtin_interfaces", "diagnostic_msgs")

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED or name.split(".")[0].endswith("_msgs"):
                    raise ImportError(f"blocked ROS import {name!r}")
                return None

        sys.meta_path.insert(0, Block())
        names = []
        for pkg_name in ("habc_policy.core", "habc_learner.core"):
            pkg = importlib.import_module(pkg_name)
            for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
                importlib.import_module(info.name)
                names.append(info.name)
        assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        print(" ".join(sorted(names)))
        """
    )
    env_path = ":".join(str(ROOT / "src" / p) for p in ("habc_policy", "habc_learner"))
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    imported = set(out.stdout.split())
    for module in (
        "habc_policy.core.checkpoint",
        "habc_policy.core.modeling_flow",
        "habc_learner.core.trainer",
        "habc_learner.core.labeling",
        "habc_learner.core.methods",
    ):
        assert module in imported

"""The pure cores import and work with rclpy (and every ROS message package) absent."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO_ROOT

CORES = (
    "habc_common",
    "habc_sim.core",
    "habc_policy.core",
    "habc_learner.core",
    "arx_x5_driver.core",
    "habc_bridge.core",
)

# Run in a fresh interpreter whose import system refuses rclpy and generated ROS message
# packages, then import every module under each core and check none of them got in.
_PROBE = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    BLOCKED = ("rclpy", "rosidl_runtime_py", "std_msgs", "sensor_msgs", "geometry_msgs",
               "diagnostic_msgs", "lifecycle_msgs", "builtin_interfaces", "habc_msgs")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked for this test: {name}")
            return None

    sys.meta_path.insert(0, Block())
    imported = []
    for core in sys.argv[1:]:
        pkg = importlib.import_module(core)
        imported.append(core)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=core + "."):
            importlib.import_module(info.name)
            imported.append(info.name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("\\n".join(imported))
    """
)


def test_cores_import_without_rclpy() -> None:
    paths = [
        str(REPO_ROOT / "src" / pkg)
        for pkg in (
            "habc_common",
            "habc_sim",
            "habc_policy",
            "habc_learner",
            "arx_x5_driver",
            "habc_bridge",
        )
    ]
    env = {"PYTHONPATH": ":".join(paths), "PATH": "/usr/bin:/bin", "MUJOCO_GL": "egl"}
    # Keep the venv interpreter but none of the workspace environment (no ROS on the path).
    env["_ROS_WHEELS_BOOTSTRAP_COMPLETE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *CORES],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    imported = set(proc.stdout.split())
    assert set(CORES) <= imported
    # The probe really walks the packages: the shared bag format module is among them.
    assert "habc_common.bag_format" in imported


def test_blocker_really_blocks() -> None:
    """The probe above would catch a core module that imports rclpy."""
    code = _PROBE.replace("imported = []", "import rclpy\nimported = []")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "_ROS_WHEELS_BOOTSTRAP_COMPLETE": "1"},
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "blocked for this test: rclpy" in proc.stderr

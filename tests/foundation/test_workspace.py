"""The colcon workspace is laid out and installed the way ROS tools expect."""

from __future__ import annotations

import configparser
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PYTHON_PACKAGES = ("habc_policy", "habc_learner", "arx_x5_driver")


@pytest.mark.parametrize("pkg", PYTHON_PACKAGES)
def test_ament_python_package_layout(pkg: str) -> None:
    root = REPO_ROOT / "src" / pkg
    manifest = ET.parse(root / "package.xml").getroot()
    assert manifest.findtext("name") == pkg
    assert manifest.find("export/build_type").text == "ament_python"
    assert (root / "resource" / pkg).is_file()
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    assert cfg["develop"]["script_dir"] == f"$base/lib/{pkg}"
    assert cfg["install"]["install_scripts"] == f"$base/lib/{pkg}"
    assert (root / pkg / "core" / "__init__.py").is_file()


def test_interface_and_bringup_packages() -> None:
    msgs = ET.parse(REPO_ROOT / "src" / "habc_msgs" / "package.xml").getroot()
    assert msgs.find("member_of_group").text == "rosidl_interface_packages"
    for kind, names in (
        ("msg", ("ActionChunk", "ExecutedCommand", "EpisodeEvent")),
        ("srv", ("StartEpisode", "EndEpisode", "AnnounceCheckpoint")),
    ):
        for name in names:
            text = (REPO_ROOT / "src" / "habc_msgs" / kind / f"{name}.{kind}").read_text()
            # Every field line carries a comment (unit / frame / meaning) on it or just above.
            lines = [ln.rstrip() for ln in text.splitlines()]
            for i, line in enumerate(lines):
                if line and not line.startswith("#") and line != "---":
                    assert "#" in line or lines[i - 1].startswith("#"), f"{name}: {line!r}"
    bringup = ET.parse(REPO_ROOT / "src" / "habc" / "package.xml").getroot()
    assert bringup.findtext("name") == "habc"


@pytest.mark.ros
def test_habc_installs_launch_and_config(ros_env: dict[str, str]) -> None:
    from ament_index_python.packages import get_package_share_directory

    share = Path(get_package_share_directory("habc"))
    assert (REPO_ROOT / "config").is_dir()
    for sub in ("launch", "config"):
        if not (REPO_ROOT / sub).is_dir():
            continue
        source = sorted(p.name for p in (REPO_ROOT / sub).iterdir() if p.is_file())
        installed = sorted(p.name for p in (share / sub).iterdir())
        assert installed == source, sub
    assert Path(get_package_share_directory("habc_msgs"), "msg", "ActionChunk.msg").is_file()
    for pkg in PYTHON_PACKAGES:
        assert Path(get_package_share_directory(pkg), "package.xml").is_file()
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


@pytest.mark.ros
def test_installed_packages_import_outside_the_source_tree(
    ros_env: dict[str, str], tmp_path: Path
) -> None:
    """Through env.sh alone (no pytest pythonpath): what `ros2 run` and the launcher see."""
    import subprocess
    import sys

    env = dict(ros_env)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if "/src/" not in p
    )
    code = (
        "import habc_policy.core.authority, habc_learner.core.bag_reader, arx_x5_driver.core; "
        "import habc_msgs.msg; print(habc_learner.core.bag_reader.__file__)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "bag_reader.py" in proc.stdout

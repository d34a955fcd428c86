"""The real ``launch`` / ``launch_ros`` for tests: a system ROS's, or the vendored sources.

``launch`` and ``launch_ros`` are not on PyPI. When the environment has no importable
``launch_ros`` (the project's PyPI-wheel workspace), :func:`launch_env` installs the unmodified
sources of ``../shared/vendor/ros2-launch`` beside the workspace, following that folder's
README recipe without touching the network: ``pip install --no-deps --no-build-isolation``
of the local source trees into ``build/vendor_launch/site``, and a colcon build of
``composition_interfaces`` (which ``launch_ros`` imports) into ``build/vendor_launch/ws``.
Both are cached by a hash of the vendored tree. ``osrf-pycommon`` (launch_ros's one Python
dependency) comes with the project's requirements.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

VENDOR_PACKAGES = ("launch", "launch_xml", "launch_yaml", "launch_ros")


def vendor_dir() -> Path | None:
    """``ros2-launch`` under ``$HABC_SHARED_DIR/vendor`` or a ``shared/vendor`` beside the
    repository (or beside the folder of git worktrees holding it)."""
    candidates = []
    if os.environ.get("HABC_SHARED_DIR"):
        candidates.append(Path(os.environ["HABC_SHARED_DIR"]))
    candidates += [REPO_ROOT.parent / "shared", REPO_ROOT.parent.parent / "shared"]
    for shared in candidates:
        path = shared / "vendor" / "ros2-launch"
        if all((path / p / "setup.py").is_file() for p in VENDOR_PACKAGES):
            return path
    return None


def _has_launch_ros(env: dict[str, str]) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", "import launch, launch_ros"],
        env=env,
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _install_vendored(vendor: Path, env: dict[str, str]) -> Path:
    """Install once into ``build/vendor_launch/<hash>``; returns that folder."""
    root = REPO_ROOT / "build" / "vendor_launch"
    root.mkdir(parents=True, exist_ok=True)
    (root / "COLCON_IGNORE").touch()  # the workspace's own colcon build never crawls it
    target = root / _tree_hash(vendor)
    if (target / "READY").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    site, ws = target / "site", target / "ws"
    (ws / "src").mkdir(parents=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            *(str(vendor / p) for p in VENDOR_PACKAGES),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    shutil.copytree(vendor / "composition_interfaces", ws / "src" / "composition_interfaces")
    done = subprocess.run(
        ["colcon", "build", "--merge-install", "--cmake-args", "-DBUILD_TESTING=OFF"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"colcon build of composition_interfaces failed:\n{done.stdout[-3000:]}")
    (target / "READY").write_text("ok\n")
    return target


def launch_env(base: dict[str, str]) -> tuple[dict[str, str] | None, str]:
    """``(environment that runs real launch_ros, where it comes from)``, or ``(None, why
    not)``."""
    if _has_launch_ros(base):
        return dict(base), "the system ROS's launch_ros"
    vendor = vendor_dir()
    if vendor is None:
        return None, (
            "no launch_ros: no system ROS provides it and no vendored ros2-launch sources "
            "(shared/vendor/ros2-launch, or $HABC_SHARED_DIR) are present"
        )
    target = _install_vendored(vendor, base)
    env = dict(base)
    prefix = target / "ws" / "install"
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    env["PYTHONPATH"] = os.pathsep.join(
        p
        for p in (
            str(target / "site"),
            str(prefix / "lib" / pyver / "site-packages"),
            str(prefix / "local" / "lib" / pyver / "dist-packages"),
            base.get("PYTHONPATH", ""),
        )
        if p
    )
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(
        p for p in (base.get("AMENT_PREFIX_PATH", ""), str(prefix)) if p
    )
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(prefix / "lib"), base.get("LD_LIBRARY_PATH", "")) if p
    )
    if not _has_launch_ros(env):
        raise RuntimeError(f"the vendored launch_ros installed in {target} does not import")
    return env, f"the vendored sources of {vendor}"

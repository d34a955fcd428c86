#!/usr/bin/env bash
# setup.sh — make this checkout a working ROS 2 workspace, from nothing, idempotently.
#
#   bash scripts/setup.sh            # what scripts/test.sh and scripts/main.sh call first
#
# 1. Debian packages the build needs (cmake, g++, python3-dev/venv, EGL for MuJoCo rendering):
#    installed with apt-get when missing and we are root; otherwise a clear error.
# 2. .venv with the Python dependencies from requirements/*.txt, pinned by
#    requirements/constraints.txt (torch is the local CPU wheel: the pin carries "+cpu").
#    - No system ROS sourced: ROS 2 Kilted comes from the PyPI wheels into the venv, and their
#      CMake exports (which hard-code the wheel build machine's /opt/python include paths) are
#      rewritten to this venv's paths. No root needed for that.
#    - A system ROS 2 sourced (/opt/ros/<distro>/setup.bash: Humble, Jazzy, Kilted): the venv
#      sees the system packages and only the non-ROS Python dependencies are installed.
# 3. colcon build of src/ (merge + symlink install: editing Python needs no rebuild).
# 4. env.sh at the repository root: `source env.sh` stands in for
#    `source /opt/ros/<distro>/setup.bash && source install/setup.bash`.
#
# Each stage is skipped when its inputs are unchanged (hash stamps in .setup_stamps/), so a
# second run with nothing changed takes a few seconds.
#
# Environment: PYTHON (interpreter for a new venv, default python3), HABC_VENV (default .venv),
# COLCON_WORKERS (default 2), HABC_SKIP_APT=1 (never call apt-get).
set -euo pipefail

T0=$(date +%s.%N)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${HABC_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
STAMPS="$ROOT/.setup_stamps"
mkdir -p "$STAMPS"

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

# ---- mode: system ROS 2 or PyPI wheels ---------------------------------------------------------
SYSTEM_ROS=""
if [ -n "${ROS_DISTRO:-}" ] && [ -f "/opt/ros/${ROS_DISTRO}/setup.bash" ] \
   && [ -z "${HABC_FORCE_WHEELS:-}" ]; then
  SYSTEM_ROS="/opt/ros/${ROS_DISTRO}"
  say "using the system ROS 2 ${ROS_DISTRO} at ${SYSTEM_ROS}"
else
  say "using ROS 2 Kilted from PyPI wheels"
fi

# ---- 1. Debian packages ------------------------------------------------------------------------
need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
command -v make >/dev/null || need_apt+=(make)
"$PYTHON" -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("include"), "Python.h")) else 1)' \
  || need_apt+=(python3-dev)
"$PYTHON" -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || need_apt+=(libegl1)
ldconfig -p 2>/dev/null | grep -q 'libOpenGL.so.0' || need_apt+=(libopengl0)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ -n "${HABC_SKIP_APT:-}" ] || [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "missing system packages: ${need_apt[*]} (Debian/Ubuntu: sudo apt-get install ${need_apt[*]})"
  fi
  say "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# ---- 2. venv + Python packages -----------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  if [ -n "$SYSTEM_ROS" ]; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
# colcon must never crawl the venv (pip puts package.xml files under share/).
touch "$VENV/COLCON_IGNORE"
PY="$VENV/bin/python"
# ros_wheels_bootstrapper.pth re-execs the venv's python with LD_LIBRARY_PATH; skip that for
# the setup's own short queries.
pyq() { _ROS_WHEELS_BOOTSTRAP_COMPLETE=1 "$PY" -c "$1"; }
PYVER="$(pyq 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
case "$PYVER" in 3.10|3.11|3.12) ;; *) die "Python $PYVER: the ROS 2 wheels exist for 3.10-3.12 only (set PYTHON=)";; esac

REQS=(requirements/python.txt)
[ -z "$SYSTEM_ROS" ] && REQS+=(requirements/ros-wheels.txt)
PIP_STAMP="$(hash_of "${REQS[@]}" requirements/constraints.txt scripts/setup.sh; echo "$PYVER $SYSTEM_ROS")"
PIP_STAMP="$(echo "$PIP_STAMP" | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMPS/pip" 2>/dev/null)" != "$PIP_STAMP" ]; then
  t=$(date +%s.%N)
  say "installing Python packages (pinned by requirements/constraints.txt) ..."
  req_args=()
  for r in "${REQS[@]}"; do req_args+=(-r "$r"); done
  mkdir -p "$ROOT/log"
  if ! _ROS_WHEELS_BOOTSTRAP_COMPLETE=1 "$PY" -m pip install --disable-pip-version-check -q \
      -c requirements/constraints.txt "${req_args[@]}" > "$ROOT/log/setup_pip.txt" 2>&1; then
    # Warnings about a machine's unused local package indexes are noise; show the rest.
    grep -v 'is ignored: it is neither' "$ROOT/log/setup_pip.txt" | tail -40 >&2
    die "pip install failed (full log: log/setup_pip.txt)"
  fi
  pyq 'import torch, sys; sys.exit(0 if torch.version.cuda is None else 1)' \
    || die "a CUDA build of torch was installed; this project pins the CPU wheel torch==2.13.0+cpu"

  if [ -z "$SYSTEM_ROS" ]; then
    # The wheels' exported CMake targets (share/<pkg>/cmake/export_*__rosidl_generator_pyExport.cmake)
    # carry the wheel build machine's Python and numpy include dirs; CMake refuses imported targets
    # with missing include dirs. Point them at this venv.
    PYINC="$(pyq 'import sysconfig; print(sysconfig.get_path("include"))')"
    NPINC="$(pyq 'import numpy; print(numpy.get_include())')"
    mapfile -t files < <(grep -rlE --include='*.cmake' \
      'INTERFACE_INCLUDE_DIRECTORIES .*(/include/python3\.[0-9]+|/numpy/_?core/include)' "$VENV/share" || true)
    for f in "${files[@]}"; do
      sed -i -E \
        -e "/INTERFACE_INCLUDE_DIRECTORIES/ s#\"[^\";]*/include/python3\.[0-9]+([;\"])#\"${PYINC}\1#" \
        -e "/INTERFACE_INCLUDE_DIRECTORIES/ s#;[^\";]*/site-packages/numpy/_?core/include\"#;${NPINC}\"#" \
        "$f"
    done
    if grep -rlq --include='*.cmake' '/opt/python' "$VENV/share"; then
      die "CMake exports still reference /opt/python: $(grep -rl --include='*.cmake' '/opt/python' "$VENV/share" | head -3)"
    fi
    say "patched ${#files[@]} CMake export files to $PYINC"
  fi
  echo "$PIP_STAMP" > "$STAMPS/pip"
  rm -f "$STAMPS/build"  # new dependencies: rebuild
  say "Python packages ready in $(elapsed "$t") s"
fi

# ---- 3. env.sh ---------------------------------------------------------------------------------
SITE="lib/python${PYVER}/site-packages"
{
  echo "# Generated by scripts/setup.sh — source me (bash/zsh): the habc workspace environment."
  echo "# Stands in for 'source /opt/ros/<distro>/setup.bash && source install/setup.bash'."
  if [ -n "$SYSTEM_ROS" ]; then
    echo "source '$SYSTEM_ROS/setup.bash'"
  fi
  cat <<EOF
export HABC_ROOT='$ROOT'
export VIRTUAL_ENV='$VENV'
case ":\$PATH:" in *":$VENV/bin:"*) ;; *) export PATH="$VENV/bin:\$PATH";; esac
for _p in '$ROOT'/install/lib/habc_policy '$ROOT'/install/lib/habc_learner '$ROOT'/install/lib/arx_x5_driver '$ROOT'/install/lib/habc_bridge '$ROOT'/install/lib/habc_sim; do
  case ":\$PATH:" in *":\$_p:"*) ;; *) export PATH="\$_p:\$PATH";; esac
done
unset _p
EOF
  if [ -z "$SYSTEM_ROS" ]; then
    cat <<EOF
export AMENT_PREFIX_PATH='$ROOT/install:$VENV'
export CMAKE_PREFIX_PATH='$ROOT/install:$VENV'
# build/<pkg> holds the symlinks of the ament_python packages (colcon's develop hook).
export PYTHONPATH='$ROOT/install/$SITE:$ROOT/build/habc_policy:$ROOT/build/habc_learner:$ROOT/build/arx_x5_driver:$ROOT/build/habc_bridge:$ROOT/build/habc_common:$ROOT/build/habc_sim'\${PYTHONPATH:+:\$PYTHONPATH}
export LD_LIBRARY_PATH='$ROOT/install/lib'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
export ROS_VERSION=2 ROS_PYTHON_VERSION=3 ROS_DISTRO=kilted
export RMW_IMPLEMENTATION="\${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
EOF
  else
    echo "[ -f '$ROOT/install/setup.bash' ] && source '$ROOT/install/setup.bash'"
  fi
  cat <<EOF
# Loopback-only discovery by default (Kilted/Jazzy read the first, Humble the second). A
# multi-machine deployment overrides both before sourcing this file.
export ROS_AUTOMATIC_DISCOVERY_RANGE="\${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export ROS_LOCALHOST_ONLY="\${ROS_LOCALHOST_ONLY:-1}"
# 16 MiB shared-memory segments: the 512 KiB default drops most camera images between processes.
export FASTDDS_DEFAULT_PROFILES_FILE="\${FASTDDS_DEFAULT_PROFILES_FILE:-$ROOT/config/fastdds_localhost.xml}"
export MUJOCO_GL="\${MUJOCO_GL:-egl}"
EOF
} > "$ROOT/env.sh.tmp"
mv "$ROOT/env.sh.tmp" "$ROOT/env.sh"

# ---- 4. colcon build ---------------------------------------------------------------------------
# Inputs that need a rebuild: everything under src/ except the Python modules of the ament_python
# packages (symlink install: they are live), plus launch/ and config/ (installed by src/habc).
BUILD_STAMP="$(
  { find src launch config -type f 2>/dev/null ! -path '*/__pycache__/*' ! -name '*.pyc' \
      ! -path 'src/habc_policy/habc_policy/*' ! -path 'src/habc_learner/habc_learner/*' \
      ! -path 'src/arx_x5_driver/arx_x5_driver/*' ! -path 'src/habc_bridge/habc_bridge/*' \
      ! -path 'src/habc_common/habc_common/*' ! -path 'src/habc_sim/habc_sim/*' \
      ! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum;
    find launch config 2>/dev/null -type f -name '*.py' ! -path '*/__pycache__/*' | sort;
    echo "$PIP_STAMP"; } | sha256sum | cut -c1-16
)"
if [ "$(cat "$STAMPS/build" 2>/dev/null)" != "$BUILD_STAMP" ] || [ ! -d "$ROOT/install" ]; then
  t=$(date +%s.%N)
  say "colcon build ..."
  mkdir -p "$ROOT/log"
  # src/habc installs launch/ and config/ file by file (symlink install): CMake lists the files
  # when it configures, so a new launch or parameter file needs a fresh configure of it.
  rm -rf "$ROOT/build/habc"
  (
    # shellcheck disable=SC1091
    source "$ROOT/env.sh"
    unset COLCON_PREFIX_PATH
    if [ -z "$SYSTEM_ROS" ]; then export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"; fi
    "$VENV/bin/colcon" --log-base "$ROOT/log" build \
      --base-paths "$ROOT/src" --build-base "$ROOT/build" --install-base "$ROOT/install" \
      --merge-install --symlink-install \
      --event-handlers console_cohesion- summary+ status- \
      --parallel-workers "${COLCON_WORKERS:-2}" \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF \
      > "$ROOT/log/setup_colcon.txt" 2>&1 \
      || { tail -40 "$ROOT/log/setup_colcon.txt" >&2; exit 1; }
  ) || die "colcon build failed (full log: log/setup_colcon.txt)"
  echo "$BUILD_STAMP" > "$STAMPS/build"
  say "workspace built in $(elapsed "$t") s"
fi

# ---- 5. the bridge's extras: openpi-client for the protocol tests, the LeRobot environment ------
# openpi-client 0.1.2 pins numpy<2, so it never enters the venv: its pure-Python files go to
# .vendor/openpi-client (ignored by git), which only the bridge's tests put on sys.path.
OPENPI_DIR="$ROOT/.vendor/openpi-client"
if [ ! -f "$OPENPI_DIR/openpi_client/websocket_client_policy.py" ]; then
  say "openpi-client 0.1.2 -> $OPENPI_DIR (--no-deps, test only)"
  if ! _ROS_WHEELS_BOOTSTRAP_COMPLETE=1 "$PY" -m pip install --disable-pip-version-check -q \
      --no-deps --target "$OPENPI_DIR" openpi-client==0.1.2 > "$ROOT/log/setup_openpi.txt" 2>&1; then
    say "WARNING: could not install openpi-client (log/setup_openpi.txt): its interop tests skip"
  fi
fi
bash "$ROOT/scripts/setup_lerobot.sh"

say "ready in $(elapsed "$T0") s — source env.sh to use the workspace"

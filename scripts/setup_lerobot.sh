#!/usr/bin/env bash
# setup_lerobot.sh — the LeRobot bridge's own environment, .venv-lerobot (Python 3.12), idempotently.
#
#   bash scripts/setup_lerobot.sh    # scripts/setup.sh calls it last
#
# LeRobot 0.6.1 needs Python >= 3.12 and pins numpy/opencv/Pillow/packaging/fsspec against the
# main venv, so it lives in a second venv: requirements/lerobot.txt, pinned by
# requirements/lerobot-constraints.txt (a `pip freeze` of a working install). Cost from an
# empty pip cache: about 8 min and 5.7 GB (torch 2.10 with its CUDA runtime wheels, which run
# on CPU; see README "Bring your own VLA"). A second run with nothing changed takes well
# under a second (hash stamp in .setup_stamps/lerobot).
#
# No Python 3.12 found: says so and exits 0; the bridge's tests then skip with that reason.
# Environment: HABC_LEROBOT_PYTHON (interpreter), HABC_LEROBOT_VENV (default .venv-lerobot),
# HABC_SKIP_LEROBOT=1 (skip this environment entirely).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${HABC_LEROBOT_VENV:-$ROOT/.venv-lerobot}"
STAMPS="$ROOT/.setup_stamps"
mkdir -p "$STAMPS"
say() { printf '[setup-lerobot] %s\n' "$*"; }
die() { printf '[setup-lerobot] ERROR: %s\n' "$*" >&2; exit 1; }

if [ -n "${HABC_SKIP_LEROBOT:-}" ]; then
  say "HABC_SKIP_LEROBOT set: no LeRobot environment"
  exit 0
fi

find_python312() {
  local c
  for c in "${HABC_LEROBOT_PYTHON:-}" python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 \
           /usr/bin/python3.12 /usr/local/bin/python3.12; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 \
       && "$c" -c 'import sys, ensurepip; sys.exit(0 if sys.version_info[:2] >= (3, 12) else 1)' \
          >/dev/null 2>&1; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  if ! PY312="$(find_python312)"; then
    say "no Python >= 3.12 interpreter found (set HABC_LEROBOT_PYTHON=): skipping the LeRobot"
    say "environment; the bridge's LeRobot tests will skip with that reason"
    exit 0
  fi
  say "creating $VENV with $PY312"
  "$PY312" -m venv "$VENV"
fi
touch "$VENV/COLCON_IGNORE"
PY="$VENV/bin/python"
# The bridge's LeRobot-side modules (habc_bridge.lerobot) and the bag format/reader they share
# with the learner (habc_learner.core: numpy + rosbags + yaml; topic names from habc_common)
# import from the source tree.
for SITE in "$VENV"/lib/python3.*/site-packages; do
  printf '%s\n' "$ROOT/src/habc_bridge" "$ROOT/src/habc_learner" "$ROOT/src/habc_common" \
    > "$SITE/habc_workspace.pth"
done

CONSTRAINTS=()
[ -f requirements/lerobot-constraints.txt ] && CONSTRAINTS=(-c requirements/lerobot-constraints.txt)
STAMP="$({ cat requirements/lerobot.txt requirements/lerobot-constraints.txt \
  scripts/setup_lerobot.sh 2>/dev/null || true; } | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMPS/lerobot" 2>/dev/null)" != "$STAMP" ]; then
  t0=$(date +%s)
  say "installing lerobot[pi,smolvla,dataset]==0.6.1 + rosbags into $VENV (about 8 min and"
  say "5.7 GB from an empty pip cache) ..."
  mkdir -p "$ROOT/log"
  # The machine-wide pip constraint file may cap torch at a version LeRobot refuses; this
  # environment's pins are its own.
  if ! PIP_CONSTRAINT="" "$PY" -m pip install --disable-pip-version-check -q \
      "${CONSTRAINTS[@]}" -r requirements/lerobot.txt > "$ROOT/log/setup_lerobot_pip.txt" 2>&1; then
    grep -v 'is ignored: it is neither' "$ROOT/log/setup_lerobot_pip.txt" | tail -40 >&2
    die "pip install failed (full log: log/setup_lerobot_pip.txt)"
  fi
  "$PY" -c 'import lerobot, rosbags, websockets, msgpack' \
    || die "the LeRobot environment does not import (see log/setup_lerobot_pip.txt)"
  echo "$STAMP" > "$STAMPS/lerobot"
  say "LeRobot environment ready in $(( $(date +%s) - t0 )) s"
fi

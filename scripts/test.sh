#!/usr/bin/env bash
# test.sh — set the workspace up from nothing (idempotent), then lint and run the whole suite.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

t0=$(date +%s.%N)
bash scripts/setup.sh
setup_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "[test] set-up took ${setup_s} s"

# shellcheck disable=SC1091
source env.sh
export HABC_REQUIRE_ROS=1   # ROS tests fail, never skip, when the workspace is broken

echo "[test] ruff"
lint_paths=()
for p in src tests bench launch scripts; do [ -e "$p" ] && lint_paths+=("$p"); done
ruff check "${lint_paths[@]}"
ruff format --check "${lint_paths[@]}"

echo "[test] pytest"
python -m pytest "$@"

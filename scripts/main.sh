#!/usr/bin/env bash
# main.sh — the main job on the embedded default (the simulated bimanual robot), from nothing.
#   bash scripts/main.sh [habc-main args...]      e.g. --rounds 2 --out runs/try2
# Sets the workspace up (idempotent), then runs habc-main: scripted demonstrations -> bags ->
# SFT -> evaluation -> online HABC rounds with scripted takeovers -> evaluation, summary + plot.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# shellcheck disable=SC1091
source env.sh
exec habc-main "$@"

#!/usr/bin/env bash
# main.sh — the main job on the embedded default (the simulated bimanual robot), from nothing.
#   bash scripts/main.sh [habc-bringup-job args...]      e.g. --rounds 2 --out runs/try2
# Sets the workspace up (idempotent), then runs habc-bringup-job: scripted demonstrations ->
# bags -> SFT -> the sim bringup graph (driver, policy server, arbiter, scripted operator,
# recorder, learner) for K online rounds with scripted takeovers and HABC updates -> report.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# shellcheck disable=SC1091
source env.sh
exec habc-bringup-job "$@"

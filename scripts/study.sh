#!/usr/bin/env bash
# The study in one command: install into .venv, then execute every notebook in order under the
# active profile (DESUPCON_PROFILE: smoke on a CPU, cifar100 on a GPU, auto by default).
# Extra arguments go to `python -m desupcon reproduce` (e.g. --only 01 02).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python -m desupcon reproduce "$@"

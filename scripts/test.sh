#!/usr/bin/env bash
# Set up, then run the whole test suite (CPU only, offline).
# pytest-xdist: one worker per core (at most 4). The modules on the demo sweep run together
# on one worker, first (tests/conftest.py), so the demo runs once while the others take the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q -n auto --maxprocesses 4 "$@"

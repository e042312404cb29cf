#!/usr/bin/env bash
# Create .venv (Python >= 3.11) with fewstep and its pinned dependencies.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "fewstep needs Python >= 3.11 (found $("$PYTHON" --version)); set PYTHON=..." >&2; exit 1; }
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch first and exactly pinned: a looser requirement pulls several GB of other builds.
python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
python -m pip install --quiet -e ".[test]"
echo "fewstep environment ready: $(python -c 'import fewstep, torch; print("torch", torch.__version__)')"

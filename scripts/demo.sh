#!/usr/bin/env bash
# Set up, then run the offline demo sweep end to end (tiny models, CPU, no network).
# Result: reports/demo/index.html
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
snakemake --cores all --configfile config/demo.yaml "$@"
echo "demo report: $(pwd)/reports/demo/index.html"

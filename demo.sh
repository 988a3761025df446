#!/usr/bin/env bash
# One command: set up .venv, then build a tiny LLaVA locally and train + evaluate it on the bundled synthetic task.
# Extra arguments go to `transformers-llava demo` (e.g. --out runs/demo --seed 1).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/transformers-llava demo "$@"

#!/usr/bin/env bash
# Creates .venv with the CPU build of torch and this package (with its test extras). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned to the CPU build: a bare `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"
# The web demo's browser test drives the system's Chromium through playwright (installed above, no browser download).
[ -x /usr/bin/chromium ] || echo "note: tests/test_web.py's browser test skips without /usr/bin/chromium" \
    "(Debian: apt-get install chromium; .ci/run installs it)" >&2

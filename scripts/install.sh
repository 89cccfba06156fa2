#!/usr/bin/env bash
# Create .venv (if missing) and install a requirements file into it, pinned by constraints.txt.
# Skips pip when the same requirements were already installed (a stamp file holds their hash).
# Usage: bash scripts/install.sh requirements.txt|requirements-test.txt
set -euo pipefail
cd "$(dirname "$0")/.."
requirements="${1:-requirements.txt}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "RewardLab needs Python 3.10 or newer; set PYTHON=/path/to/python3.x" >&2; exit 1; }
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(cat "$requirements" requirements.txt constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch is pinned to 2.13.0 (requirements and constraints): an unpinned torch pulls the CUDA build.
  .venv/bin/python -m pip install --quiet -r "$requirements" -c constraints.txt
  touch "$stamp"
fi

#!/usr/bin/env bash
# Install RewardLab into .venv and start it on http://127.0.0.1:7860 with the SQLite store in
# ./data and the demo dataset. Extra arguments go to `python app.py` (e.g. --port 8000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh requirements.txt
exec .venv/bin/python app.py "$@"

#!/usr/bin/env bash
# Install what the tests need (the Python stack, pytest, Playwright, Debian's Chromium) and run
# every test, the slow ones (training, browser) included, on a SQLite file; then run the storage
# and API tests again on a real PostgreSQL server started here on loopback (scripts/postgres.sh)
# and stopped at the end. Extra arguments go to pytest and run the SQLite pass only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh requirements-test.txt
if [ ! -x /usr/bin/chromium ]; then
  # Playwright drives Debian's Chromium; `playwright install` would need a download that is not possible here.
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi

echo "=== pass 1 of 2: every test on SQLite ==="
.venv/bin/python -m pytest --durations=25

echo "=== pass 2 of 2: storage and API tests on PostgreSQL ==="
pg_dir=$(mktemp -d)
chmod 755 "$pg_dir"
pg_port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
trap 'bash scripts/postgres.sh stop "$pg_dir/data" || true; rm -rf "$pg_dir"' EXIT
REWARDLAB_TEST_POSTGRES=$(bash scripts/postgres.sh start "$pg_dir/data" "$pg_port")
export REWARDLAB_TEST_POSTGRES
# Every test that opens a store, chosen in tests/conftest.py (runs_on_postgres) by the fixtures it uses.
.venv/bin/python -m pytest --durations=10

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

# The two passes run side by side: each is mostly one process waiting on its children (apps, workers,
# Chromium) and together they fill this machine's two cores better than one after the other. The PostgreSQL
# pass writes to a log that is printed after the SQLite pass; the script fails if either fails.
pg_dir=$(mktemp -d)
chmod 755 "$pg_dir"
pg_port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
trap 'bash scripts/postgres.sh stop "$pg_dir/data" || true; rm -rf "$pg_dir"' EXIT
postgres_url=$(bash scripts/postgres.sh start "$pg_dir/data" "$pg_port")
started=$SECONDS

# Pass 2: every test that opens a store, chosen in tests/conftest.py (runs_on_postgres) by the fixtures it uses.
(
  export REWARDLAB_TEST_POSTGRES=$postgres_url
  pass2_rc=0
  .venv/bin/python -m pytest --durations=10 > "$pg_dir/pass2.log" 2>&1 || pass2_rc=$?
  echo "$pass2_rc" > "$pg_dir/pass2.rc"
  echo "$((SECONDS - started))" > "$pg_dir/pass2.seconds"
) &
pass2_pid=$!

echo "=== pass 1 of 2: every test on SQLite (pass 2, on PostgreSQL, runs beside it; its log follows) ==="
pass1_rc=0
.venv/bin/python -m pytest --durations=25 || pass1_rc=$?
echo "pass 1 (SQLite) took $((SECONDS - started)) s"
wait "$pass2_pid" || true

echo "=== pass 2 of 2: storage and API tests on PostgreSQL ==="
cat "$pg_dir/pass2.log"
pass2_rc=$(cat "$pg_dir/pass2.rc" 2>/dev/null || echo 1)
echo "pass 2 (PostgreSQL) took $(cat "$pg_dir/pass2.seconds" 2>/dev/null || echo '?') s; both passes $((SECONDS - started)) s"
[ "$pass1_rc" -eq 0 ] && [ "$pass2_rc" -eq 0 ]

#!/usr/bin/env bash
# Install what the tests need (the Python stack, pytest, Playwright, Debian's Chromium) and run
# every test, the slow ones (training, browser) included, on a SQLite file, and the tests that open a
# store again on a real PostgreSQL server started here on loopback (scripts/postgres.sh) and stopped
# at the end. Extra arguments go to pytest and run the SQLite tests only, in one process.
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
# One OpenMP thread per process: the tests run torch in pytest itself, in job workers and in commands beside each
# other (and beside a second pytest process below) on a 2-core machine, and torch's default of one thread per core
# then has its threads spin at every barrier waiting for one another while other processes hold the cores: the
# killed-job test took 384 s wall next to one busy process with 2 threads and 39 s with 1 (30 s alone). torchrun
# sets OMP_NUM_THREADS=1 per process for the same reason. The app and the commands keep torch's default elsewhere.
export OMP_NUM_THREADS=1
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi

# Two processes fill this machine's two cores: the PostgreSQL pass runs beside the SQLite tests, and then takes
# SQLite test files from the end of the list while the first process goes on from the start; each file runs in
# whichever reaches it first (tests/conftest.py, SHARED_FILES_ENV), so neither waits for the other at the end.
# The second process writes to logs printed after the first finishes; the script fails if any part fails.
pg_dir=$(mktemp -d)
chmod 755 "$pg_dir"
shared_files="$pg_dir/sqlite-files-claimed"
mkdir "$shared_files"
pg_port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
trap 'bash scripts/postgres.sh stop "$pg_dir/data" || true; rm -rf "$pg_dir"' EXIT
postgres_url=$(bash scripts/postgres.sh start "$pg_dir/data" "$pg_port")
started=$SECONDS

(
  # The PostgreSQL pass: every test that opens a store, chosen in tests/conftest.py (runs_on_postgres) by the
  # fixtures it uses.
  pass2_rc=0
  REWARDLAB_TEST_POSTGRES=$postgres_url .venv/bin/python -m pytest --durations=10 > "$pg_dir/pass2.log" 2>&1 \
    || pass2_rc=$?
  echo "$pass2_rc" > "$pg_dir/pass2.rc"
  echo "$((SECONDS - started))" > "$pg_dir/pass2.seconds"
  tail_rc=0
  REWARDLAB_TEST_SHARED_FILES=$shared_files REWARDLAB_TEST_SHARED_FILES_FROM_END=1 \
    .venv/bin/python -m pytest --durations=10 > "$pg_dir/tail.log" 2>&1 || tail_rc=$?
  # (pytest exits 5 only if it collected nothing; left files are not reported, so a run of none of them ends 0)
  [ "$tail_rc" -eq 5 ] && tail_rc=0
  echo "$tail_rc" > "$pg_dir/tail.rc"
  echo "$((SECONDS - started))" > "$pg_dir/tail.seconds"
) &
second_pid=$!

echo "=== SQLite tests from the first file on (beside it: the PostgreSQL pass, then SQLite files from the last back) ==="
pass1_rc=0
REWARDLAB_TEST_SHARED_FILES=$shared_files .venv/bin/python -m pytest --durations=25 || pass1_rc=$?
echo "SQLite tests from the first file on took $((SECONDS - started)) s"
wait "$second_pid" || true

echo "=== PostgreSQL pass: the tests that open a store, on PostgreSQL ==="
cat "$pg_dir/pass2.log"
pass2_rc=$(cat "$pg_dir/pass2.rc" 2>/dev/null || echo 1)
echo "PostgreSQL pass took $(cat "$pg_dir/pass2.seconds" 2>/dev/null || echo '?') s"
echo "=== SQLite tests from the last file back (after the PostgreSQL pass) ==="
cat "$pg_dir/tail.log"
tail_rc=$(cat "$pg_dir/tail.rc" 2>/dev/null || echo 1)
echo "it ended at $(cat "$pg_dir/tail.seconds" 2>/dev/null || echo '?') s; all tests took $((SECONDS - started)) s"

# Every test file ran on SQLite in one process or the other.
unclaimed=0
for file in tests/test_*.py; do
  if [ ! -d "$shared_files/tests__$(basename "$file")" ]; then
    echo "no process ran $file on SQLite"
    unclaimed=1
  fi
done
[ "$pass1_rc" -eq 0 ] && [ "$pass2_rc" -eq 0 ] && [ "$tail_rc" -eq 0 ] && [ "$unclaimed" -eq 0 ]

#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the tests and benchmarks:
#   scripts/postgres.sh start DIR PORT   initdb into DIR (if empty) and start on 127.0.0.1:PORT
#   scripts/postgres.sh stop DIR         stop it (fast shutdown)
# It uses the binaries of Debian's postgresql package (installed when missing). PostgreSQL refuses
# to run as root, so under root the server runs as the `postgres` system user, which owns DIR.
# Connect with postgresql+psycopg://rewardlab@127.0.0.1:PORT/rewardlab (trust auth, loopback only).
set -euo pipefail
action=${1:?usage: postgres.sh start DIR PORT | stop DIR}
dir=${2:?the server folder}

pg_bin=""
for candidate in /usr/lib/postgresql/*/bin; do
  [ -x "$candidate/pg_ctl" ] && pg_bin=$candidate
done
if [ -z "$pg_bin" ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq postgresql >/dev/null
  for candidate in /usr/lib/postgresql/*/bin; do
    [ -x "$candidate/pg_ctl" ] && pg_bin=$candidate
  done
fi

as_server_user() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case "$action" in
  start)
    port=${3:?the port}
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
      as_server_user "$pg_bin/initdb" -D "$dir" -U rewardlab --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    fi
    # fsync stays on: the crash tests rely on the same durability a real server gives.
    as_server_user "$pg_bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=300" start >/dev/null
    as_server_user "$pg_bin/psql" -h 127.0.0.1 -p "$port" -U rewardlab -d postgres -qAt \
      -c "SELECT 1 FROM pg_database WHERE datname = 'rewardlab'" | grep -q 1 \
      || as_server_user "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U rewardlab rewardlab
    echo "postgresql+psycopg://rewardlab@127.0.0.1:$port/rewardlab"
    ;;
  stop)
    [ -f "$dir/postmaster.pid" ] && as_server_user "$pg_bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    ;;
  *)
    echo "unknown action $action: use start or stop" >&2
    exit 2
    ;;
esac

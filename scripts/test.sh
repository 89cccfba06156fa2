#!/usr/bin/env bash
# Install what the tests need (the Python stack, pytest, Playwright, Debian's Chromium) and run
# every test, the slow ones (training, browser) included. Extra arguments go to pytest.
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
exec .venv/bin/python -m pytest "$@"

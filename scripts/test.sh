#!/usr/bin/env bash
# Set up and run the test suite; safe to run again (each step is skipped when done).
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k cli     # arguments go to pytest
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# 1. a virtual environment with the pinned requirements (torch is the CPU build)
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt

# 2. Debian's chromium, which the real-browser test drives through Playwright
if [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
        $SUDO apt-get update
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
    else
        echo "warning: apt-get not found; the browser test will be skipped" >&2
    fi
fi

# 3. the tests
exec .venv/bin/python -m pytest -q "$@"

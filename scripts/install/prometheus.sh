#!/usr/bin/env bash
# Install Prometheus and promtool (Debian's prometheus package) for the /metrics
# tests (tests/e2e/test_prometheus.py) and the alert-rule tests: the tests start
# their own Prometheus on a free port with a temp TSDB and stop it by PID.
# Idempotent: nothing happens when both are there, and `apt-get update` runs
# only when the package is missing.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    echo "install/prometheus: installing prometheus (with promtool)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show prometheus >/dev/null 2>&1; then
        as_root apt-get update -qq
    fi
    as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
echo "install/prometheus: $(prometheus --version 2>&1 | head -1)"

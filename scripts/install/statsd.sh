#!/usr/bin/env bash
# The real StatsD daemon (Etsy's, from npm) for the metrics tests and the
# monitoring stack: installed under tools/statsd/ (not committed). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "install: nodejs and npm (for the StatsD daemon)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -f tools/statsd/node_modules/statsd/stats.js ]; then
    echo "install: statsd 0.9.0 from npm into tools/statsd"
    mkdir -p tools/statsd
    # --omit=optional: its optional native modules (syslog, ...) are not needed.
    npm install --prefix tools/statsd --no-audit --no-fund --omit=optional \
        --loglevel=error statsd@0.9.0 >/dev/null
fi

#!/usr/bin/env bash
# Install the DNS server the discovery tests (tests/e2e/test_discovery.py) start:
# dnsmasq from Debian's dnsmasq-base (the binary only, no system service).
# Idempotent: nothing happens when it is there, and `apt-get update` runs only
# when the package is missing.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v dnsmasq >/dev/null 2>&1 && [ ! -x /usr/sbin/dnsmasq ]; then
    echo "install/dns: installing dnsmasq-base"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show dnsmasq-base >/dev/null 2>&1; then
        as_root apt-get update -qq
    fi
    as_root apt-get install -y -qq --no-install-recommends dnsmasq-base >/dev/null
fi
echo "install/dns: $(/usr/sbin/dnsmasq --version | head -1)"

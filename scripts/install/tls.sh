#!/usr/bin/env bash
# Install what the TLS tests (tests/e2e/test_tls.py, devkit/certs.py) run as
# clients and as a certificate authority: the openssl and curl CLIs (curl with
# HTTP/2, which Debian's has). Idempotent: nothing happens when both are there,
# and `apt-get update` runs only when a package is missing.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
    echo "install/tls: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
        as_root apt-get update -qq
    fi
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install/tls: $(openssl version), $(curl --version | head -1 | cut -d' ' -f1-2)"

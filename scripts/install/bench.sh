#!/usr/bin/env bash
# Install what the benchmark (bench/, docs/bench.md) needs. Idempotent: when
# everything is there it only checks, and `apt-get update` runs only when a
# package is missing.
#   apt:  wrk (load generator), haproxy and nginx (peers; nginx is also the upstream),
#         nghttp2-client (h2load: the HTTP/2 load of the tls section),
#         iproute2 (ss: which worker holds each client connection),
#         valgrind (bench/instructions.py: instructions per request, counted)
#   pip:  proxy.py, mitmproxy and the asyncio peers' aiohttp, uvloop, uvicorn,
#         httptools and granian, pinned in bench/requirements-peers.txt, into a
#         venv of their own (bench/.venv-peers, gitignored): they pull in ~50
#         packages (Flask, cryptography, tornado...) that lbproxy's .venv must not carry.
# --apt-only: only the apt part (the smoke run needs no Python peers).
# No service is started: the packages' own nginx/haproxy services stay stopped
# (bench/ runs its own instances from generated configs in a temp dir).
set -euo pipefail
cd "$(dirname "$0")/../.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
command -v callgrind_control >/dev/null 2>&1 || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
    echo "install/bench: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages from starting their system services (port 80, a stray
    # haproxy): a policy-rc.d that says no, only for this install, unless the
    # machine already has one (container images usually do).
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        trap 'as_root rm -f "$policy"' EXIT
    fi
    # A fresh image has no package lists: fetch them once, then install.
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
        as_root apt-get update -qq
    fi
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for tool in wrk /usr/sbin/haproxy /usr/sbin/nginx h2load ss callgrind_control; do
    command -v "$tool" >/dev/null || { echo "install/bench: no $tool after install" >&2; exit 1; }
done

[ "${1:-}" = --apt-only ] && exit 0

PYTHON=${PYTHON:-python3}
peers=bench/.venv-peers
if [ ! -x "$peers/bin/python" ]; then
    "$PYTHON" -m venv "$peers"
fi
stamp=$peers/.requirements.sha
want=$(sha256sum < bench/requirements-peers.txt | cut -d' ' -f1)
# The executables bench/peers.py starts: one missing means a broken install.
tools=(mitmdump proxy uvicorn granian)
installed() { for tool in "${tools[@]}"; do [ -x "$peers/bin/$tool" ] || return 1; done; }
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! installed; then
    echo "install/bench: installing the Python peers into $peers"
    "$peers/bin/python" -m pip install -q --disable-pip-version-check \
        -r bench/requirements-peers.txt 2>&1 | grep -v '^WARNING: Location' || true
    installed || { echo "install/bench: the Python peers did not install" >&2; exit 1; }
    echo "$want" > "$stamp"
fi

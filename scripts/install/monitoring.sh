#!/usr/bin/env bash
# Install what the monitoring stack (monitoring/stack) and tests/tools/test_monitoring.py
# need: Debian 12's carbon-cache (graphite-carbon) and graphite-web, plus the
# StatsD daemon (scripts/install/statsd.sh). Idempotent: when everything is
# there it only checks. The system services the packages bring are not used
# (the stack runs its own processes on generated configs) and are stopped and
# disabled if the package started them. scripts/test runs it before pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

bash scripts/install/statsd.sh

missing=()
command -v carbon-cache >/dev/null 2>&1 || missing+=(graphite-carbon)
[ -f /usr/lib/python3/dist-packages/graphite/settings.py ] || missing+=(graphite-web)
# graphite-web renders PNGs with cairo (python3-cairo is a dependency; name it anyway).
/usr/bin/python3 -c 'import cairo' >/dev/null 2>&1 || missing+=(python3-cairo)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install/monitoring: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# graphite-carbon asks whether to delete the whisper files on purge: answer no.
echo "graphite-carbon graphite-carbon/postrm_remove_databases boolean false" \
    | as_root debconf-set-selections
if ! apt-cache show "${missing[0]}" >/dev/null 2>&1; then
    as_root apt-get update -qq
fi
# policy-rc.d 101: the packages' own services must not start (they would take
# ports 2003/2004/7002 and write /var/lib/graphite); the stack runs its own.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    created_policy=1
fi
status=0
as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
[ "$created_policy" = 1 ] && as_root rm -f "$policy"
[ "$status" = 0 ] || exit "$status"

command -v carbon-cache >/dev/null || { echo "install/monitoring: no carbon-cache" >&2; exit 1; }
[ -f /usr/lib/python3/dist-packages/graphite/settings.py ] \
    || { echo "install/monitoring: no graphite-web" >&2; exit 1; }
echo "install/monitoring: $(dpkg-query -W -f='${Package} ${Version}, ' graphite-carbon graphite-web)"

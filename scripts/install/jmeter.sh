#!/usr/bin/env bash
# Install what jmeter/run needs: Debian's JMeter 2.13 and a JDK (javac compiles
# jmeter/XStreamLauncher.java at run time). Idempotent: when both are there it
# only checks. scripts/test runs it before pytest; jmeter/run runs it when JMeter
# is missing.
set -euo pipefail

JMETER_HOME=${JMETER_HOME:-/usr/share/jmeter}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
# jmeter-http (the HTTP sampler) is only a Recommends of jmeter: name it.
[ -f "$JMETER_HOME/bin/ApacheJMeter.jar" ] || missing+=(jmeter)
[ -f "$JMETER_HOME/lib/ext/ApacheJMeter_http.jar" ] || missing+=(jmeter-http)
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install/jmeter: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# A fresh image has no package lists: fetch them once, then install.
if ! apt-cache show "${missing[0]}" >/dev/null 2>&1; then
    as_root apt-get update -qq
fi
as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
[ -f "$JMETER_HOME/lib/ext/ApacheJMeter_http.jar" ] \
    || { echo "install/jmeter: no JMeter HTTP sampler in $JMETER_HOME" >&2; exit 1; }
command -v javac >/dev/null || { echo "install/jmeter: no javac after install" >&2; exit 1; }
echo "install/jmeter: $(java -version 2>&1 | head -n1); JMeter in $JMETER_HOME"

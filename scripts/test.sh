#!/usr/bin/env bash
# Run every test tier this machine supports, with a coverage summary. Tiers that cannot run here
# are skipped by the tests themselves with the reason (pytest -ra prints them at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python

if [[ $(id -u) -ne 0 ]]; then
  echo "test: not root: the privileged and e2e tiers will be skipped"
fi
# The VM tier (tests/vm) boots a qemu VM when this kernel lacks IPVS, IPIP, FoU or dummy: set
# up its kernel and qemu then. If that fails here (no root, no apt), its tests skip saying why.
if ! "$PY" -m kube_router_lab.vm check >/dev/null; then
  bash scripts/vm/setup.sh || echo "test: the VM tier could not be set up: its tests will skip" >&2
fi
set +e
"$PY" -m pytest tests -q -ra -p no:cacheprovider \
  --cov=kube_router --cov=kube_router_lab --cov-report=term:skip-covered --cov-report=xml:coverage.xml "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "test: no tests were collected" >&2
  exit 1
fi
exit $rc

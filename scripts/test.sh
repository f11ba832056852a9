#!/usr/bin/env bash
# Run every test tier this machine supports, with a coverage summary. Tiers that cannot run here
# are skipped by the tests themselves with the reason (pytest -ra prints them at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python

if [[ $(id -u) -ne 0 ]]; then
  echo "test: not root: the privileged and e2e tiers will be skipped"
fi
set +e
"$PY" -m pytest tests -q -ra -p no:cacheprovider \
  --cov=kube_router --cov-report=term:skip-covered --cov-report=xml:coverage.xml "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "test: no tests were collected" >&2
  exit 1
fi
exit $rc

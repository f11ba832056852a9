#!/usr/bin/env bash
# One set-up step for a fresh Debian 12 machine (run as root): apt packages, a virtualenv with the
# project and its dev tools, and markdownlint. Idempotent: a stamp keyed on the inputs skips work.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
STAMP_DIR=.stamps
mkdir -p "$STAMP_DIR"
key=$(cat pyproject.toml scripts/setup.sh scripts/gen_gobgp.sh | sha256sum | cut -c1-16)
stamp="$STAMP_DIR/setup-$key"
if [[ -f "$stamp" && -x "$VENV/bin/python" && -f src/kube_router/bgp/api/gobgp_pb2_grpc.py ]]; then
  exit 0
fi

# gobgpd: the BGP engine (3.10; its gRPC API is what the stubs below speak). containernetworking-
# plugins: the CNI bridge plugin that the lab's pods are wired with.
APT_PACKAGES=(iptables ipset ipvsadm conntrack iproute2 kmod procps curl openssl python3-venv
  gobgpd containernetworking-plugins)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: need root to install apt packages: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing apt packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup: creating virtualenv $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev]'
# The lab (src/kube_router_lab) is not part of the distribution: a .pth file puts src/ on the
# virtualenv's path so the tests, the demo and the benchmarks import it from the tree.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$(pwd)/src" > "$site/kube_router_lab.pth"
# gobgpd's gRPC stubs from Debian's golang-github-osrg-gobgp-dev (downloaded, never installed).
PYTHON="$VENV/bin/python" bash scripts/gen_gobgp.sh

if [[ ! -x .tools/node_modules/.bin/markdownlint ]]; then
  echo "setup: installing markdownlint-cli"
  npm install --silent --no-audit --no-fund --prefix .tools markdownlint-cli@0.45.0 >/dev/null
fi

rm -f "$STAMP_DIR"/setup-*
touch "$stamp"
echo "setup: done"

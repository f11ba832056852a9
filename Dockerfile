# syntax=docker/dockerfile:1
# Container image of kube-router for Python: `make container` (or `docker build -t IMAGE .`).
#
# Stage 1 builds the virtualenv; stage 2 is the runtime with the kernel tools the agent drives.
# Both stages start from the same Debian image, so the venv's python3 symlink resolves in stage 2.
ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS build
# golang-github-osrg-gobgp-dev is only downloaded (not installed): its protos become the gRPC stubs.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates python3 python3-venv \
 && mkdir -p /var/cache/gobgp \
 && cd /var/cache/gobgp \
 && apt-get download golang-github-osrg-gobgp-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what `pip install .` reads (pyproject.toml names README.md as the readme), and the stub
# generator.
COPY pyproject.toml README.md ./
COPY scripts/gen_gobgp.sh ./scripts/
COPY src ./src
# gobgpd's stubs are generated the same way as `make setup` does, before `pip install .` packs
# them (src/kube_router/bgp/api/), with grpcio-tools in a throwaway virtualenv.
# Every runtime dependency ships wheels for CPython 3.11 on amd64 and arm64: no compiler needed.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/gen \
 && /opt/gen/bin/pip install 'grpcio-tools>=1.85.1' \
 && PYTHON=/opt/gen/bin/python GOBGP_CACHE=/var/cache/gobgp bash scripts/gen_gobgp.sh \
 && rm -rf /opt/gen \
 && python3 -m venv /opt/kube-router \
 && /opt/kube-router/bin/pip install . \
 && /opt/kube-router/bin/python -c 'import kube_router.bgp.api.gobgp_pb2_grpc' \
 && /opt/kube-router/bin/kube-router --help >/dev/null

FROM ${DEBIAN_IMAGE}
# iptables: bookworm's package ships both backends (iptables-legacy* and iptables-nft*); the
#   `iptables` alternative points at nft. Upstream's image runs `iptables-wrapper`, which picks
#   legacy or nft at start by counting the rules already present in each. We do not install a
#   wrapper: the agent is to run the same detection itself at start-up (it arrives with the network
#   policy controller) and call the chosen variant's
#   binaries (iptables-legacy-restore or iptables-nft-restore) by name.
# nftables: the `nft` CLI, for the experimental --use-nftables-for-netpol backend (upstream ships it).
# gobgpd: the BGP daemon the agent runs as a child process, plus the `gobgp` CLI. Pinned to 3.10
#   because the gRPC API (package apipb) changed in v4.
# containernetworking-plugins: bridge, portmap, host-local and loopback under /usr/lib/cni, which
#   the init container copies to the host's /opt/cni/bin when missing.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates \
      conntrack \
      containernetworking-plugins \
      'gobgpd=3.10.*' \
      iproute2 \
      ipset \
      iptables \
      ipvsadm \
      kmod \
      nftables \
      python3 \
 && rm -rf /var/lib/apt/lists/* \
 && for b in iptables-legacy-restore iptables-nft-restore ip6tables-legacy-restore \
             ip6tables-nft-restore ipset ipvsadm conntrack gobgpd gobgp; do \
      command -v "$b" >/dev/null || { echo "missing $b" >&2; exit 1; }; \
    done \
 && for p in bridge portmap host-local loopback; do \
      test -x "/usr/lib/cni/$p" || { echo "missing CNI plugin $p" >&2; exit 1; }; \
    done

COPY --from=build /opt/kube-router /opt/kube-router
COPY cni/10-kuberouter.conflist /usr/share/kube-router/10-kuberouter.conflist

# cni-install: the same entry point upstream's image has, so upstream's DaemonSets (which run
# /usr/local/bin/cni-install in their init container with the host's /opt mounted on /opt) work
# with this image too. Copies each plugin kube-router uses into HOST_BIN_PATH unless the host
# already has an executable of that name.
COPY --chmod=0755 <<'EOF' /usr/local/bin/cni-install
#!/bin/sh
set -eu
src=${LOCAL_BIN_PATH:-/usr/lib/cni}
dst=${HOST_BIN_PATH:-/opt/cni/bin}
mkdir -p "$dst"
for p in bridge portmap host-local loopback; do
  if [ -x "$dst/$p" ]; then
    echo "cni-install: $dst/$p present, kept"
    continue
  fi
  install -m 0755 "$src/$p" "$dst/.$p.tmp"
  mv -f "$dst/.$p.tmp" "$dst/$p"
  echo "cni-install: installed $dst/$p"
done
EOF

# Upstream's binary lives at /usr/local/bin/kube-router; keep that path working for manifests
# and habits that name it.
RUN ln -s /opt/kube-router/bin/kube-router /usr/local/bin/kube-router

ENV PATH=/opt/kube-router/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="kube-router-py" \
      org.opencontainers.image.description="Kubernetes node networking agent compatible with kube-router" \
      org.opencontainers.image.licenses="Apache-2.0"
WORKDIR /root
ENTRYPOINT ["kube-router"]

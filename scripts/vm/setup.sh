#!/usr/bin/env bash
# Set-up of the VM tier (tests/vm): qemu and the tools the image build needs from apt, and in the
# cache directory (.vm/ unless KUBE_ROUTER_VM_CACHE says otherwise) Debian's stock kernel for the
# guest: the package behind linux-image-amd64 is downloaded and unpacked there, never installed on
# this host. Then depmod, and kube_router_lab.vmimage writes vmlinux and initramfs.cpio.gz.
# Idempotent: a stamp keyed on the inputs and the kernel package skips the work. Needs root only
# to install missing apt packages. Facts behind it: ../shared/reference/kernel-vm.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=${VENV:-.venv}
CACHE=${KUBE_ROUTER_VM_CACHE:-.vm}
STAMP_DIR=.stamps
APT_PACKAGES=(qemu-system-x86 kmod busybox-static cpio ipvsadm iproute2)
updated=0

apt_update() {
  if ((!updated)); then
    apt-get update -qq
    updated=1
  fi
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "vm setup: need root to install apt packages: ${missing[*]}" >&2
    exit 1
  fi
  echo "vm setup: installing apt packages: ${missing[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

kernel_package() {
  apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
pkg=$(kernel_package)
if [[ -z $pkg && $(id -u) -eq 0 ]]; then
  apt_update
  pkg=$(kernel_package)
fi
if [[ -z $pkg ]]; then
  echo "vm setup: apt knows no linux-image-amd64 (run apt-get update as root)" >&2
  exit 1
fi

inputs=(scripts/vm/setup.sh src/kube_router_lab/vmimage.py src/kube_router_lab/vmguest/init)
key=$({ cat "${inputs[@]}"; echo "$pkg"; } | sha256sum | cut -c1-16)
stamp="$STAMP_DIR/vm-$key"
if [[ -f $stamp && -f $CACHE/vmlinux && -f $CACHE/initramfs.cpio.gz && -f $CACHE/kver ]]; then
  exit 0
fi

start=$SECONDS
mkdir -p "$CACHE" "$STAMP_DIR"
rm -rf "$CACHE/download" "$CACHE/kroot.new"
mkdir -p "$CACHE/download"
echo "vm setup: downloading $pkg"
(cd "$CACHE/download" && apt-get download -qq "$pkg" 2>&1 | grep -v 'sandbox' >&2 || true)
deb=$(find "$CACHE/download" -name "${pkg}_*.deb" -print -quit)
if [[ -z $deb ]]; then
  echo "vm setup: apt-get download $pkg gave no .deb" >&2
  exit 1
fi
dpkg-deb -x "$deb" "$CACHE/kroot.new"
kver=${pkg#linux-image-}
if [[ ! -d $CACHE/kroot.new/lib/modules/$kver ]]; then
  echo "vm setup: $deb has no lib/modules/$kver" >&2
  exit 1
fi
depmod -b "$CACHE/kroot.new" "$kver"
rm -rf "$CACHE/kroot" "$CACHE/download"
mv "$CACHE/kroot.new" "$CACHE/kroot"
"$VENV/bin/python" -m kube_router_lab.vmimage build --kroot "$CACHE/kroot" --kver "$kver" --out "$CACHE"
echo "$kver" >"$CACHE/kver"

rm -f "$STAMP_DIR"/vm-*
touch "$stamp"
echo "vm setup: kernel $kver ready in $CACHE ($((SECONDS - start)) s)"

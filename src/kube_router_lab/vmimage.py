"""Build the VM tier's boot files from an extracted Debian kernel package.

``scripts/vm/setup.sh`` downloads ``linux-image-<kver>`` and unpacks it (never installing it on
the host); this module then makes the two files qemu boots:

- ``vmlinux``: the uncompressed kernel, taken out of the bzImage. qemu boots it through its PVH
  entry, which skips the in-guest decompressor (about 4 s under TCG);
- ``initramfs.cpio.gz``: static busybox, our stage-1 ``init`` and the modules that mount the
  host's filesystem (virtio, 9p, overlay), listed in dependency order for busybox ``insmod``.

Usage: ``python -m kube_router_lab.vmimage build --kroot DIR --kver KVER --out DIR``.
"""

from __future__ import annotations

import argparse
import gzip
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

# bzImage boot protocol (Documentation/arch/x86/boot.rst): offsets into the setup header.
SETUP_SECTS_OFFSET = 0x1F1
HEADER_MAGIC_OFFSET = 0x202
HEADER_MAGIC = b"HdrS"
VERSION_OFFSET = 0x206
PAYLOAD_OFFSET_OFFSET = 0x248
PAYLOAD_VERSION = 0x208  # the first protocol version with payload_offset/payload_length
SECTOR = 512
DEFAULT_SETUP_SECTS = 4
ELF_MAGIC = b"\x7fELF"

XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# Modules stage 1 loads to reach the host's filesystem: virtio-mmio (microvm) and virtio-pci (the
# pc fallback), 9p over virtio, and overlayfs. Their dependencies come from modules.dep.
BOOT_MODULES = ("virtio_mmio", "virtio_pci", "9pnet_virtio", "9p", "overlay")
# Directories the initramfs needs before stage 1 mounts anything.
INITRAMFS_DIRS = ("bin", "dev", "proc", "sys", "lower", "upper", "newroot", "modules")
GUEST_DIR = Path(__file__).with_name("vmguest")
BUSYBOX = Path("/bin/busybox")


class ImageError(Exception):
    """The kernel package or a tool did not give what the VM image needs."""


def _decompress_xz(data: bytes) -> bytes:
    # The kernel appends the uncompressed size after the stream: stop at the stream's end.
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _decompress_gzip(data: bytes) -> bytes:
    return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(data)


def _decompress_zstd(data: bytes) -> bytes:
    # The standard library of Python 3.11 has no zstd: use the zstd command.
    try:
        proc = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise ImageError(f"zstd could not decompress the kernel: {err}") from err
    return proc.stdout


DECOMPRESSORS: dict[bytes, Callable[[bytes], bytes]] = {
    XZ_MAGIC: _decompress_xz,
    GZIP_MAGIC: _decompress_gzip,
    ZSTD_MAGIC: _decompress_zstd,
}


def _header_payload(image: bytes) -> bytes | None:
    """The compressed kernel as the setup header locates it, or None for an old header."""
    if image[HEADER_MAGIC_OFFSET : HEADER_MAGIC_OFFSET + 4] != HEADER_MAGIC:
        return None
    (version,) = struct.unpack_from("<H", image, VERSION_OFFSET)
    if version < PAYLOAD_VERSION:
        return None
    setup_sects = image[SETUP_SECTS_OFFSET] or DEFAULT_SETUP_SECTS
    offset, length = struct.unpack_from("<II", image, PAYLOAD_OFFSET_OFFSET)
    start = (setup_sects + 1) * SECTOR + offset
    payload = image[start : start + length]
    return payload if len(payload) == length and length else None


def _try_decompress(payload: bytes) -> bytes | None:
    for magic, decompress in DECOMPRESSORS.items():
        if payload.startswith(magic):
            try:
                out = decompress(payload)
            except (lzma.LZMAError, zlib.error) as err:
                raise ImageError(f"corrupt {magic!r} kernel payload: {err}") from err
            return out if out.startswith(ELF_MAGIC) else None
    return None


def extract_vmlinux(image: bytes) -> bytes:
    """The ELF kernel inside a bzImage.

    The setup header's payload fields say where the compressed kernel is; an image without them
    is searched for the first xz, gzip or zstd stream that decompresses to an ELF file.
    """
    payload = _header_payload(image)
    if payload is not None:
        elf = _try_decompress(payload)
        if elf is not None:
            return elf
    for magic in DECOMPRESSORS:
        pos = image.find(magic)
        while pos >= 0:
            try:
                elf = _try_decompress(image[pos:])
            except ImageError:
                elf = None
            if elf is not None:
                return elf
            pos = image.find(magic, pos + 1)
    raise ImageError("no xz, gzip or zstd stream in the image decompresses to an ELF kernel")


def module_name(path: str) -> str:
    """``kernel/fs/9p/9p.ko.xz`` -> ``9p``; dashes and underscores are one to the kernel."""
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep as ``name -> (path, [dependency paths])``."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if sep:
            table[module_name(path)] = (path.strip(), deps.split())
    return table


def module_load_order(modules_dep: str, wanted: Iterable[str]) -> list[str]:
    """Paths of the wanted modules and all their dependencies, each after what it needs."""
    table = parse_modules_dep(modules_dep)
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name not in table:
            raise ImageError(f"module {name} is not in modules.dep (built in, or misnamed?)")
        path, deps = table[name]
        if path in order or name in visiting:
            return
        visiting.add(name)
        for dep in deps:
            visit(module_name(dep))
        order.append(path)

    for name in wanted:
        visit(name.replace("-", "_"))
    return order


def _read_module(path: Path) -> bytes:
    """A module's ELF bytes: busybox insmod may not read compressed modules."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        return _decompress_zstd(data)
    return data


def _stage_initramfs(root: Path, moddir: Path, busybox: Path) -> None:
    for name in INITRAMFS_DIRS:
        (root / name).mkdir()
    shutil.copy2(busybox, root / "bin" / "busybox")
    shutil.copy2(GUEST_DIR / "init", root / "init")
    (root / "init").chmod(0o755)
    order = module_load_order((moddir / "modules.dep").read_text(), BOOT_MODULES)
    names = []
    for rel in order:
        name = module_name(rel) + ".ko"
        (root / "modules" / name).write_bytes(_read_module(moddir / rel))
        names.append(name)
    (root / "modules" / "order").write_text("".join(f"{n}\n" for n in names))


def build_initramfs(moddir: Path, out: Path, busybox: Path | None = None) -> None:
    """Write a gzip'd newc cpio archive holding busybox, ``init`` and the boot modules."""
    with tempfile.TemporaryDirectory(prefix="krvm-initramfs-") as tmp:
        root = Path(tmp)
        _stage_initramfs(root, moddir, busybox or BUSYBOX)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        try:
            proc = subprocess.run(
                ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
                input="".join(f"{f}\n" for f in [".", *files]).encode(),
                cwd=root,
                capture_output=True,
                check=True,
            )
        except (OSError, subprocess.CalledProcessError) as err:
            raise ImageError(f"cpio failed: {err}") from err
    _write_atomic(out, gzip.compress(proc.stdout, compresslevel=6, mtime=0))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build(kroot: Path, kver: str, out: Path) -> None:
    """``vmlinux`` and ``initramfs.cpio.gz`` in ``out`` from an unpacked kernel package."""
    bzimage = kroot / "boot" / f"vmlinuz-{kver}"
    moddir = kroot / "lib" / "modules" / kver
    if not (moddir / "modules.dep").is_file():
        raise ImageError(f"{moddir}/modules.dep is missing (run depmod -b {kroot} {kver})")
    try:
        image = bzimage.read_bytes()
    except OSError as err:
        raise ImageError(f"cannot read the kernel image: {err}") from err
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "vmlinux", extract_vmlinux(image))
    build_initramfs(moddir, out / "initramfs.cpio.gz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kube_router_lab.vmimage")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write vmlinux and initramfs.cpio.gz")
    b.add_argument("--kroot", type=Path, required=True, help="the unpacked kernel package")
    b.add_argument("--kver", required=True, help="the kernel release, e.g. 6.1.0-56-amd64")
    b.add_argument("--out", type=Path, required=True, help="where the boot files go")
    args = parser.parse_args(argv)
    try:
        build(args.kroot, args.kver, args.out)
    except ImageError as err:
        print(f"vmimage: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The VM tier's image builder: the kernel out of a bzImage, boot modules in dependency order."""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kube_router_lab import vmimage
from kube_router_lab.vmimage import ImageError, extract_vmlinux, module_load_order

ELF = b"\x7fELF" + bytes(range(256)) * 64


def bzimage(payload: bytes, *, setup_sects: int = 3, header: bool = True) -> bytes:
    """A bzImage-shaped file: setup sectors, then some decompressor code, then the payload."""
    pm_start = (setup_sects + 1) * vmimage.SECTOR
    code = b"\x90" * 300
    image = bytearray(pm_start) + code + payload + b"\x00" * 64
    image[vmimage.SETUP_SECTS_OFFSET] = setup_sects
    if header:
        image[vmimage.HEADER_MAGIC_OFFSET : vmimage.HEADER_MAGIC_OFFSET + 4] = b"HdrS"
        struct.pack_into("<H", image, vmimage.VERSION_OFFSET, 0x20F)
        struct.pack_into("<II", image, vmimage.PAYLOAD_OFFSET_OFFSET, len(code), len(payload))
    return bytes(image)


def kernel_xz(data: bytes) -> bytes:
    # As the kernel's build does: an xz stream with CRC32, then the uncompressed size.
    return lzma.compress(data, check=lzma.CHECK_CRC32) + struct.pack("<I", len(data))


def test_the_header_locates_an_xz_payload() -> None:
    assert extract_vmlinux(bzimage(kernel_xz(ELF))) == ELF


def test_setup_sects_zero_means_four() -> None:
    image = bytearray(bzimage(kernel_xz(ELF), setup_sects=4))
    image[vmimage.SETUP_SECTS_OFFSET] = 0
    assert extract_vmlinux(bytes(image)) == ELF


def test_without_payload_fields_the_image_is_searched_for_a_stream() -> None:
    # A decoy gzip magic that does not decompress to ELF comes first.
    decoy = gzip.compress(b"not a kernel")
    image = bzimage(decoy + gzip.compress(ELF), header=False)
    assert extract_vmlinux(image) == ELF


def test_an_image_without_a_kernel_is_refused() -> None:
    with pytest.raises(ImageError, match="ELF kernel"):
        extract_vmlinux(bzimage(gzip.compress(b"no elf here")))


MODULES_DEP = """\
kernel/fs/9p/9p.ko: kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/block/nbd-x.ko.xz:
"""


def test_each_module_comes_after_what_it_needs() -> None:
    order = module_load_order(MODULES_DEP, ["9pnet_virtio", "9p", "overlay"])
    names = [vmimage.module_name(p) for p in order]
    assert sorted(names) == sorted(
        ["9pnet_virtio", "9pnet", "virtio_ring", "9p", "netfs", "fscache", "overlay"]
    )
    for module, needs in [("9p", ["netfs", "9pnet", "fscache"]), ("fscache", ["netfs"])]:
        assert all(names.index(n) < names.index(module) for n in needs)
    assert names.count("9pnet") == 1


def test_module_names_ignore_dashes_and_compression() -> None:
    assert module_load_order(MODULES_DEP, ["nbd_x"]) == ["kernel/drivers/block/nbd-x.ko.xz"]
    assert vmimage.module_name("kernel/drivers/block/nbd-x.ko.xz") == "nbd_x"


def test_an_unknown_module_is_an_error() -> None:
    with pytest.raises(ImageError, match="virtio_mmio"):
        module_load_order(MODULES_DEP, ["virtio_mmio"])


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs cpio (make setup-vm installs it)")
def test_build_writes_the_kernel_and_an_initramfs_with_ordered_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kver = "6.1.0-test"
    kroot, out = tmp_path / "kroot", tmp_path / "out"
    moddir = kroot / "lib" / "modules" / kver
    (kroot / "boot").mkdir(parents=True)
    (kroot / "boot" / f"vmlinuz-{kver}").write_bytes(bzimage(kernel_xz(ELF)))
    deps = {"virtio_mmio": ["virtio"], "9p": ["9pnet"], "9pnet_virtio": ["9pnet", "virtio"]}
    names = [*vmimage.BOOT_MODULES, "virtio", "9pnet"]
    lines = []
    for name in names:
        lines.append(
            f"kernel/{name}.ko.xz: " + " ".join(f"kernel/{d}.ko.xz" for d in deps.get(name, []))
        )
        (moddir / "kernel").mkdir(parents=True, exist_ok=True)
        (moddir / "kernel" / f"{name}.ko.xz").write_bytes(lzma.compress(f"module {name}".encode()))
    (moddir / "modules.dep").write_text("\n".join(lines) + "\n")
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"#!busybox")
    monkeypatch.setattr(vmimage, "BUSYBOX", busybox)

    assert vmimage.main(["build", "--kroot", str(kroot), "--kver", kver, "--out", str(out)]) == 0

    assert (out / "vmlinux").read_bytes() == ELF
    extract = tmp_path / "extract"
    extract.mkdir()
    archive = gzip.decompress((out / "initramfs.cpio.gz").read_bytes())
    subprocess.run(["cpio", "-id", "--quiet"], input=archive, cwd=extract, check=True)
    assert (extract / "init").read_text().startswith("#!/bin/busybox sh")
    assert (extract / "bin" / "busybox").read_bytes() == b"#!busybox"
    order = (extract / "modules" / "order").read_text().split()
    assert order.index("virtio.ko") < order.index("virtio_mmio.ko")
    assert order.index("9pnet.ko") < order.index("9p.ko")
    assert (extract / "modules" / "9p.ko").read_bytes() == b"module 9p", "stored uncompressed"


def test_build_says_when_depmod_did_not_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        vmimage.main(["build", "--kroot", str(tmp_path), "--kver", "x", "--out", str(tmp_path)])
        == 1
    )
    assert "depmod" in capsys.readouterr().err

"""The proxy's sysctls against a directory laid out like /proc/sys."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kube_router.dataplane import sysctl
from kube_router.dataplane.sysctl import SloppyTcp, SysctlError, Sysctls, setup_proxy_sysctls

IPVS = [path for path, _ in sysctl.PROXY_SYSCTLS if "/vs/" in path]


def tree(root: Path, values: dict[str, str]) -> Sysctls:
    for path, value in values.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(value + "\n")
    return Sysctls(root)


def rp(name: str) -> str:
    return sysctl.RP_FILTER_TEMPLATE.format(name)


def full_tree(root: Path, rp_values: dict[str, str]) -> Sysctls:
    values = {path: "9" for path, _ in sysctl.PROXY_SYSCTLS}
    values |= {rp(name): value for name, value in rp_values.items()}
    return tree(root, values)


def test_every_proxy_sysctl_is_set(tmp_path: Path) -> None:
    sysctls = full_tree(tmp_path, {})
    report = setup_proxy_sysctls(None, sysctls=sysctls)
    for path, value in sysctl.PROXY_SYSCTLS:
        assert sysctls.read(path) == str(value), path
    assert report.written == [path for path, _ in sysctl.PROXY_SYSCTLS]
    assert report.missing == [rp(n) for n in sysctl.RP_FILTER_INTERFACES]


@pytest.mark.parametrize(
    ("before", "after"),
    [("1", "2"), ("0", "0"), ("2", "2")],
    ids=["strict loosened", "off left alone", "loose left alone"],
)
def test_rp_filter_only_goes_from_1_to_2(tmp_path: Path, before: str, after: str) -> None:
    names = ["all", "kube-bridge", "kube-dummy-if", "eth0", "lo"]
    sysctls = full_tree(tmp_path, dict.fromkeys(names, before))
    report = setup_proxy_sysctls("eth0", sysctls=sysctls)
    for name in names[:4]:
        assert sysctls.read(rp(name)) == after, name
    assert sysctls.read(rp("lo")) == before  # not one of the proxy's interfaces
    assert (rp("eth0") in report.written) == (before != after)


def test_rp_filter_is_left_alone_without_ipv4(tmp_path: Path) -> None:
    sysctls = full_tree(tmp_path, {"all": "1", "eth0": "1"})
    setup_proxy_sysctls("eth0", ipv4=False, sysctls=sysctls)
    assert (sysctls.read(rp("all")), sysctls.read(rp("eth0"))) == ("1", "1")


@pytest.mark.parametrize("node_interface", [None, "", "all", "kube-dummy-if"])
def test_interfaces_are_not_repeated(node_interface: str | None) -> None:
    names = sysctl.rp_filter_interfaces(node_interface)
    assert names == list(sysctl.RP_FILTER_INTERFACES)


def test_missing_sysctls_are_warnings_not_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No ip_vs loaded: the net/ipv4/vs directory is absent."""
    sysctls = tree(tmp_path, {sysctl.ARP_IGNORE_ALL: "0", sysctl.ARP_ANNOUNCE_ALL: "0"})
    with caplog.at_level(logging.WARNING):
        report = setup_proxy_sysctls("eth0", sysctls=sysctls)
    assert report.written == [sysctl.ARP_IGNORE_ALL, sysctl.ARP_ANNOUNCE_ALL]
    assert report.missing[: len(IPVS)] == IPVS
    assert all(path in caplog.text for path in IPVS)
    assert sysctls.read(sysctl.ARP_IGNORE_ALL) == "1"


@pytest.mark.parametrize("operation", ["read", "write"])
def test_other_errors_name_the_path(tmp_path: Path, operation: str) -> None:
    (tmp_path / sysctl.IPVS_CONNTRACK).mkdir(parents=True)  # a directory: EISDIR
    sysctls = Sysctls(tmp_path)
    with pytest.raises(SysctlError, match="net/ipv4/vs/conntrack"):
        if operation == "read":
            sysctls.read(sysctl.IPVS_CONNTRACK)
        else:
            sysctls.write(sysctl.IPVS_CONNTRACK, 1)


def test_setup_fails_on_an_unwritable_sysctl(tmp_path: Path) -> None:
    full_tree(tmp_path, {})
    (tmp_path / sysctl.ARP_IGNORE_ALL).unlink()
    (tmp_path / sysctl.ARP_IGNORE_ALL).mkdir()
    with pytest.raises(SysctlError, match="arp_ignore=1"):
        setup_proxy_sysctls(None, sysctls=Sysctls(tmp_path))


def test_sloppy_tcp_writes_only_changes(tmp_path: Path) -> None:
    sysctls = tree(tmp_path, {sysctl.IPVS_SLOPPY_TCP: "0"})
    sloppy = SloppyTcp(sysctls)
    steps = [(False, False, "0"), (True, True, "1"), (True, False, "1"), (False, True, "0")]
    for enabled, wrote, value in steps:
        assert sloppy.set(enabled) is wrote, enabled
        assert sysctls.read(sysctl.IPVS_SLOPPY_TCP) == value


def test_sloppy_tcp_without_ip_vs_is_skipped(tmp_path: Path) -> None:
    sloppy = SloppyTcp(Sysctls(tmp_path))
    assert sloppy.set(True) is False
    assert sloppy.cached is None

"""kube-bridge set-up over the bridge fake, and the bridge sysctls over a sysctl tree in tmp."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from kube_router.controllers.routing.bridge import (
    BRIDGE_NF_CALL_IP6TABLES,
    BRIDGE_NF_CALL_IPTABLES,
    IPV6_DISABLE_ALL,
    BridgeSetupError,
    set_bridge_sysctls,
    setup_bridge_netfilter,
    setup_kube_bridge,
)
from kube_router.dataplane.bridge import BridgeError, FakeBridges, LinkState
from kube_router.dataplane.exec import Executor
from kube_router.dataplane.sysctl import Sysctls


@pytest.mark.parametrize(
    ("existing_mtu", "max_mtu", "want_mtu", "returned"),
    [
        (None, 65535, 9001, 9001),  # created, sized
        (1500, 65535, 9001, 9001),  # existing, resized
        (9001, 65535, 9001, 9001),  # already right
        (1500, 1500, 9001, 1500),  # the kernel refuses: keep 1500, also for the CNI conf
        (1450, 65535, None, None),  # no auto-mtu: left alone
    ],
)
def test_setup_kube_bridge(
    existing_mtu: int | None, max_mtu: int, want_mtu: int | None, returned: int | None
) -> None:
    links = FakeBridges(max_mtu=max_mtu)
    if existing_mtu is not None:
        links.links["kube-bridge"] = LinkState("kube-bridge", 7, "bridge", existing_mtu, False)
    assert asyncio.run(setup_kube_bridge(links, want_mtu)) == returned
    link = links.links["kube-bridge"]
    assert link.up and link.kind == "bridge"
    assert link.mtu == (returned or existing_mtu or 1500)


class RacingBridges(FakeBridges):
    """Someone (the CNI plugin) creates the bridge between our look and our add."""

    async def add_bridge(self, name: str) -> None:
        await super().add_bridge(name)
        raise BridgeError(errno.EEXIST, "adding bridge: File exists")


class BrokenBridges(FakeBridges):
    async def add_bridge(self, name: str) -> None:
        raise BridgeError(errno.EPERM, "adding bridge: Operation not permitted")


def test_created_meanwhile_is_fine() -> None:
    links = RacingBridges()
    assert asyncio.run(setup_kube_bridge(links, 1400)) == 1400
    assert links.links["kube-bridge"].up


def test_creation_failure_is_an_error() -> None:
    with pytest.raises(BridgeSetupError, match="Operation not permitted"):
        asyncio.run(setup_kube_bridge(BrokenBridges(), 1400))


def sysctl_tree(root: Path, paths: list[str], value: str = "0") -> Sysctls:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(value + "\n")
    return Sysctls(root)


ALL = [BRIDGE_NF_CALL_IPTABLES, BRIDGE_NF_CALL_IP6TABLES, IPV6_DISABLE_ALL]


@pytest.mark.parametrize(
    ("ipv6", "want"),
    [
        (
            False,
            {BRIDGE_NF_CALL_IPTABLES: "1", BRIDGE_NF_CALL_IP6TABLES: "0", IPV6_DISABLE_ALL: "1"},
        ),
        (
            True,
            {BRIDGE_NF_CALL_IPTABLES: "1", BRIDGE_NF_CALL_IP6TABLES: "1", IPV6_DISABLE_ALL: "0"},
        ),
    ],
)
def test_sysctls(tmp_path: Path, ipv6: bool, want: dict[str, str]) -> None:
    sysctls = sysctl_tree(tmp_path, ALL)
    (tmp_path / IPV6_DISABLE_ALL).write_text("1\n")
    report = set_bridge_sysctls(sysctls, ipv6)
    assert {p: sysctls.read(p) for p in ALL} == want
    assert report.written == [p for p in ALL if ipv6 or p == BRIDGE_NF_CALL_IPTABLES]


def test_missing_sysctl_is_reported(tmp_path: Path) -> None:
    report = set_bridge_sysctls(sysctl_tree(tmp_path, []), ipv6=False)
    assert report.missing == [BRIDGE_NF_CALL_IPTABLES]


def test_failed_modprobe_still_writes_sysctls(tmp_path: Path) -> None:
    sysctls = sysctl_tree(tmp_path, ALL)
    executor = Executor(prefix=["false"])  # every command fails, as a modprobe with no module
    report = asyncio.run(setup_bridge_netfilter(executor, sysctls, ipv6=False))
    assert report.written == [BRIDGE_NF_CALL_IPTABLES]

"""kube-bridge and bridge netfilter, as the routing controller sets them up at start
(reference §4.2 steps 8 and 9, §5.6).

- :func:`setup_kube_bridge`: ``kube-bridge`` is created (a Linux bridge) if missing and set up;
  with an MTU (``--auto-mtu`` and a known node MTU) its MTU is set. When the kernel refuses the
  MTU, the bridge keeps its current one and that is the MTU to write into the CNI conf (as
  upstream does), so pods never get a bigger MTU than their bridge. The returned MTU is the one
  for :meth:`CniConf.set_mtu <kube_router.controllers.routing.cni.CniConf.set_mtu>` (None: leave
  the conf's ``mtu`` alone).
- :func:`setup_bridge_netfilter`: ``modprobe br_netfilter`` through the Executor, then the
  sysctls ``net/bridge/bridge-nf-call-iptables=1`` (and ``bridge-nf-call-ip6tables=1`` with
  IPv6) and, with IPv6, ``net/ipv6/conf/all/disable_ipv6=0``, written in network namespace
  ``netns`` when given (the sysctls under ``/proc/sys/net`` belong to the namespace of the thread
  that opens them). A failed modprobe is logged, as upstream does, and the sysctls are still
  tried: the module may be built in, or loaded by the host.

The controller runs: CNI conf loaded and updated (``cni``), ``mtu = await
setup_kube_bridge(links, node_mtu if auto_mtu else None)``, ``conf.set_mtu(mtu)`` when not None,
``conf.write()``, then ``await setup_bridge_netfilter(executor, sysctls, ipv6)``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Final

from kube_router.dataplane.bridge import BridgeError, BridgeLinks
from kube_router.dataplane.exec import CommandError, Executor
from kube_router.dataplane.netlink import in_netns
from kube_router.dataplane.sysctl import ENABLED, SysctlReport, Sysctls

log = logging.getLogger(__name__)

KUBE_BRIDGE: Final = "kube-bridge"
BR_NETFILTER: Final = "br_netfilter"
BRIDGE_NF_CALL_IPTABLES: Final = "net/bridge/bridge-nf-call-iptables"
BRIDGE_NF_CALL_IP6TABLES: Final = "net/bridge/bridge-nf-call-ip6tables"
IPV6_DISABLE_ALL: Final = "net/ipv6/conf/all/disable_ipv6"
IPV6_ENABLED: Final = 0

__all__ = [
    "BRIDGE_NF_CALL_IP6TABLES",
    "BRIDGE_NF_CALL_IPTABLES",
    "IPV6_DISABLE_ALL",
    "KUBE_BRIDGE",
    "BridgeSetupError",
    "bridge_sysctls",
    "set_bridge_sysctls",
    "setup_bridge_netfilter",
    "setup_kube_bridge",
]


class BridgeSetupError(Exception):
    """kube-bridge could not be created, found or brought up."""


async def _ensure_bridge(links: BridgeLinks, name: str) -> None:
    try:
        if await links.get(name) is None:
            log.info("creating bridge %s", name)
            try:
                await links.add_bridge(name)
            except BridgeError as err:
                if err.errno != errno.EEXIST:  # EEXIST: created meanwhile (the CNI plugin)
                    raise
        await links.set_up(name)
    except BridgeError as err:
        raise BridgeSetupError(
            f"setting up {name}: {err}; the CNI bridge plugin may create it when a pod starts"
        ) from err


async def setup_kube_bridge(
    links: BridgeLinks, mtu: int | None, name: str = KUBE_BRIDGE
) -> int | None:
    """Create (if missing), bring up and size the bridge; the MTU for the CNI conf.

    ``mtu`` None or non-positive: the MTU is left alone and None is returned."""
    await _ensure_bridge(links, name)
    if mtu is None or mtu <= 0:
        return None
    current = await links.get(name)
    if current is None:
        raise BridgeSetupError(f"{name} vanished while being set up")
    if current.mtu == mtu:
        return mtu
    log.info("setting MTU of %s to %d", name, mtu)
    try:
        await links.set_mtu(name, mtu)
    except BridgeError as err:
        log.error(
            "could not set MTU %d on %s (%s); keeping its MTU %d, also in the CNI conf",
            mtu,
            name,
            err,
            current.mtu,
        )
        return current.mtu
    return mtu


def bridge_sysctls(ipv6: bool) -> list[tuple[str, int]]:
    """The sysctls to write, in upstream's order."""
    values = [(BRIDGE_NF_CALL_IPTABLES, ENABLED)]
    if ipv6:
        values += [(BRIDGE_NF_CALL_IP6TABLES, ENABLED), (IPV6_DISABLE_ALL, IPV6_ENABLED)]
    return values


def set_bridge_sysctls(sysctls: Sysctls, ipv6: bool) -> SysctlReport:
    """Write :func:`bridge_sysctls` (in the calling thread's network namespace)."""
    report = SysctlReport()
    for path, value in bridge_sysctls(ipv6):
        if sysctls.write(path, value):
            report.written.append(path)
        else:
            log.error("sysctl %s missing: network policy and the service proxy may not work", path)
            report.missing.append(path)
    return report


async def load_br_netfilter(executor: Executor) -> bool:
    """``modprobe br_netfilter``; False (logged) when it fails."""
    try:
        await executor.run(["modprobe", BR_NETFILTER])
    except CommandError as err:
        log.error("modprobe %s failed; bridged traffic may skip iptables: %s", BR_NETFILTER, err)
        return False
    return True


async def setup_bridge_netfilter(
    executor: Executor, sysctls: Sysctls, ipv6: bool, netns: str | None = None
) -> SysctlReport:
    """Load br_netfilter and write the bridge and IPv6 sysctls (in ``netns`` when given)."""
    await load_br_netfilter(executor)
    return await asyncio.to_thread(in_netns, netns, lambda: set_bridge_sysctls(sysctls, ipv6))

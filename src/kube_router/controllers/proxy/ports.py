"""The kernel ports the service proxy drives, bundled: IPVS, kube-dummy-if, firewall, health
checks, conntrack and sysctls; and ``--cleanup-config`` for what the proxy owns.

``ProxyDataplane.real`` builds the real adapters, in the current network namespace or in a named
one (tests); tests may build the dataclass from fakes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kube_router.controllers.proxy.firewall import ProxyFirewall
from kube_router.controllers.proxy.firewall_rules import SERVICE_IPS_SET, set_name
from kube_router.controllers.proxy.healthcheck import HealthCheckServers
from kube_router.dataplane import conntrack, ipset, ipvs, sysctl
from kube_router.dataplane.exec import Executor
from kube_router.dataplane.iptables import IPTables, RealIPTables, detect_backend
from kube_router.dataplane.ipvs import IPVS, Family, Timeouts
from kube_router.dataplane.ipvs_netlink import RealIPVS
from kube_router.dataplane.netlink import in_netns
from kube_router.dataplane.vips import DUMMY_IF, VipLinks
from kube_router.dataplane.vips_netlink import RealVipLinks

log = logging.getLogger(__name__)

FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")

FlushUDP = Callable[[str, int], Awaitable[None]]
SysctlSetup = Callable[[str | None, bool], Awaitable[None]]


async def _no_sysctls(_iface: str | None, _ipv4: bool) -> None:
    return None


@dataclass
class ProxyDataplane:
    ipvs: IPVS
    vips: VipLinks
    firewall: ProxyFirewall
    health: HealthCheckServers
    flush_udp: FlushUDP
    sysctls: SysctlSetup = field(default=_no_sysctls)

    @classmethod
    async def real(
        cls, families: Sequence[Family], netns: str | None = None, health_addr: str = ""
    ) -> ProxyDataplane:
        executor = Executor.in_netns(netns) if netns else Executor()
        backend = await detect_backend(executor)
        tables: dict[Family, IPTables] = {f: RealIPTables(executor, f, backend) for f in families}
        ipvs_port = await asyncio.to_thread(RealIPVS, netns)
        vips = await asyncio.to_thread(RealVipLinks, netns)

        async def flush(vip: str, port: int) -> None:
            await conntrack.flush_udp(executor, vip, port)

        async def sysctls(iface: str | None, ipv4: bool) -> None:
            def work() -> None:
                sysctl.setup_proxy_sysctls(iface, ipv4)

            await asyncio.to_thread(in_netns, netns, work)

        firewall = ProxyFirewall(tables, ipset.RealIPSets(executor))
        return cls(ipvs_port, vips, firewall, HealthCheckServers(health_addr), flush, sysctls)

    async def setup(self, cfg: Any, node_link: str | None) -> None:
        """What the proxy sets once at start: sysctls and the IPVS connection timeouts."""
        await self.sysctls(node_link, bool(cfg.enable_ipv4))
        timeouts = Timeouts(
            int(cfg.service_tcp_timeout),
            int(cfg.service_tcpfin_timeout),
            int(cfg.service_udp_timeout),
        )
        if timeouts != Timeouts():
            await self.ipvs.set_timeouts(timeouts)
            log.info(
                "IPVS timeouts: tcp %ds, tcpfin %ds, udp %ds (0: unchanged)",
                timeouts.tcp,
                timeouts.tcp_fin,
                timeouts.udp,
            )


async def ours(dp: ProxyDataplane) -> set[ipvs.ServiceKey]:
    """The virtual services the proxy made: on a VIP of kube-dummy-if or in kube-router-svip."""
    state = await dp.vips.state()
    addresses = {_plain(a) for a in state.addresses} if state is not None else set()
    sets = await dp.firewall.ipsets.save(None)
    for family in FAMILIES:
        found = sets.get(set_name(SERVICE_IPS_SET, family))
        if found is not None:
            addresses |= {_plain(m) for m in found.entries}
    return {key for key in await dp.ipvs.dump() if key.address in addresses}


def _plain(address: str) -> str:
    return str(ipaddress.ip_interface(address.split(maxsplit=1)[0]).ip)


async def cleanup(dp: ProxyDataplane) -> None:
    """``--cleanup-config``: our IPVS services, kube-dummy-if, chains, rules and sets.

    Upstream flushes every IPVS service of the host; we remove only those on addresses the proxy
    owns (its VIPs on kube-dummy-if and the addresses in kube-router-svip, node IPs of NodePorts
    included), so another user of IPVS on the node keeps its services.
    """
    tx = ipvs.Transaction()
    for key in sorted(await ours(dp), key=str):
        tx.del_service(key)
    if len(tx):
        await dp.ipvs.apply(tx)
    await dp.firewall.cleanup()
    await dp.vips.delete()
    log.info("cleanup: %d IPVS services and %s removed", len(tx), DUMMY_IF)

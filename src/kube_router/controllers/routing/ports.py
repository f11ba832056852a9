"""The ports the routing controller drives, bundled: the BGP engine (and its gobgpd), routes and
tunnels, kube-bridge, the node's sets and rules, sysctls; and ``--cleanup-config`` for what the
routing controller owns.

``RoutingPorts.real`` builds the real adapters in the current network namespace or a named one
(tests); tests build the dataclass from fakes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kube_router.bgp.daemon import DEFAULT_SOCKET, DaemonConfig, GoBGPDaemon
from kube_router.bgp.engine import BgpEngine
from kube_router.bgp.grpc_engine import GrpcEngine
from kube_router.controllers.routing.bridge import setup_bridge_netfilter
from kube_router.controllers.routing.node_firewall import NodeFirewall, random_fully_supported
from kube_router.dataplane import ipset
from kube_router.dataplane.bridge import BridgeLinks, NetlinkBridges
from kube_router.dataplane.exec import CommandError, Executor
from kube_router.dataplane.iptables import IPTables, RealIPTables, detect_backend
from kube_router.dataplane.ipvs import Family
from kube_router.dataplane.netlink import in_netns
from kube_router.dataplane.routes import RoutePort
from kube_router.dataplane.routes_netlink import NetlinkRoutes
from kube_router.dataplane.sysctl import Sysctls

log = logging.getLogger(__name__)

#: Where the agent keeps gobgpd's socket, pid file and log (env override for the lab, where
#: several agents share one file system).
RUN_DIR_ENV: Final = "KUBE_ROUTER_RUN_DIR"

BridgeSetup = Callable[[bool], Awaitable[None]]


async def _no_netfilter(_ipv6: bool) -> None:
    return None


@dataclass
class RoutingPorts:
    engine: BgpEngine
    routes: RoutePort
    firewall: NodeFirewall
    bridges: BridgeLinks
    daemon: GoBGPDaemon | None = None
    #: br_netfilter and the bridge sysctls (``ipv6``: also the IPv6 ones).
    netfilter: BridgeSetup = field(default=_no_netfilter)
    random_fully: bool = True
    #: The node interface's subnets (CIDRs), read from the kernel.
    subnets: Callable[[str], Awaitable[tuple[str, ...]]] | None = None

    @classmethod
    async def real(
        cls,
        cfg: Any,
        families: Sequence[Family],
        env: Mapping[str, str] | None = None,
        netns: str | None = None,
    ) -> RoutingPorts:
        env = dict(os.environ if env is None else env)
        executor = Executor.in_netns(netns) if netns else Executor()
        backend = await detect_backend(executor)
        tables: dict[Family, IPTables] = {f: RealIPTables(executor, f, backend) for f in families}
        firewall = NodeFirewall(tables, ipset.RealIPSets(executor))
        daemon = GoBGPDaemon(daemon_config(cfg, env))
        engine = GrpcEngine(daemon.target)

        async def netfilter(ipv6: bool) -> None:
            await setup_bridge_netfilter(executor, Sysctls(), ipv6, netns)

        async def subnets(address: str) -> tuple[str, ...]:
            return await asyncio.to_thread(in_netns, netns, lambda: link_subnets(address))

        return cls(
            engine=engine,
            routes=NetlinkRoutes(netns, executor),
            firewall=firewall,
            bridges=NetlinkBridges(netns),
            daemon=daemon,
            netfilter=netfilter,
            random_fully=await _random_fully(executor, backend),
            subnets=subnets,
        )


def daemon_config(cfg: Any, env: Mapping[str, str]) -> DaemonConfig:
    run_dir = env.get(RUN_DIR_ENV, "")
    socket = str(Path(run_dir) / "gobgpd.sock") if run_dir else DEFAULT_SOCKET
    return DaemonConfig(
        socket_path=socket,
        admin_address=str(cfg.gobgp_admin_address),
        admin_port=int(cfg.gobgp_admin_port),
        log_level="debug" if int(cfg.v) >= 2 else "info",
    )


async def _random_fully(executor: Executor, backend: str) -> bool:
    binary = "iptables-legacy" if backend == "legacy" else "iptables-nft"
    try:
        result = await executor.run([binary, "--version"])
    except (CommandError, OSError) as err:
        log.warning(
            "cannot tell the iptables version (%s); masquerading without --random-fully", err
        )
        return False
    return random_fully_supported(result.stdout)


def link_subnets(address: str) -> tuple[str, ...]:
    """The subnets of every address on the link that holds ``address`` (pyroute2; the current
    network namespace)."""
    from pyroute2 import IPRoute  # noqa: PLC0415  (netlink only on a real node)

    with IPRoute() as ipr:
        index = next((a["index"] for a in ipr.get_addr() if a.get("IFA_ADDRESS") == address), None)
        if index is None:
            return ()
        found = []
        for a in ipr.get_addr(index=index):
            ip = a.get("IFA_ADDRESS")
            if ip:
                net = ipaddress.ip_network(f"{ip}/{a['prefixlen']}", strict=False)
                if not net.is_link_local:
                    found.append(str(net))
        return tuple(sorted(set(found)))

"""The routing controller's node set-up, in upstream's order (kube-router.md §4.2 "Startup"):
the CNI conf file, the node's sets and rules, the AWS source/destination check, kube-bridge and
its sysctls, then the route injector with the overlay's table and rules.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from kube_router.controllers.base import RunContext
from kube_router.controllers.routing.aws import Ec2Client, SourceDestCheck
from kube_router.controllers.routing.bridge import BridgeSetupError, setup_kube_bridge
from kube_router.controllers.routing.cni import CniConf, CniConfError, cni_conf_path
from kube_router.controllers.routing.compile.settings import RoutingSettings
from kube_router.controllers.routing.injector import InjectorSettings, NodeInfo, RouteInjector
from kube_router.controllers.routing.node_firewall import build_spec
from kube_router.controllers.routing.ports import RoutingPorts
from kube_router.dataplane.ipvs import Family
from kube_router.dataplane.routes import Encap
from kube_router.k8s.models import Node

log = logging.getLogger(__name__)

AWS_PROVIDER_PREFIX: Final = "aws"


class NodeSetupError(Exception):
    """The node cannot be prepared for pod networking (the CNI conf file is unusable)."""


@dataclass
class NodeSetup:
    """What the node needs before and beside BGP, from explicit inputs (the controller's ports,
    settings and families); it keeps only the AWS check's state."""

    ctx: RunContext
    ports: RoutingPorts
    settings: RoutingSettings
    families: tuple[Family, ...]
    env: Mapping[str, str] | None = None
    on_sync_time: Callable[[float], None] | None = None
    #: --disable-source-dest-check: the EC2 client (tests give a fake), the walker, its run.
    aws_client: Ec2Client | None = None
    aws_check: SourceDestCheck | None = field(default=None, init=False)
    aws_task: asyncio.Task[None] | None = field(default=None, init=False)

    def _env(self) -> dict[str, str]:
        return dict(os.environ if self.env is None else self.env)

    async def prepare(self) -> None:
        """Everything before the policy controller may start, then kube-bridge and sysctls."""
        cfg = self.ctx.config
        conf = self._load_cni() if cfg.enable_cni else None
        await self.sync_firewall(self.ctx.informers.nodes.store.list())
        if cfg.enable_cni:
            await self._bridge(conf)
        await self.ports.netfilter(bool(cfg.enable_ipv6))

    def _load_cni(self) -> CniConf:
        path = cni_conf_path(self._env())
        try:
            conf = CniConf.load(path)
        except CniConfError as err:
            raise NodeSetupError(f"--enable-cni: {err}") from err
        added = conf.insert_pod_cidrs(list(self.settings.pod_cidrs))
        if added:
            log.info("CNI conf %s: pod CIDRs %s added", path, ", ".join(added))
        return conf

    async def _bridge(self, conf: CniConf | None) -> None:
        cfg = self.ctx.config
        node_mtu = self.ctx.node.mtu if cfg.auto_mtu else None
        try:
            mtu = await setup_kube_bridge(self.ports.bridges, node_mtu)
        except BridgeSetupError as err:
            log.error("kube-bridge: %s", err)  # upstream logs and goes on; the CNI plugin retries
            mtu = None
        if conf is None:
            return
        if cfg.auto_mtu and mtu is not None:
            conf.set_mtu(mtu)
        try:
            if conf.write():
                log.info("CNI conf written: pod CIDRs %s", ", ".join(conf.subnets))
        except (OSError, CniConfError) as err:
            raise NodeSetupError(f"writing the CNI conf file: {err}") from err

    async def sync_firewall(self, nodes: Iterable[Node]) -> None:
        """The pod-subnet and node-IP sets, FORWARD accepts and pod egress MASQUERADE; writes
        nothing when they are in place. Also the AWS source/destination check on node changes."""
        cfg = self.ctx.config
        nodes = list(nodes)
        link = self.ctx.node.link
        spec = build_spec(
            nodes,
            self.families,
            link.name if link else "",
            pod_egress=bool(cfg.enable_pod_egress),
            random_fully=self.ports.random_fully,
        )
        if await self.ports.firewall.apply(spec):
            log.debug("routing: node sets and rules written")
        if cfg.disable_source_dest_check and any(
            n.spec.provider_id.startswith(AWS_PROVIDER_PREFIX) for n in nodes
        ):
            self._start_aws_check(nodes)

    def _start_aws_check(self, nodes: list[Node]) -> None:
        """Run the EC2 calls in the background (one a second, as upstream); one run at a time."""
        if self.aws_task is not None and not self.aws_task.done():
            return
        if self.aws_check is None:
            from kube_router.controllers.routing.aws_http import HttpEc2Client  # noqa: PLC0415

            self.aws_check = SourceDestCheck(self.aws_client or HttpEc2Client(self._env()))
        check = self.aws_check

        async def run() -> None:
            try:
                done = await check.run(nodes)
                if done:
                    log.info("EC2 source/destination check disabled on %s", ", ".join(done))
            except Exception:
                log.exception("disabling the EC2 source/destination check failed")

        self.aws_task = asyncio.create_task(run(), name="routing-aws-source-dest-check")

    async def make_injector(self) -> RouteInjector:
        """The route injector for this node, with the overlay set up (or taken down)."""
        cfg = self.ctx.config
        settings = InjectorSettings(
            enable_overlay=bool(cfg.enable_overlay),
            overlay_type=str(cfg.overlay_type),
            encap=Encap(cfg.overlay_encap),
            encap_port=int(cfg.overlay_encap_port),
            override_next_hop=bool(cfg.override_nexthop),
        )
        node = self.ctx.node
        ips: dict[Family, str] = {}
        if node.ipv4 is not None:
            ips["ipv4"] = str(node.ipv4)
        if node.ipv6 is not None:
            ips["ipv6"] = str(node.ipv6)
        subnets = await self.ports.subnets(str(node.primary_ip)) if self.ports.subnets else ()
        if node.ipv4 is not None and node.ipv6 is not None and self.ports.subnets:
            other = node.ipv6 if node.primary_ip == node.ipv4 else node.ipv4
            subnets = tuple(sorted({*subnets, *await self.ports.subnets(str(other))}))
        info = NodeInfo(ips=ips, subnets=subnets, pod_cidrs=self.settings.pod_cidrs)
        injector = RouteInjector(self.ports.routes, settings, info, on_sync_time=self.on_sync_time)
        await injector.setup_overlay()
        return injector

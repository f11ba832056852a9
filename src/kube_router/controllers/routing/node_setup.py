"""The routing controller's node set-up, in upstream's order (kube-router.md §4.2 "Startup"):
the CNI conf file, the node's sets and rules, the AWS source/destination check, kube-bridge and
its sysctls, then the route injector with the overlay's table and rules.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from kube_router.controllers.routing.aws import SourceDestCheck
from kube_router.controllers.routing.bridge import BridgeSetupError, setup_kube_bridge
from kube_router.controllers.routing.cni import CniConf, CniConfError, cni_conf_path
from kube_router.controllers.routing.injector import InjectorSettings, NodeInfo, RouteInjector
from kube_router.controllers.routing.node_firewall import build_spec
from kube_router.dataplane.ipvs import Family
from kube_router.dataplane.routes import Encap
from kube_router.k8s.models import Node

if TYPE_CHECKING:
    from kube_router.controllers.routing.controller import RoutingController

log = logging.getLogger(__name__)

AWS_PROVIDER_PREFIX: Final = "aws"


class NodeSetupError(Exception):
    """The node cannot be prepared for pod networking (the CNI conf file is unusable)."""


def _env(ctrl: RoutingController) -> dict[str, str]:
    return dict(os.environ if ctrl.env is None else ctrl.env)


async def prepare_node(ctrl: RoutingController) -> None:
    """Everything before the policy controller may start, then kube-bridge and sysctls."""
    cfg = ctrl.ctx.config
    assert ctrl.ports is not None and ctrl.settings is not None
    conf = _load_cni(ctrl) if cfg.enable_cni else None
    nodes = ctrl.ctx.informers.nodes.store.list()
    await sync_node_firewall(ctrl, nodes)
    if cfg.enable_cni:
        await _bridge(ctrl, conf)
    await ctrl.ports.netfilter(bool(cfg.enable_ipv6))


def _load_cni(ctrl: RoutingController) -> CniConf:
    assert ctrl.settings is not None
    path = cni_conf_path(_env(ctrl))
    try:
        conf = CniConf.load(path)
    except CniConfError as err:
        raise NodeSetupError(f"--enable-cni: {err}") from err
    added = conf.insert_pod_cidrs(list(ctrl.settings.pod_cidrs))
    if added:
        log.info("CNI conf %s: pod CIDRs %s added", path, ", ".join(added))
    return conf


async def _bridge(ctrl: RoutingController, conf: CniConf | None) -> None:
    cfg = ctrl.ctx.config
    assert ctrl.ports is not None
    node_mtu = ctrl.ctx.node.mtu if cfg.auto_mtu else None
    try:
        mtu = await setup_kube_bridge(ctrl.ports.bridges, node_mtu)
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


async def sync_node_firewall(ctrl: RoutingController, nodes: Iterable[Node]) -> None:
    """The pod-subnet and node-IP sets, FORWARD accepts and pod egress MASQUERADE; writes
    nothing when they are in place. Also the AWS source/destination check on node changes."""
    cfg = ctrl.ctx.config
    assert ctrl.ports is not None
    nodes = list(nodes)
    link = ctrl.ctx.node.link
    spec = build_spec(
        nodes,
        ctrl.families,
        link.name if link else "",
        pod_egress=bool(cfg.enable_pod_egress),
        random_fully=ctrl.ports.random_fully,
    )
    if await ctrl.ports.firewall.apply(spec):
        log.debug("routing: node sets and rules written")
    if cfg.disable_source_dest_check and any(
        n.spec.provider_id.startswith(AWS_PROVIDER_PREFIX) for n in nodes
    ):
        _start_aws_check(ctrl, nodes)


def _start_aws_check(ctrl: RoutingController, nodes: list[Node]) -> None:
    """Run the EC2 calls in the background (one a second, as upstream); one run at a time."""
    if ctrl.aws_task is not None and not ctrl.aws_task.done():
        return
    if ctrl.aws_check is None:
        from kube_router.controllers.routing.aws_http import HttpEc2Client  # noqa: PLC0415

        ctrl.aws_check = SourceDestCheck(ctrl.aws_client or HttpEc2Client(_env(ctrl)))
    check = ctrl.aws_check

    async def run() -> None:
        try:
            done = await check.run(nodes)
            if done:
                log.info("EC2 source/destination check disabled on %s", ", ".join(done))
        except Exception:
            log.exception("disabling the EC2 source/destination check failed")

    ctrl.aws_task = asyncio.create_task(run(), name="routing-aws-source-dest-check")


async def make_injector(ctrl: RoutingController) -> RouteInjector:
    """The route injector for this node, with the overlay set up (or taken down)."""
    cfg = ctrl.ctx.config
    assert ctrl.ports is not None and ctrl.settings is not None
    settings = InjectorSettings(
        enable_overlay=bool(cfg.enable_overlay),
        overlay_type=str(cfg.overlay_type),
        encap=Encap(cfg.overlay_encap),
        encap_port=int(cfg.overlay_encap_port),
        override_next_hop=bool(cfg.override_nexthop),
    )
    node = ctrl.ctx.node
    ips: dict[Family, str] = {}
    if node.ipv4 is not None:
        ips["ipv4"] = str(node.ipv4)
    if node.ipv6 is not None:
        ips["ipv6"] = str(node.ipv6)
    subnets = await ctrl.ports.subnets(str(node.primary_ip)) if ctrl.ports.subnets else ()
    if node.ipv4 is not None and node.ipv6 is not None and ctrl.ports.subnets:
        other = node.ipv6 if node.primary_ip == node.ipv4 else node.ipv4
        subnets = tuple(sorted({*subnets, *await ctrl.ports.subnets(str(other))}))
    info = NodeInfo(ips=ips, subnets=subnets, pod_cidrs=ctrl.settings.pod_cidrs)
    hist = ctrl.metrics.host_sync_time if ctrl.metrics else None
    injector = RouteInjector(
        ctrl.ports.routes, settings, info, on_sync_time=hist.observe if hist else None
    )
    await injector.setup_overlay()
    return injector

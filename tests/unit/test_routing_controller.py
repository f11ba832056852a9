"""The routing controller end to end over fakes: lab API server -> informers -> start()/sync()
-> FakeEngine (gobgpd's state), NodeFirewall over the iptables and ipset fakes, FakeBridges and
a CNI conf file. Asserts on the fakes' resulting state, never on call sequences.

Start-up, iBGP peers following the Nodes, external peers from flags and annotations, the pod
CIDR path, service VIPs per flag, annotation and traffic policy, the policies' names and
versions, and bad input (logged once with the node's name, the rest applied).
The run loops (learned routes, route syncer, gobgpd restarts, metrics, AWS, BFD) are in
test_routing_controller_run.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from routing_controller_rig import (
    LOCAL,
    NODE_IP,
    NODE_MTU,
    POD_CIDR,
    Build,
    Rig,
    node_body,
    rigs,
    wait_for,
)

from kube_router.bgp.model import DefinedType, PathSpec
from kube_router.controllers.routing.controller import RoutingStartError
from kube_router.k8s.client import KubeClient
from kube_router_lab.apiserver import LabServer

N2_IP, N2_CIDR = "192.168.50.2", "10.244.2.0/24"
N3_IP, N3_CIDR = "192.168.50.3", "10.244.3.0/24"
EXT_IP, EXT_ASN = "192.168.50.100", 65000
VIP = "10.96.0.10"
VIP_PATH = f"{VIP}/32"
EXTERNAL_IP = "203.0.113.5"
PEERS_ANNOTATION = "kube-router.io/peers"
POD_SET, NODE_SET = "kube-router-pod-subnets", "kube-router-node-ips"


@pytest.fixture
async def make(lab: LabServer, kube: KubeClient, tmp_path: Path) -> AsyncIterator[Build]:
    async with rigs(lab, kube, tmp_path) as factory:
        yield factory


def service(
    name: str = "web",
    spec: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "x", "annotations": annotations or {}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": VIP,
            "clusterIPs": [VIP],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
            **(spec or {}),
        },
    }


def endpoint_slice(name: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{name}-1",
            "namespace": "x",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": [{"addresses": ["10.244.9.9"], "nodeName": node, "conditions": {}}],
    }


async def paths(rig: Rig) -> set[str]:
    return set((await rig.state()).paths)


async def settle_service(rig: Rig, check: Callable[[], bool], what: str) -> None:
    """Wait for the informers, then the partial sync the handlers asked for."""
    await wait_for(what, check)
    await rig.ctrl.sync(full=False)


def has_service(rig: Rig, key: str = "x/web") -> Callable[[], bool]:
    return lambda: rig.informers.services.store.get(key) is not None


# --- start ------------------------------------------------------------------------------------


async def test_start_prepares_the_node_and_starts_bgp(make: Build) -> None:
    rig = await make(others=[node_body("n2", N2_IP, N2_CIDR)], first_sync=False)
    cni = rig.cni()
    assert cni["ipam"]["ranges"] == [[{"subnet": POD_CIDR}]]
    assert cni["mtu"] == NODE_MTU
    assert cni["ipam"]["type"] == "host-local" and cni["isDefaultGateway"] is True  # kept
    bridge = rig.bridges.links["kube-bridge"]
    assert bridge.up and bridge.mtu == NODE_MTU
    assert rig.members(POD_SET) == {POD_CIDR, N2_CIDR}
    assert rig.members(NODE_SET) == {NODE_IP, N2_IP}
    forward = rig.rules("FORWARD")
    assert any("-o kube-bridge" in r and r.endswith("-j ACCEPT") for r in forward)
    assert any("-i kube-bridge" in r and r.endswith("-j ACCEPT") for r in forward)
    assert any(f"--match-set {POD_SET} src" in r for r in rig.rules("POSTROUTING", "nat"))
    assert rig.ctrl.ctx.barriers.cni_firewall_setup.is_set()
    state = await rig.state()
    assert state.global_ is not None
    assert (state.global_.asn, state.global_.router_id) == (64512, NODE_IP)
    assert state.global_.listen_port == 179
    assert not state.global_.graceful_restart.enabled
    assert state.peers == {} and state.paths == {}  # those come with the first sync


async def test_start_honours_global_flags(make: Build) -> None:
    rig = await make(
        "--cluster-asn=65100",
        "--router-id=10.0.0.1",
        "--bgp-port=1790",
        "--bgp-graceful-restart",
        "--bgp-graceful-restart-time=120s",
        others=[node_body("n2", N2_IP, N2_CIDR)],
    )
    state = await rig.state()
    assert state.global_ is not None
    assert (state.global_.asn, state.global_.router_id) == (65100, "10.0.0.1")
    assert state.global_.listen_port == 1790
    # gobgpd does not report the global graceful-restart settings; the peers carry them.
    restart = state.peers[N2_IP].graceful_restart
    assert (restart.enabled, restart.restart_time) == (True, 120)
    assert (state.peers[N2_IP].asn, state.peers[N2_IP].port) == (65100, 1790)


async def test_start_fails_cleanly_without_a_node_asn(make: Build, tmp_path: Path) -> None:
    rig = await make("--nodes-full-mesh=false", start=False)
    before = rig.cni_path.read_text()
    with pytest.raises(RoutingStartError, match=f"node {LOCAL}.*node.asn"):
        await rig.ctrl.start()
    assert (await rig.state()).global_ is None
    assert rig.cni_path.read_text() == before
    assert rig.bridges.links == {}
    assert not rig.ctrl.ctx.barriers.cni_firewall_setup.is_set()


# --- sync: peers and paths ---------------------------------------------------------------------


async def test_ibgp_peers_and_node_sets_follow_the_nodes(make: Build) -> None:
    rig = await make(others=[node_body("n2", N2_IP, N2_CIDR)])
    state = await rig.state()
    assert set(state.peers) == {N2_IP}
    peer = state.peers[N2_IP]
    assert (peer.asn, peer.local_address) == (64512, NODE_IP)
    await rig.add_node(node_body("n3", N3_IP, N3_CIDR))
    await rig.ctrl.sync(full=False)
    assert set((await rig.state()).peers) == {N2_IP, N3_IP}
    assert rig.members(POD_SET) == {POD_CIDR, N2_CIDR, N3_CIDR}
    await rig.delete_node("n2")
    await rig.ctrl.sync(full=False)
    state = await rig.state()
    assert set(state.peers) == {N3_IP}
    assert rig.members(POD_SET) == {POD_CIDR, N3_CIDR}
    assert rig.members(NODE_SET) == {NODE_IP, N3_IP}
    ibgp = state.defined_sets[(DefinedType.NEIGHBOR, "iBGPpeerset")]
    assert set(ibgp.members) == {f"{NODE_IP}/32", f"{N3_IP}/32"}


async def test_external_peers_from_flags(make: Build) -> None:
    rig = await make(
        f"--peer-router-ips={EXT_IP}",
        f"--peer-router-asns={EXT_ASN}",
        "--peer-router-multihop-ttl=4",
        others=[node_body("n2", N2_IP, N2_CIDR)],
    )
    state = await rig.state()
    assert set(state.peers) == {N2_IP, EXT_IP}
    ext = state.peers[EXT_IP]
    assert (ext.asn, ext.local_address, ext.multihop_ttl) == (EXT_ASN, NODE_IP, 4)
    members = state.defined_sets[(DefinedType.NEIGHBOR, "externalpeerset")].members
    assert set(members) == {f"{EXT_IP}/32"}


async def test_external_peers_from_the_annotation_follow_it(make: Build) -> None:
    first = f"- remoteip: {EXT_IP}\n  remoteasn: {EXT_ASN}\n"
    rig = await make(local=node_body(LOCAL, NODE_IP, POD_CIDR, {PEERS_ANNOTATION: first}))
    state = await rig.state()
    assert set(state.peers) == {EXT_IP}
    assert state.peers[EXT_IP].asn == EXT_ASN
    second = "- remoteip: 192.168.50.101\n  remoteasn: 65001\n  port: 1179\n"

    def change(body: dict[str, Any]) -> None:
        body["metadata"]["annotations"][PEERS_ANNOTATION] = second

    await rig.update_node(LOCAL, change)
    await rig.ctrl.sync(full=False)
    state = await rig.state()
    assert set(state.peers) == {"192.168.50.101"}
    assert (state.peers["192.168.50.101"].asn, state.peers["192.168.50.101"].port) == (65001, 1179)


async def test_the_pod_cidr_path(make: Build) -> None:
    rig = await make()
    assert (await rig.state()).paths == {POD_CIDR: PathSpec(POD_CIDR, NODE_IP)}


# --- sync: service VIPs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "annotations", "advertised"),
    [
        ((), {}, False),
        (("--advertise-cluster-ip",), {}, True),
        ((), {"kube-router.io/service.advertise.clusterip": "true"}, True),
        (
            ("--advertise-cluster-ip",),
            {"kube-router.io/service.advertise.clusterip": "false"},
            False,
        ),
    ],
)
async def test_cluster_ip_per_flag_and_annotation(
    make: Build, argv: tuple[str, ...], annotations: dict[str, str], advertised: bool
) -> None:
    rig = await make(*argv)
    rig.lab.store.create("services", service(annotations=annotations))
    await settle_service(rig, has_service(rig), "service")
    assert (VIP_PATH in await paths(rig)) is advertised
    vips = (await rig.state()).defined_sets[(DefinedType.PREFIX, "servicevipsdefinedset")]
    assert bool(vips.prefixes) is advertised
    rig.lab.store.delete("services", "x", "web")
    await settle_service(rig, lambda: not has_service(rig)(), "service gone")
    assert await paths(rig) == {POD_CIDR}


async def test_an_endpoint_slice_flips_a_local_policy_vip(make: Build) -> None:
    rig = await make("--advertise-cluster-ip", others=[node_body("n2", N2_IP, N2_CIDR)])
    rig.lab.store.create("services", service(spec={"internalTrafficPolicy": "Local"}))
    await settle_service(rig, has_service(rig), "service")
    assert VIP_PATH not in await paths(rig)  # no endpoint at all: not here
    rig.lab.store.create("endpointslices", endpoint_slice("web", LOCAL))

    def slice_on(node: str) -> Callable[[], bool]:
        def check() -> bool:
            found = rig.informers.endpointslices.store.get("x/web-1")
            return found is not None and found.endpoints[0].node_name == node

        return check

    await settle_service(rig, slice_on(LOCAL), "local slice")
    assert VIP_PATH in await paths(rig)
    body = rig.lab.store.get("endpointslices", "x", "web-1")
    body["endpoints"][0]["nodeName"] = "n2"
    rig.lab.store.update("endpointslices", body)
    await settle_service(rig, slice_on("n2"), "remote slice")
    assert VIP_PATH not in await paths(rig)


# --- sync: policies ----------------------------------------------------------------------------


async def test_policies_have_upstreams_names_and_a_new_version_on_change(make: Build) -> None:
    rig = await make(others=[node_body("n2", N2_IP, N2_CIDR)])
    state = await rig.state()
    assert state.export is not None and state.import_ is not None
    assert (state.export.name, state.import_.name) == ("kube_router_export1", "kube_router_import1")
    names = [s.name for s in state.export.policy.statements]
    assert names == ["podcidrdefinedsetiBGPpeerset"]
    await rig.ctrl.sync(full=True)  # nothing changed: same versions
    assert (await rig.state()).export == state.export
    peers = f"- remoteip: {EXT_IP}\n  remoteasn: {EXT_ASN}\n"

    def add_peer(body: dict[str, Any]) -> None:
        body["metadata"]["annotations"][PEERS_ANNOTATION] = peers

    await rig.update_node(LOCAL, add_peer)
    await rig.ctrl.sync(full=False)
    state = await rig.state()
    assert state.export is not None
    assert state.export.name == "kube_router_export2"
    assert "podcidrdefinedsetexternalpeerset" in [s.name for s in state.export.policy.statements]
    assert "kube_router_export1" not in state.policies


# --- bad input ---------------------------------------------------------------------------------

BAD_PEERS = (
    f"- remoteip: 10.0.0.300\n  remoteasn: 65001\n- remoteip: {EXT_IP}\n  remoteasn: {EXT_ASN}\n"
)
BAD_ANNOTATIONS = {
    PEERS_ANNOTATION: BAD_PEERS,
    "kube-router.io/node.bgp.communities": "no-export,not-a-community",
    "kube-router.io/node.bgp.customimportreject": "10.0.0.0/8,not-a-cidr",
}


async def test_bad_annotations_are_logged_once_and_the_rest_applied(
    make: Build, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    rig = await make(local=node_body(LOCAL, NODE_IP, POD_CIDR, BAD_ANNOTATIONS))
    await rig.ctrl.sync(full=True)
    await rig.ctrl.sync(full=False)
    text = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for bad in ("10.0.0.300", "not-a-community", "not-a-cidr"):
        hits = [t for t in text if bad in t]
        assert len(hits) == 1, (bad, text)
        assert f"node {LOCAL}" in hits[0]
    state = await rig.state()
    assert set(state.peers) == {EXT_IP}
    reject = state.defined_sets[(DefinedType.PREFIX, "customimportrejectdefinedset")]
    assert [p.prefix for p in reject.prefixes] == ["10.0.0.0/8"]
    assert state.export is not None
    external = [s for s in state.export.policy.statements if "externalpeerset" in s.name]
    assert external and all(s.add_communities for s in external)


async def test_an_external_ip_follows_the_external_traffic_policy(make: Build) -> None:
    rig = await make("--advertise-external-ip", "--service-external-ip-range=203.0.113.0/24")
    spec = {"type": "NodePort", "externalIPs": [EXTERNAL_IP], "externalTrafficPolicy": "Local"}
    rig.lab.store.create("services", service(spec=spec))
    await settle_service(rig, has_service(rig), "service")
    assert await paths(rig) == {POD_CIDR}  # Local and no endpoint here
    rig.lab.store.create("endpointslices", endpoint_slice("web", LOCAL))
    await settle_service(
        rig, lambda: rig.informers.endpointslices.store.get("x/web-1") is not None, "slice"
    )
    assert await paths(rig) == {POD_CIDR, f"{EXTERNAL_IP}/32"}  # not the cluster IP


ASN, RR_SERVER, RR_CLIENT = (
    "kube-router.io/node.asn",
    "kube-router.io/rr.server",
    "kube-router.io/rr.client",
)


@pytest.mark.parametrize(
    ("argv", "local", "n2", "n3", "want"),
    [
        # per-node ASNs: only the nodes of our ASN are iBGP peers, with that ASN
        (
            ("--nodes-full-mesh=false",),
            {ASN: "65001"},
            {ASN: "65001"},
            {ASN: "65002"},
            {N2_IP: 65001},
        ),
        # a route-reflector client peers with the servers only
        ((), {RR_CLIENT: "1.1.1.1"}, {RR_SERVER: "1.1.1.1"}, {}, {N2_IP: 64512}),
    ],
    ids=["node-asn", "rr-client"],
)
async def test_ibgp_peers_per_asn_and_route_reflector(
    make: Build,
    argv: tuple[str, ...],
    local: dict[str, str],
    n2: dict[str, str],
    n3: dict[str, str],
    want: dict[str, int],
) -> None:
    rig = await make(
        *argv,
        local=node_body(LOCAL, NODE_IP, POD_CIDR, local),
        others=[node_body("n2", N2_IP, N2_CIDR, n2), node_body("n3", N3_IP, N3_CIDR, n3)],
    )
    state = await rig.state()
    assert {a: p.asn for a, p in state.peers.items()} == want
    assert state.global_ is not None and state.global_.asn == next(iter(want.values()))

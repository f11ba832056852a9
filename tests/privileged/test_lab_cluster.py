"""The lab cluster itself: underlay, Node objects, pods wired by the real CNI plugins, real
packets between nodes over routes installed by hand, the external gobgpd, and teardown."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from itertools import product
from pathlib import Path

import pytest
import pytest_asyncio

from kube_router_lab import cluster as lab_cluster
from kube_router_lab import underlay
from kube_router_lab.bgprouter import ExternalRouter, Neighbor
from kube_router_lab.cluster import Cluster, ClusterSpec, CniPod
from kube_router_lab.cnipods import CniConfTimeout, CniError

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        not Path("/usr/lib/cni/bridge").exists() or shutil.which("gobgpd") is None,
        reason="needs containernetworking-plugins and gobgpd (make setup)",
    ),
]

ANNOTATIONS = {"node1": {"kube-router.io/node.asn": "64512", "kube-router.io/rr.server": "42"}}


def _prefix() -> str:
    return f"kc{uuid.uuid4().hex[:6]}"


async def _cluster(spec: ClusterSpec, workdir: Path) -> Cluster:
    c = Cluster(spec, workdir)
    await c.up()
    return c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def flat(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """Three dual-stack nodes on one subnet: two pods on node1, one each on node2 and node3."""
    spec = ClusterSpec(_prefix(), nodes=3, ipv6=True, annotations=ANNOTATIONS)
    c = await _cluster(spec, tmp_path_factory.mktemp("flat"))
    try:
        for n in c.nodes:
            c.write_cni_conf(n)
        await asyncio.gather(
            c.add_pod("node1", "a", "p1", {"app": "x"}),
            c.add_pod("node1", "a", "p2"),
            c.add_pod("node2", "b", "p3"),
            c.add_pod("node3", "b", "p4"),
        )
        yield c
    finally:
        await c.down()
    assert underlay.owned_netns(spec.prefix) == []


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def routed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """Three nodes on two subnets (node1, node2 | node3) joined by the router namespace."""
    spec = ClusterSpec(_prefix(), nodes=3, two_subnets=True, split=2)
    c = await _cluster(spec, tmp_path_factory.mktemp("routed"))
    try:
        for n in c.nodes:
            c.write_cni_conf(n)
        await asyncio.gather(*(c.add_pod(n, "default", f"p-{n.name}") for n in c.nodes))
        yield c
    finally:
        await c.down()
    assert underlay.owned_netns(spec.prefix) == []


def _cross_node(c: Cluster) -> list[tuple[CniPod, CniPod]]:
    return [(s, d) for s, d in product(c.pods, c.pods) if s.node != d.node]


async def _matrix(c: Cluster, pairs: list[tuple[CniPod, CniPod]], family: str) -> list[bool]:
    checks = [c.reaches(s, d, proto, 80, family) for s, d in pairs for proto in ("tcp", "udp")]
    return list(await asyncio.gather(*checks))


PROBE = """
import socket, sys
for address in sys.argv[1:]:
    try:
        socket.create_connection((address, 9), timeout=1).close()
        print("open")
    except ConnectionRefusedError:
        print("up")  # a reset came back: the address is reachable
    except OSError as err:
        print(type(err).__name__)
"""


def _reachable(c: Cluster, node: str, addresses: list[str]) -> list[bool]:
    """Whether ``node`` reaches each address (a TCP reset or accept comes back)."""
    out = c.run(node, sys.executable, "-c", PROBE, *addresses)
    return [word in ("up", "open") for word in out.split()]


# -- topology and objects ----------------------------------------------------------------------


def _check_underlay(c: Cluster, subnets: list[str]) -> None:
    got = [str(ipaddress.ip_interface(f"{n.ip}/24").network) for n in c.nodes]
    assert got == subnets
    for a in c.nodes:
        others = [b.ip for b in c.nodes if b is not a]
        assert all(_reachable(c, a.name, others)), a.name


async def test_nodes_on_one_subnet_reach_each_other(flat: Cluster) -> None:
    await asyncio.to_thread(_check_underlay, flat, ["10.77.0.0/24"] * 3)
    assert _reachable(flat, "node1", ["fd00:77::c", "fd00:77::d"]) == [True, True]


async def test_nodes_on_two_subnets_reach_each_other_through_the_router(routed: Cluster) -> None:
    subnets = ["10.77.0.0/24", "10.77.0.0/24", "10.77.1.0/24"]
    await asyncio.to_thread(_check_underlay, routed, subnets)
    route = routed.run("node3", "ip", "route", "show", "default")
    assert route.startswith("default via 10.77.1.1 dev eth0")


async def test_node_objects_carry_addresses_cidrs_and_annotations(flat: Cluster) -> None:
    node1 = flat.server.store.get("nodes", None, "node1")
    assert node1["spec"]["podCIDRs"] == ["10.244.1.0/24", "fd00:244:1::/64"]
    assert node1["spec"]["podCIDR"] == "10.244.1.0/24"
    assert node1["spec"]["providerID"] == f"lab://{flat.spec.prefix}/node1"
    internal = [a["address"] for a in node1["status"]["addresses"] if a["type"] == "InternalIP"]
    assert internal == ["10.77.0.11", "fd00:77::b"]
    assert node1["metadata"]["annotations"] == ANNOTATIONS["node1"]
    flat.annotate_node("node2", {"kube-router.io/peer.ips": "10.77.0.250"})
    node2 = flat.server.store.get("nodes", None, "node2")
    assert node2["metadata"]["annotations"] == {"kube-router.io/peer.ips": "10.77.0.250"}


async def _api_answers_in_every_node(c: Cluster) -> None:
    url = f"{c.server.url}/api/v1/nodes"
    code = (
        "import json, urllib.request; "
        f"print(json.load(urllib.request.urlopen({url!r}, timeout=5))['kind'])"
    )
    for n in c.nodes:
        out = await asyncio.to_thread(c.run, n, sys.executable, "-c", code)
        assert out.strip() == "NodeList", n.name


async def test_the_api_server_answers_inside_every_node(flat: Cluster) -> None:
    await _api_answers_in_every_node(flat)


async def test_the_api_server_answers_inside_nodes_behind_the_router(routed: Cluster) -> None:
    await _api_answers_in_every_node(routed)


async def test_two_clusters_with_the_same_addresses_run_side_by_side(
    flat: Cluster, routed: Cluster
) -> None:
    assert flat.node("node1").ip == routed.node("node1").ip
    assert flat.server.port == routed.server.port == 6443
    await _api_answers_in_every_node(flat)
    await _api_answers_in_every_node(routed)
    assert set(underlay.owned_netns(flat.spec.prefix)).isdisjoint(
        underlay.owned_netns(routed.spec.prefix)
    )


# -- pods ------------------------------------------------------------------------------------


async def test_pods_get_addresses_from_their_nodes_cidrs(flat: Cluster) -> None:
    for pod in flat.pods:
        node = flat.node(pod.node)
        v4 = ipaddress.ip_network(node.pod_cidrs[0])
        v6 = ipaddress.ip_network(node.pod_cidrs[1])
        assert ipaddress.ip_address(pod.address("ipv4")) in v4
        assert ipaddress.ip_address(pod.address("ipv6")) in v6
        obj = flat.server.store.get("pods", pod.namespace, pod.name)
        assert obj["status"]["podIPs"] == [{"ip": a} for a in pod.ips]
        assert obj["status"]["phase"] == "Running"
        assert obj["spec"]["nodeName"] == node.name
        assert obj["status"]["hostIP"] == node.ip
    assert flat.server.store.get("pods", "a", "p1")["metadata"]["labels"] == {"app": "x"}
    # host-local keeps each node's allocations apart: node1 and node2 both handed out .2
    node1_ips = {p.name for p in (flat.node("node1").ipam_dir / "mynet").iterdir()}
    node2_ips = {p.name for p in (flat.node("node2").ipam_dir / "mynet").iterdir()}
    assert {"10.244.1.2", "10.244.1.3"} <= node1_ips
    assert "10.244.2.2" in node2_ips and "10.244.1.2" not in node2_ips


async def test_the_bridge_plugin_made_kube_bridge_in_the_node(flat: Cluster) -> None:
    out = flat.run("node1", "ip", "-j", "addr", "show", "dev", "kube-bridge")
    addrs = {a["local"] for a in json.loads(out)[0]["addr_info"]}
    assert {"10.244.1.1", "fd00:244:1::1"} <= addrs


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_pods_reach_each_other_across_nodes_over_static_routes(
    flat: Cluster, family: str
) -> None:
    same_node = [
        (s, d) for s, d in product(flat.pods, flat.pods) if s.node == d.node and s is not d
    ]
    assert all(await _matrix(flat, same_node, family))
    flat.install_static_routes()
    results = await _matrix(flat, _cross_node(flat), family)
    assert all(results), results


async def test_pods_reach_each_other_across_the_router(routed: Cluster) -> None:
    pairs = _cross_node(routed)
    assert not any(await _matrix(routed, pairs, "ipv4")), "reached without routes"
    routed.install_static_routes()
    results = await _matrix(routed, pairs, "ipv4")
    assert all(results), results
    # the packets crossed the router: node3's pod sees node1's pod address, not a NAT address
    src, dst = routed.pod("default", "p-node1"), routed.pod("default", "p-node3")
    assert await routed.ask(src, dst.ip) == dst.key


async def test_add_pod_waits_for_the_conf_and_says_why_it_gave_up(
    tmp_path: Path,
) -> None:
    async with Cluster(ClusterSpec(_prefix(), nodes=1), tmp_path) as c:
        node = c.node("node1")
        with pytest.raises(CniConfTimeout, match="does not exist"):
            await c.add_pod(node, "default", "early", conf_timeout=0.3)
        c.write_cni_template(node)  # what an init container installs: no range yet
        with pytest.raises(CniConfTimeout, match="no pod CIDR"):
            await c.add_pod(node, "default", "early", conf_timeout=0.3)

        async def agent_writes_later() -> None:
            await asyncio.sleep(0.3)
            c.write_cni_conf(node)

        writer = asyncio.create_task(agent_writes_later())
        pod = await c.add_pod(node, "default", "late", conf_timeout=10)
        await writer
        assert pod.ip == "10.244.1.2"
        assert c.server.store.list_objects("pods", "default")


async def test_remove_pod_releases_its_address_and_object(tmp_path: Path) -> None:
    async with Cluster(ClusterSpec(_prefix(), nodes=1), tmp_path) as c:
        c.write_cni_conf("node1")
        pod = await c.add_pod("node1", "default", "gone")
        ipam = c.node("node1").ipam_dir / "mynet" / pod.ip
        assert ipam.exists()
        await c.remove_pod(pod)
        assert not ipam.exists()
        assert pod.netns not in underlay.owned_netns(c.spec.prefix)
        assert c.server.store.list_objects("pods", "default") == []
        assert c.pods == []
        again = await c.add_pod("node1", "default", "gone")
        assert again.ip == pod.ip or again.ip != ""


async def test_a_failing_plugin_leaves_no_pod_behind(tmp_path: Path) -> None:
    async with Cluster(ClusterSpec(_prefix(), nodes=1), tmp_path) as c:
        conf = {"cniVersion": "0.3.1", "name": "bad", "type": "bridge", "bridge": "kube-bridge"}
        conf["ipam"] = {"type": "host-local", "ranges": [[{"subnet": "not-a-cidr"}]]}
        c.write_cni_conf("node1", conf)
        with pytest.raises(CniError, match="CNI bridge ADD"):
            await c.add_pod("node1", "default", "broken")
        assert c.pods == []
        assert [n for n in underlay.owned_netns(c.spec.prefix) if "-pod" in n] == []


# -- processes in nodes --------------------------------------------------------------------


async def test_spawned_processes_run_in_the_node_with_their_own_run_dir(flat: Cluster) -> None:
    node = flat.node("node2")
    (node.run_dir / "marker").write_text("node2")
    script = (
        "cat /run/kube-router/marker; echo; echo $KUBE_ROUTER_CNI_CONF_FILE; "
        "ip -o -4 addr show dev eth0; sleep 30"
    )
    proc = flat.spawn(node, ["sh", "-c", script], log_name="probe")
    try:
        await asyncio.sleep(0.5)
        assert proc.pid in underlay.netns_pids(node.netns)
        log = (node.dir / "probe.log").read_text()
        assert log.splitlines()[:2] == ["node2", str(node.cni_conf)]
        assert "10.77.0.12/24" in log
    finally:
        proc.terminate()
        proc.wait()
    assert flat.run(node, "cat", "/run/kube-router/marker") == "node2"
    assert flat.run(node, "ls", "/run/kube-router", mounts={}) != "marker\n"
    argv = flat.agent_argv(node, "--run-firewall=false")
    assert argv[1:4] == ["-m", "kube_router", f"--kubeconfig={flat.kubeconfig}"]
    assert "--hostname-override=node2" in argv


# -- external BGP router -------------------------------------------------------------------


async def test_the_external_router_answers_and_lists_every_node(flat: Cluster) -> None:
    ext = await flat.add_external_router(asn=64999, password="lab-secret")
    assert ext.info()["asn"] == 64999
    assert ext.info()["router_id"] == "10.77.0.250"
    sessions = ext.sessions()
    assert [(s.address, s.asn) for s in sessions] == [(n.ip, 64512) for n in flat.nodes]
    ext.advertise("192.0.2.0/24", communities=["64999:7"], as_path=[65010])
    ext.advertise("2001:db8:9::/64", nexthop="fd00:77::fa")
    (path,) = ext.rib("ipv4")
    assert (path.prefix, path.neighbor, path.communities) == ("192.0.2.0/24", None, ("64999:7",))
    assert path.as_path == (65010,)
    (path6,) = ext.rib("ipv6")
    assert (path6.prefix, path6.nexthop) == ("2001:db8:9::/64", "fd00:77::fa")
    ext.withdraw("192.0.2.0/24")
    assert ext.rib("ipv4") == []
    assert "lab-secret" in ext.config_path.read_text()
    assert ext.config_path.stat().st_mode & 0o077 == 0
    ext.reload([*ext.neighbors[:1], Neighbor("10.77.0.99", 65001)])  # SIGHUP: gobgpd rereads
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    want = [("10.77.0.11", 64512), ("10.77.0.99", 65001)]
    while [(s.address, s.asn) for s in ext.sessions()] != want and loop.time() < deadline:
        await asyncio.sleep(0.2)
    assert [(s.address, s.asn) for s in ext.sessions()] == want


async def test_a_node_peers_with_the_external_router_across_the_router(routed: Cluster) -> None:
    """A stand-in for the agent's gobgpd on node3 (subnet B) talks eBGP multihop and MD5 to the
    external router on subnet A: the router learns the node's pod CIDR, the node learns a
    prefix the router advertises."""
    node = routed.node("node3")
    ext = await routed.add_external_router(asn=64999, password="md5-secret")
    speaker = ExternalRouter(  # the same wrapper, standing in for the agent's gobgpd
        node.netns,
        node.ip,
        64512,
        node.dir,
        [Neighbor(ext.router_id, 64999, "md5-secret", multihop_ttl=2)],
        api_port=50061,
    )
    await speaker.start()
    try:
        await _peer_both_ways(routed, ext, speaker)
    finally:
        speaker.stop()


async def _peer_both_ways(c: Cluster, ext: ExternalRouter, speaker: ExternalRouter) -> None:
    node = c.node("node3")
    speaker.advertise("10.244.3.0/24", communities=["64512:100"])
    ext.advertise("198.51.100.0/24", communities=["64999:1"])
    await ext.wait_established([node.ip], timeout=40)
    rib = await ext.wait_rib(lambda r: any(p.prefix == "10.244.3.0/24" for p in r))
    learned = next(p for p in rib if p.prefix == "10.244.3.0/24")
    assert (learned.nexthop, learned.neighbor) == (node.ip, node.ip)
    assert learned.as_path == (64512,) and learned.communities == ("64512:100",)
    states = {s.address: s.state for s in ext.sessions()}
    assert states[node.ip] == "established"
    assert states[c.node("node1").ip] != "established"  # nobody speaks BGP there
    got = await speaker.wait_rib(lambda r: any(p.prefix == "198.51.100.0/24" for p in r))
    assert [(p.nexthop, p.as_path, p.communities) for p in got if p.neighbor] == [
        (ext.router_id, (64999,), ("64999:1",))
    ]


# -- teardown ------------------------------------------------------------------------------


async def test_down_after_a_crash_finds_everything_by_prefix(tmp_path: Path) -> None:
    c = Cluster(ClusterSpec(_prefix(), nodes=2, two_subnets=True), tmp_path)
    await c.up()
    try:
        c.write_cni_conf("node1")
        pod = await c.add_pod("node1", "default", "left")
        sleeper = c.spawn("node2", ["sleep", "60"])
        await c.add_external_router()
        names = underlay.owned_netns(c.spec.prefix)
        assert len(names) == 6  # underlay, router, 2 nodes, pod, ext
    finally:
        await c.server.stop()  # what survives a crash is in the namespaces, not this process
    removed = lab_cluster.down(c.spec.prefix)
    assert sorted(removed) == sorted(names)
    assert underlay.owned_netns(c.spec.prefix) == []
    assert sleeper.wait(5) is not None
    assert pod.proc is not None and pod.proc.wait(5) is not None
    assert lab_cluster.down(c.spec.prefix) == []

"""Dual-stack enforcement with real packets: ``--enable-ipv6`` programs ip6tables and ``inet6:``
sets next to the IPv4 ones, and every policy holds over both families.

Every pod has an IPv4 and an IPv6 address (local pods bridged, z/a routed from the remote
node). After each step the whole matrix (TCP and UDP, ports 80 and 81) is probed over IPv6 and
over IPv4 and must equal the expected one. An ipBlock holds only for its own family.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from netpol_cluster import FIVE_PODS, Cell, Cluster, cells, open_cluster, policy

from kube_router.controllers.netpol.names import ingress_pods_set

PODS = FIVE_PODS
ALL = [p.key for p in PODS]
X = ["x/a", "x/b", "x/c"]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(tmp_path, pods=PODS, ipv6=True) as c:
        yield c


async def check_both(c: Cluster, denied_v6: set[Cell], denied_v4: set[Cell]) -> None:
    # Forget the previous step's flows: a UDP probe that happens to reuse an earlier probe's
    # source port would ride that conntrack entry past a policy that now denies it.
    for family in ("ipv4", "ipv6"):
        await c.node_run("conntrack", "-F", "-f", family)
    await c.check(denied_v6, family="ipv6")
    await c.check(denied_v4, family="ipv4")


async def test_policies_hold_over_both_families(cluster: Cluster) -> None:
    c = cluster
    await check_both(c, set(), set())

    # 1. x denies all ingress, x/a accepts x/b on TCP 80 (a podSelector peer: both families).
    await c.apply_policy(policy("x", "deny", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    allow_b = {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                "ports": [{"protocol": "TCP", "port": 80}],
            }
        ],
    }
    await c.apply_policy(policy("x", "allow-b", allow_b))
    denied = cells(ALL, X) - {("x/b", "x/a", "tcp", 80)}
    await check_both(c, denied, denied)
    peers = await c.ipset_members()
    assert peers[ingress_pods_set("x", "allow-b", 0, "IPv6")] == {c.pod("x/b").ip6}
    assert peers[ingress_pods_set("x", "allow-b", 0, "IPv4")] == {c.ip("x/b")}

    # 2. An IPv6 ipBlock naming z/a: it opens x/a to z/a over IPv6 only.
    z6 = c.pod("z/a").address("ipv6")
    from_z6 = {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": f"{z6}/128"}}]}],
    }
    await c.apply_policy(policy("x", "allow-z6", from_z6))
    await check_both(c, denied - cells(["z/a"], ["x/a"]), denied)

    # 3. y/a may only send UDP 81 to namespace z (a namespaceSelector egress peer).
    egress = {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
                "ports": [{"protocol": "UDP", "port": 81}],
            }
        ],
    }
    await c.apply_policy(policy("y", "egress-z", egress))
    from_y = cells(["y/a"], ALL) - cells(["y/a"], ["z/a"], ["udp"], [81])
    await check_both(c, denied - cells(["z/a"], ["x/a"]) | from_y, denied | from_y)

    # 4. Policies gone: both families open again, and no inet6: set of ours is left.
    for ns, name in (("x", "deny"), ("x", "allow-b"), ("x", "allow-z6"), ("y", "egress-z")):
        await c.delete_policy(ns, name)
    await check_both(c, set(), set())
    left = [s for s in await c.ipset_members() if s.startswith("inet6:KUBE-")]
    assert left == []

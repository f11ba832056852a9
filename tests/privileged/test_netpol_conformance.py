"""NetworkPolicy conformance with real packets.

Namespaces x, y, z with pods a, b, c (as the Kubernetes NetworkPolicy e2e tests arrange them).
x and y run on this node, whose namespace the real controller programs; z runs on a "remote"
node reached through a route. After every step the full reachability matrix (TCP and UDP, ports
80 and 81, real connections) must equal the expected one, cell for cell.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from netpol_cluster import ALL, Cluster, X, Y, Z, cells, open_cluster, policy


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(tmp_path) as c:
        yield c


async def test_netpol_conformance_sequence(cluster: Cluster) -> None:
    c = cluster
    # 1. No policies: everything reaches everything.
    await c.check(set())

    # 2. Default deny ingress in x: nothing reaches x's pods, x's pods still reach out.
    await c.apply_policy(policy("x", "deny", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    await c.check(cells(ALL, X))

    # 3. Plus: x/a accepts pods labelled pod=b in its own namespace on TCP 80 only.
    await c.apply_policy(
        policy(
            "x",
            "allow-b",
            {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                        "ports": [{"protocol": "TCP", "port": 80}],
                    }
                ],
            },
        )
    )
    await c.check(cells(ALL, X) - {("x/b", "x/a", "tcp", 80)})

    # 4. Policy update: named port serve-81 instead; now TCP 81 from x/b.
    await c.apply_policy(
        policy(
            "x",
            "allow-b",
            {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                        "ports": [{"protocol": "TCP", "port": "serve-81"}],
                    }
                ],
            },
        )
    )
    await c.check(cells(ALL, X) - {("x/b", "x/a", "tcp", 81)})

    # 5. namespaceSelector: x/a also accepts everything from namespace z (the remote node).
    await c.apply_policy(
        policy(
            "x",
            "allow-z",
            {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}],
            },
        )
    )
    await c.check(cells(ALL, X) - {("x/b", "x/a", "tcp", 81)} - cells(Z, ["x/a"]))

    # 6. Deleting policies reopens exactly what they closed.
    for name in ("deny", "allow-b", "allow-z"):
        await c.delete_policy("x", name)
    await c.check(set())

    # 7. namespaceSelector AND podSelector in one peer: y/c accepts only pod=a from ns z.
    await c.apply_policy(
        policy(
            "y",
            "and",
            {
                "podSelector": {"matchLabels": {"pod": "c"}},
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {"matchLabels": {"ns": "z"}},
                                "podSelector": {"matchLabels": {"pod": "a"}},
                            }
                        ]
                    }
                ],
            },
        )
    )
    await c.check(cells([k for k in ALL if k != "z/a"], ["y/c"]))
    await c.delete_policy("y", "and")

    # 8. ipBlock with except: x/b accepts the remote pod CIDR except z/b.
    await c.apply_policy(
        policy(
            "x",
            "cidr",
            {
                "podSelector": {"matchLabels": {"pod": "b"}},
                "ingress": [
                    {
                        "from": [
                            {
                                "ipBlock": {
                                    "cidr": c.net.remote_cidr,
                                    "except": [f"{c.ip('z/b')}/32"],
                                }
                            }
                        ]
                    }
                ],
            },
        )
    )
    await c.check(cells([k for k in ALL if k not in ("z/a", "z/c")], ["x/b"]))
    await c.delete_policy("x", "cidr")

    # 9. Egress deny in y: y's local pods reach nobody; replies to others' connections still flow.
    await c.apply_policy(policy("y", "no-egress", {"podSelector": {}, "policyTypes": ["Egress"]}))
    await c.check(cells(Y, ALL))

    # 10. Egress allowed to UDP only (both ports), plus the deny above: union of policies.
    await c.apply_policy(
        policy(
            "y",
            "udp-out",
            {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"protocol": "UDP"}]}],
            },
        )
    )
    await c.check(cells(Y, ALL, protos=["tcp"]))
    for name in ("no-egress", "udp-out"):
        await c.delete_policy("y", name)
    await c.check(set())

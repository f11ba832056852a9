"""The proxy's filter rules and ipsets against real iptables (nft and legacy) and ipset.

Each test works in a network namespace of its own. This host has no xt_ipvs, so the specs here
carry no masquerade or hairpin rules (tests/vm/test_proxy_firewall_nat.py covers nat). The real
kernel must end up exactly as the fakes do, a second apply must write nothing, a VIP change must
only edit set members, and real packets to a VIP must be accepted or rejected as upstream means.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from collections.abc import Coroutine
from typing import Any

import pytest

from kube_router.controllers.proxy.firewall import FirewallSpec, ProxyFirewall
from kube_router.dataplane import ipset
from kube_router.dataplane.exec import Executor
from kube_router.dataplane.ipset_fake import FakeIPSets
from kube_router.dataplane.iptables import Backend, IPTables, RealIPTables
from kube_router.dataplane.iptables_fake import FakeIPTables
from kube_router.dataplane.iptables_parse import Family, Transaction

VIP, VIP2, VIP6 = "10.96.0.10", "10.96.0.20", "fd00:96::10"
FOREIGN = "-p tcp -m tcp --dport 22 -j ACCEPT"
BACKENDS: list[Backend] = ["nft", "legacy"]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def specs(**kw: Any) -> dict[Family, FirewallSpec]:
    v4 = FirewallSpec(
        family="ipv4",
        local_ips=frozenset({"127.0.0.1"}),
        service_ips=frozenset({VIP}),
        service_ports=frozenset({(VIP, "tcp", 80), (VIP, "udp", 53), (VIP, "sctp", 3868)}),
    )
    v6 = FirewallSpec(
        family="ipv6",
        local_ips=frozenset({"::1"}),
        service_ips=frozenset({VIP6}),
        service_ports=frozenset({(VIP6, "sctp", 3868), (VIP6, "tcp", 443)}),
    )
    return {"ipv4": dataclasses.replace(v4, **kw), "ipv6": v6}


class Counting:
    """Counts restores on the way to a real port."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.family = getattr(inner, "family", None)
        self.writes = 0

    async def save(self, *args: Any) -> Any:
        return await self.inner.save(*args)

    async def restore(self, tx: Any) -> None:
        self.writes += 1
        await self.inner.restore(tx)


class Rig:
    """The firewall over real tools in ``netns``, and the same over the fakes."""

    def __init__(self, netns: str, backend: Backend) -> None:
        ex = Executor.in_netns(netns)
        self.real_tables = {f: Counting(RealIPTables(ex, f, backend)) for f in ("ipv4", "ipv6")}
        self.real_sets = Counting(ipset.RealIPSets(ex))
        self.real = ProxyFirewall(self._ports(self.real_tables), self.real_sets)
        self.fake_sets = FakeIPSets()
        self.fake_tables = {f: FakeIPTables(f) for f in ("ipv4", "ipv6")}
        self.fake = ProxyFirewall(self._ports(self.fake_tables), self.fake_sets)

    @staticmethod
    def _ports(tables: dict[str, Any]) -> dict[Family, IPTables]:
        return {"ipv4": tables["ipv4"], "ipv6": tables["ipv6"]}

    def writes(self) -> int:
        return self.real_sets.writes + sum(t.writes for t in self.real_tables.values())

    async def apply(self, want: dict[Family, FirewallSpec], full: bool) -> None:
        await self.real.apply(want, full)
        await self.fake.apply(want, full)

    async def foreign(self) -> None:
        for f in ("ipv4", "ipv6"):
            tx = Transaction("filter").append("INPUT", FOREIGN)
            await self.real_tables[f].restore(tx)
            await self.fake_tables[f].restore(tx)

    async def assert_agree(self) -> None:
        for f in ("ipv4", "ipv6"):
            real = _rules(await self.real_tables[f].save("filter"))
            assert real == _rules(await self.fake_tables[f].save("filter")), f
        ours = ("kube-router-",)
        real_sets = {n: s.entries for n, s in (await self.real_sets.save(ours)).items()}
        assert real_sets == {n: s.entries for n, s in self.fake_sets.state(ours).items()}


def _rules(save: str) -> list[str]:
    return [line for line in save.splitlines() if line.startswith((":", "-A"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_kernel_agrees_and_a_second_apply_writes_nothing(netns: str, backend: Backend) -> None:
    rig = Rig(netns, backend)
    run(rig.foreign())
    run(rig.apply(specs(), full=True))
    run(rig.assert_agree())
    sets = run(rig.real_sets.save(("kube-router-",)))
    assert sets["kube-router-svip-prt"].entries == {
        f"{VIP},tcp:80",
        f"{VIP},udp:53",
        f"{VIP},132:3868",
    }
    assert sets["inet6:kube-router-svip-prt"].spec.family == "inet6"
    before = rig.writes()
    run(rig.real.apply(specs(), full=True))
    run(ProxyFirewall(rig.real.iptables, rig.real_sets).apply(specs(), full=False))
    assert rig.writes() == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_vip_change_edits_only_set_members(netns: str, backend: Backend) -> None:
    rig = Rig(netns, backend)
    run(rig.apply(specs(), full=True))
    tables_before = sum(t.writes for t in rig.real_tables.values())
    changed = specs(service_ips=frozenset({VIP2}), service_ports=frozenset({(VIP2, "tcp", 8080)}))
    run(rig.apply(changed, full=False))
    assert sum(t.writes for t in rig.real_tables.values()) == tables_before
    run(rig.assert_agree())
    run(rig.apply(specs(permit_all=False), full=False))
    run(rig.assert_agree())
    before = rig.writes()
    run(rig.real.apply(specs(permit_all=False), full=True))
    assert rig.writes() == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_cleanup_leaves_only_what_is_not_ours(netns: str, backend: Backend) -> None:
    rig = Rig(netns, backend)
    run(rig.foreign())
    empty = {f: _rules(run(t.save("filter"))) for f, t in rig.real_tables.items()}
    run(rig.apply(specs(), full=True))
    run(rig.real.cleanup())
    assert {f: _rules(run(t.save("filter"))) for f, t in rig.real_tables.items()} == empty
    assert run(rig.real_sets.save(("kube-router-",))) == {}


PROBE = """
import socket, sys
vip = sys.argv[1]
servers = []
for port in (80, 81):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(); servers.append(s)
for port in (80, 81):
    c = socket.socket(); c.settimeout(3)
    c.bind(("127.0.0.1", 0))  # a client with the VIP as source would have its replies rejected
    try:
        c.connect((vip, port)); print(port, "open")
    except OSError as err:
        print(port, type(err).__name__)
    c.close()
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_packets_to_a_vip_meet_the_services_chain(netns: str, backend: Backend) -> None:
    """A listener on VIP:81 is out of reach (rejected: refused), VIP:80 is a service port."""
    subprocess.run(["ip", "-n", netns, "addr", "add", f"{VIP}/32", "dev", "lo"], check=True)
    rig = Rig(netns, backend)
    run(rig.real.apply(specs(service_ports=frozenset({(VIP, "tcp", 80)})), full=True))
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", PROBE, VIP],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split("\n")
    assert out[:2] == ["80 open", "81 ConnectionRefusedError"]

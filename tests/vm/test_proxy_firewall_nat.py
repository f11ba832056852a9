# ruff: noqa: E501  (rules kept verbatim, one per line)
"""The proxy's nat rules (``-m ipvs``) against real iptables in a kernel with xt_ipvs.

The fake must spell every ipvs rule as iptables-save does and refuse what iptables-restore
refuses (nft and legacy, both families); the firewall over the real tools must leave the same
tables as over the fakes, write nothing when applied again, and clean up only what is ours.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from kube_router.controllers.proxy.firewall import FirewallSpec, HairpinRule, ProxyFirewall
from kube_router.dataplane import ipset
from kube_router.dataplane.exec import CommandError, Executor
from kube_router.dataplane.ipset_fake import FakeIPSets
from kube_router.dataplane.iptables import Backend, IPTables, RealIPTables
from kube_router.dataplane.iptables_fake import FakeIPTables
from kube_router.dataplane.iptables_parse import Family

MODULES = ["ip_vs", "xt_ipvs", "ip_set_hash_ip", "ip_set_hash_ipport", "xt_set", "xt_comment"]
pytestmark = pytest.mark.vm(modules=MODULES)
BACKENDS: list[Backend] = ["nft", "legacy"]
TOOL = {"ipv4": "iptables", "ipv6": "ip6tables"}

RULES: dict[Family, list[str]] = {
    "ipv4": [
        '-A POSTROUTING -m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ -m comment --comment "" ! -s 10.1.0.0/24 ! -d 10.1.0.0/24 -j SNAT --to-source 192.168.1.1 --random-fully',
        '-A POSTROUTING -m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ -m comment --comment "" -j SNAT --to-source 192.168.1.1',
        '-A POSTROUTING -m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ -m comment --comment "" -j MASQUERADE',
        "-A POSTROUTING -m ipvs --vdir ORIGINAL -j KUBE-ROUTER-HAIRPIN",
        "-A KUBE-ROUTER-HAIRPIN -s 10.1.0.5/32 -d 10.1.0.5/32 -m ipvs --vaddr 10.96.0.10 --vport 80 -j SNAT --to-source 10.96.0.10",
        "-A POSTROUTING -m ipvs --ipvs",
        "-A POSTROUTING -m ipvs ! --ipvs",
        "-A POSTROUTING -m ipvs --vdir REPLY",
        "-A POSTROUTING -m ipvs --vmethod masq --vdir original",
        "-A POSTROUTING -m ipvs ! --vmethod GATE",
        "-A POSTROUTING -m ipvs --vmethod IPIP",
        "-A POSTROUTING -m ipvs --vproto tcp",
        "-A POSTROUTING -m ipvs ! --vproto udp",
        "-A POSTROUTING -m ipvs --vproto sctp",
        "-A POSTROUTING -m ipvs --vproto 0",
        "-A POSTROUTING -m ipvs --vaddr 10.96.0.10/24",
        "-A POSTROUTING -m ipvs ! --vaddr 10.96.0.0/255.255.0.0",
        "-A POSTROUTING -m ipvs --vaddr 10.96.0.10/32",
        "-A POSTROUTING -m ipvs --vport http",
        "-A POSTROUTING -m ipvs ! --vport 8080",
        "-A POSTROUTING -m ipvs ! --vportctl 21",
        "-A POSTROUTING -m ipvs --vportctl 21 --vport 22 --vaddr 1.2.3.4 --vproto tcp --vmethod MASQ --vdir REPLY --ipvs",
        "-A POSTROUTING -j SNAT --random-fully --to-source 1.2.3.4 --random",
        "-A POSTROUTING -j SNAT --to-source 1.2.3.4 --persistent",
        # refused by both
        "-A POSTROUTING -m ipvs",
        "-A POSTROUTING -m ipvs ! --ipvs --vdir ORIGINAL",
        "-A POSTROUTING -m ipvs ! --vdir ORIGINAL",
        "-A POSTROUTING -m ipvs --vdir BOTH",
        "-A POSTROUTING -m ipvs --vmethod LOCAL",
        "-A POSTROUTING -m ipvs --vproto nope",
        "-A POSTROUTING -m ipvs --vproto 300",
        "-A POSTROUTING -m ipvs --vaddr fd00::1",
        "-A POSTROUTING -m ipvs --vaddr 1.2.3.4 --vaddr 1.2.3.5",
        "-A POSTROUTING -m ipvs --ipvs --ipvs",
        "-A POSTROUTING -j SNAT --to-source 1.2.3.4 ! --random-fully",
    ],
    "ipv6": [
        '-A POSTROUTING -m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ -m comment --comment "" ! -s fd00:1::/64 ! -d fd00:1::/64 -j SNAT --to-source fd00::1 --random-fully',
        "-A POSTROUTING -m ipvs --vdir ORIGINAL -j KUBE-ROUTER-HAIRPIN",
        "-A KUBE-ROUTER-HAIRPIN -s fd00:1::5/128 -d fd00:1::5/128 -m ipvs --vaddr fd00:96::10 --vport 80 -j SNAT --to-source fd00:96::10",
        "-A POSTROUTING -m ipvs --vaddr fd00:96::10/64",
        "-A POSTROUTING -m ipvs --vaddr FD00:96:0::10",
        "-A POSTROUTING -m ipvs --vproto ipv6-icmp",
        "-A POSTROUTING -m ipvs --vaddr 10.96.0.10",
    ],
}


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def _restore(ns: str, family: Family, backend: Backend, text: str) -> bool:
    argv = ["ip", "netns", "exec", ns, f"{TOOL[family]}-{backend}-restore", "--noflush"]
    return (
        subprocess.run(argv, check=False, input=text, text=True, capture_output=True).returncode
        == 0
    )


def _rules(save: str) -> list[str]:
    return [line for line in save.splitlines() if line.startswith((":", "-A"))]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fake_and_real_agree_on_ipvs_rules(
    netns: Callable[[str], str], backend: Backend, family: Family
) -> None:
    ns = netns(f"{backend[0]}{family[-1]}")
    fake = FakeIPTables(family)
    setup = "*nat\n:KUBE-ROUTER-HAIRPIN - [0:0]\nCOMMIT\n"
    assert _restore(ns, family, backend, setup)
    fake.apply(setup)
    outcomes = []
    for rule in RULES[family]:
        text = f"*nat\n{rule}\nCOMMIT\n"
        real_ok = _restore(ns, family, backend, text)
        try:
            fake.apply(text)
            fake_ok = True
        except CommandError:
            fake_ok = False
        outcomes.append((rule, real_ok, fake_ok))
    assert [o for o in outcomes if o[1] != o[2]] == []
    saved = subprocess.run(
        ["ip", "netns", "exec", ns, f"{TOOL[family]}-{backend}-save", "-t", "nat"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert _rules(saved) == _rules(fake.dump("nat"))


def specs(**kw: Any) -> dict[Family, FirewallSpec]:
    v4 = FirewallSpec(
        family="ipv4",
        local_ips=frozenset({"127.0.0.1", "192.168.1.10"}),
        service_ips=frozenset({"10.96.0.10", "192.168.1.10"}),
        service_ports=frozenset({("10.96.0.10", "tcp", 80), ("192.168.1.10", "tcp", 30080)}),
        pod_cidrs=("10.1.0.0/24",),
        node_ip="192.168.1.10",
        masquerade_all=True,
        hairpin=frozenset(
            {
                HairpinRule("10.1.0.5", "10.96.0.10", 80),
                HairpinRule("10.1.0.5", "192.168.1.10", 30080),
            }
        ),
    )
    v6 = FirewallSpec(
        family="ipv6",
        local_ips=frozenset({"::1"}),
        service_ips=frozenset({"fd00:96::10"}),
        service_ports=frozenset({("fd00:96::10", "sctp", 3868)}),
        pod_cidrs=("fd00:10:1::/64",),
        node_ip="fd00:1::10",
        hairpin=frozenset({HairpinRule("fd00:10:1::5", "fd00:96::10", 3868)}),
    )
    return {"ipv4": dataclasses.replace(v4, **kw), "ipv6": v6}


class Counting:
    def __init__(self, inner: Any) -> None:
        self.inner, self.family, self.writes = inner, getattr(inner, "family", None), 0

    async def save(self, *args: Any) -> Any:
        return await self.inner.save(*args)

    async def restore(self, tx: Any) -> None:
        self.writes += 1
        await self.inner.restore(tx)


async def _tables(ports: dict[Family, Any]) -> dict[str, list[str]]:
    return {
        f"{f} {t}": _rules(await p.save(t)) for f, p in ports.items() for t in ("filter", "nat")
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_firewall_on_real_nat_tables_agrees_with_the_fakes(
    netns: Callable[[str], str], backend: Backend
) -> None:
    ex = Executor.in_netns(netns(f"fw{backend[0]}"))
    real_tables = {f: Counting(RealIPTables(ex, f, backend)) for f in ("ipv4", "ipv6")}
    real_sets = Counting(ipset.RealIPSets(ex))
    fake_tables = {f: FakeIPTables(f) for f in ("ipv4", "ipv6")}
    ports: Callable[[dict[str, Any]], dict[Family, IPTables]] = lambda t: {  # noqa: E731
        "ipv4": t["ipv4"],
        "ipv6": t["ipv6"],
    }
    real = ProxyFirewall(ports(real_tables), real_sets)
    fake = ProxyFirewall(ports(fake_tables), FakeIPSets())
    empty = run(_tables(real_tables))
    steps = [
        (specs(), True),
        (specs(masquerade_all=False, pod_cidrs=("10.2.0.0/24",)), False),
        (specs(hairpin=frozenset()), False),
        (specs(node_ip="192.168.1.11"), True),
    ]
    for want, full in steps:
        run(real.apply(want, full))
        run(fake.apply(want, full))
        got = run(_tables(real_tables))
        assert got == run(_tables(fake_tables))
        writes = real_sets.writes + sum(t.writes for t in real_tables.values())
        run(ProxyFirewall(ports(real_tables), real_sets).apply(want, full=True))
        assert real_sets.writes + sum(t.writes for t in real_tables.values()) == writes
    run(real.cleanup())
    assert run(_tables(real_tables)) == empty
    assert run(real_sets.save(("kube-router-",))) == {}

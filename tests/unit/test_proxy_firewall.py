# ruff: noqa: E501  (rules kept verbatim, one per line, as iptables-save prints them)
"""The service proxy's firewall over the strict iptables and ipset fakes.

Full applies repair, partial ones equal a full apply and cost only what changed, the INPUT jump
lives peacefully with the policy controller's, packets meet the filter rules as upstream means,
cleanup leaves only what is not ours. The fake's ``-m ipvs`` spelling is the VM's (see
tests/vm/test_proxy_firewall.py, which checks it against the real tools).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Coroutine
from typing import Any

import pytest

from kube_router.controllers.netpol import plan as npc
from kube_router.controllers.netpol.desired import FamilyState
from kube_router.controllers.proxy import firewall_plan as fwp
from kube_router.controllers.proxy import firewall_rules as fwr
from kube_router.controllers.proxy.compile import ServicePlan, VirtualService
from kube_router.controllers.proxy.firewall import (
    FirewallError,
    FirewallSpec,
    HairpinRule,
    ProxyFirewall,
    Settings,
    build_specs,
    hairpin_rules,
)
from kube_router.controllers.proxy.options import ServiceOptions
from kube_router.dataplane import ipset
from kube_router.dataplane import iptables_parse as ipt
from kube_router.dataplane.ipset_fake import FakeIPSets
from kube_router.dataplane.iptables_fake import FakeIPTables
from kube_router.dataplane.iptables_rule import RuleError, parse_rule
from kube_router.dataplane.ipvs import Dest, Family, Service, ServiceKey
from kube_router.dataplane.tracer import Packet, trace

NODE, NODE6 = "192.168.1.10", "fd00:1::10"
POD_CIDR, POD_CIDR6 = "10.1.0.0/24", "fd00:10:1::/64"
VIP, VIP2, VIP6 = "10.96.0.10", "10.96.0.20", "fd00:96::10"
EP, EP_REMOTE, EP6 = "10.1.0.5", "10.1.1.7", "fd00:10:1::5"
FOREIGN_INPUT = "-p tcp -m tcp --dport 22 -j ACCEPT"
FOREIGN_POST = "-s 10.1.0.0/24 -j MASQUERADE"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


class CountingTables:
    """An iptables port that counts restores (and can be made to fail)."""

    def __init__(self, fake: FakeIPTables) -> None:
        self.fake, self.family = fake, fake.family
        self.writes: list[str] = []
        self.fail = False

    async def save(self, table: str = "filter") -> str:
        return await self.fake.save(table)

    async def restore(self, tx: ipt.Transaction | str) -> None:
        if self.fail:
            raise RuntimeError("iptables-restore: injected failure")
        self.writes.append(tx if isinstance(tx, str) else tx.render())
        await self.fake.restore(tx)


class CountingSets(FakeIPSets):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[str] = []

    async def restore(self, tx: ipset.Transaction) -> None:
        self.writes.append(tx.render())
        await super().restore(tx)


class World:
    """Both families' iptables and one ipset, wired as in the kernel (rules need their sets,
    referenced sets cannot be destroyed)."""

    def __init__(self) -> None:
        self.sets = CountingSets(is_referenced=self._referenced)
        self.tables = {
            f: CountingTables(FakeIPTables(f, set_family=self._set_family))
            for f in ("ipv4", "ipv6")
        }
        self.fw = ProxyFirewall(self.tables, self.sets)

    def _set_family(self, name: str) -> Family | None:
        found = self.sets.sets.get(name)
        if found is None:
            return None
        return "ipv6" if found.family == "inet6" else "ipv4"

    def _referenced(self, name: str) -> bool:
        return any(name in t.fake.referenced_sets() for t in self.tables.values())

    def writes(self) -> int:
        return len(self.sets.writes) + sum(len(t.writes) for t in self.tables.values())

    def reset(self) -> None:
        self.sets.writes.clear()
        for t in self.tables.values():
            t.writes.clear()

    def dump(self) -> dict[str, str]:
        out = {
            f"{f} {tb}": t.fake.dump(tb) for f, t in self.tables.items() for tb in ("filter", "nat")
        }
        out["sets"] = ipset.render_save(dict(sorted(self.sets.state().items())))
        return out

    def restore(self, family: Family, table: str, lines: str) -> None:
        self.tables[family].fake.apply(f"*{table}\n{lines}\nCOMMIT\n")


def spec4(**kw: Any) -> FirewallSpec:
    base = FirewallSpec(
        family="ipv4",
        local_ips=frozenset({NODE, "127.0.0.1"}),
        service_ips=frozenset({VIP, NODE}),
        service_ports=frozenset({(VIP, "tcp", 80), (VIP, "udp", 53), (NODE, "tcp", 30080)}),
        pod_cidrs=(POD_CIDR,),
        node_ip=NODE,
        hairpin=frozenset({HairpinRule(EP, VIP, 80)}),
    )
    return dataclasses.replace(base, **kw)


def spec6(**kw: Any) -> FirewallSpec:
    base = FirewallSpec(
        family="ipv6",
        local_ips=frozenset({NODE6, "::1"}),
        service_ips=frozenset({VIP6}),
        service_ports=frozenset({(VIP6, "sctp", 3868)}),
        pod_cidrs=(POD_CIDR6,),
        node_ip=NODE6,
    )
    return dataclasses.replace(base, **kw)


def specs(**kw: Any) -> dict[Family, FirewallSpec]:
    return {"ipv4": spec4(**kw), "ipv6": spec6()}


# --- the fake's -m ipvs and SNAT flags, as iptables-save printed them in the VM -----------------

IPVS_SPELLING = [
    ('-m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ -m comment --comment "" ! -s 10.1.0.0/24 '
     "! -d 10.1.0.0/24 -j SNAT --to-source 192.168.1.1 --random-fully",
     '! -s 10.1.0.0/24 ! -d 10.1.0.0/24 -m ipvs --vdir ORIGINAL --vmethod MASQ -m comment '
     '--comment "" -j SNAT --to-source 192.168.1.1 --random-fully'),
    ("-m ipvs --ipvs", "-m ipvs --ipvs"),
    ("-m ipvs ! --ipvs", "-m ipvs ! --ipvs"),
    ("-m ipvs --vmethod masq --vdir original", "-m ipvs --vdir ORIGINAL --vmethod MASQ"),
    ("-m ipvs ! --vmethod GATE", "-m ipvs ! --vmethod GATE"),
    ("-m ipvs --vproto tcp", "-m ipvs --vproto 6"),
    ("-m ipvs ! --vproto udp", "-m ipvs ! --vproto 17"),
    ("-m ipvs --vproto sctp", "-m ipvs --vproto 132"),
    ("-m ipvs --vaddr 10.96.0.10/24", "-m ipvs --vaddr 10.96.0.10/24"),
    ("-m ipvs ! --vaddr 10.96.0.0/255.255.0.0", "-m ipvs ! --vaddr 10.96.0.0/16"),
    ("-m ipvs --vaddr 10.96.0.10/32", "-m ipvs --vaddr 10.96.0.10"),
    ("-m ipvs --vport http", "-m ipvs --vport 80"),
    ("-m ipvs ! --vportctl 21", "-m ipvs ! --vportctl 21"),
    ("-m ipvs --vportctl 21 --vport 22 --vaddr 1.2.3.4 --vproto tcp --vmethod MASQ --vdir REPLY "
     "--ipvs", "-m ipvs --vproto 6 --vaddr 1.2.3.4 --vport 22 --vdir REPLY --vmethod MASQ "
     "--vportctl 21"),
    ("-j SNAT --random-fully --to-source 1.2.3.4 --random",
     "-j SNAT --to-source 1.2.3.4 --random --random-fully"),
    ("-j SNAT --to-source 1.2.3.4 --persistent", "-j SNAT --to-source 1.2.3.4 --persistent"),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "saved"), IPVS_SPELLING)
def test_fake_spells_ipvs_rules_as_iptables_save(rule: str, saved: str) -> None:
    assert parse_rule(ipt.tokenize(rule), "ipv4", "nat").text == saved


@pytest.mark.parametrize(
    ("rule", "saved"),
    [("-m ipvs --vaddr FD00:96:0::10", "-m ipvs --vaddr fd00:96::10"),
     ("-m ipvs --vaddr fd00:96::10/64", "-m ipvs --vaddr fd00:96::10/64"),
     ("-m ipvs --vproto ipv6-icmp", "-m ipvs --vproto 58")],
)  # fmt: skip
def test_fake_spells_ipv6_ipvs_rules(rule: str, saved: str) -> None:
    assert parse_rule(ipt.tokenize(rule), "ipv6", "nat").text == saved


@pytest.mark.parametrize(
    ("rule", "why"),
    [("-m ipvs", "At least one option"),
     ("-m ipvs ! --ipvs --vdir ORIGINAL", "cannot be together"),
     ("-m ipvs ! --vdir ORIGINAL", "cannot be inverted"),
     ("-m ipvs --vdir BOTH", "--vdir"),
     ("-m ipvs --vmethod LOCAL", "--vmethod"),
     ("-m ipvs --vproto nope", "unknown protocol"),
     ("-m ipvs --vproto 300", "unknown protocol"),
     ("-m ipvs --vaddr fd00::1", "fd00::1"),
     ("-m ipvs --vaddr 1.2.3.4 --vaddr 1.2.3.5", "only be used once"),
     ("-m ipvs --ipvs --ipvs", "only be used once"),
     ("-j SNAT --to-source 1.2.3.4 ! --random-fully", "cannot be inverted")],
)  # fmt: skip
def test_fake_refuses_ipvs_rules_iptables_refuses(rule: str, why: str) -> None:
    with pytest.raises(RuleError, match=why):
        parse_rule(ipt.tokenize(rule), "ipv4", "nat")


# --- specs from service plans ------------------------------------------------------------------


def _vs(ip: str, port: int, kind: Any, dests: list[str], proto: str = "tcp") -> VirtualService:
    key = ServiceKey.of(ip, proto, port)
    return VirtualService(Service(key), {(d, 8080): Dest(d, 8080) for d in dests}, "ns/a:p", kind)


def _plan(
    hairpin: bool = False, external: bool = False, local: frozenset[str] = frozenset({EP})
) -> ServicePlan:
    virtual = [
        _vs(VIP, 80, "cluster", [EP, EP_REMOTE]),
        _vs(VIP, 53, "cluster", [EP], "udp"),
        _vs(NODE, 30080, "nodeport", [EP, EP_REMOTE]),
        _vs("203.0.113.5", 80, "external", [EP]),
        _vs("198.51.100.7", 80, "loadbalancer", [EP]),
        _vs(VIP2, 9000, "cluster", [EP_REMOTE], "sctp"),
    ]
    return ServicePlan(
        "ns/a",
        virtual={v.service.key: v for v in virtual},
        options=ServiceOptions(hairpin=hairpin, hairpin_external=external),
        local_endpoints=local,
    )


@pytest.mark.parametrize(
    ("hairpin", "external", "global_", "local", "want"),
    [
        (False, False, False, {EP}, set()),
        (True, False, False, {EP}, {(VIP, 80), (VIP, 53), (NODE, 30080)}),
        (False, False, True, {EP}, {(VIP, 80), (VIP, 53), (NODE, 30080)}),
        (True, True, False, {EP}, {(VIP, 80), (VIP, 53), (NODE, 30080), ("203.0.113.5", 80)}),
        (False, True, False, {EP}, set()),  # externalips alone asks for nothing
        (True, False, False, set(), set()),  # no local endpoint
        (True, False, False, {EP_REMOTE}, {(VIP, 80), (NODE, 30080), (VIP2, 9000)}),
    ],
)
def test_hairpin_rules_per_local_endpoint_and_virtual_service(
    hairpin: bool, external: bool, global_: bool, local: set[str], want: set[tuple[str, int]]
) -> None:
    rules = hairpin_rules(_plan(hairpin, external, frozenset(local)), global_)
    assert {(r.vip, r.port) for r in rules} == want
    assert {r.endpoint for r in rules} <= local


def test_hairpin_rule_text_is_upstreams() -> None:
    assert HairpinRule(EP, VIP, 80).rule() == (
        f"-s {EP}/32 -d {EP}/32 -m ipvs --vaddr {VIP} --vport 80 -j SNAT --to-source {VIP}"
    )
    assert HairpinRule(EP6, VIP6, 80).rule().startswith(f"-s {EP6}/128 -d {EP6}/128 ")


def test_build_specs_splits_families_and_collects_every_vip() -> None:
    v6 = ServicePlan("ns/b", virtual={(v := _vs(VIP6, 443, "cluster", [EP6])).service.key: v})
    out = build_specs(
        {"ns/a": _plan(hairpin=True), "ns/b": v6},
        {"ipv4": {NODE}, "ipv6": {NODE6}},
        {"ipv4": NODE, "ipv6": NODE6},
        Settings(pod_cidrs=(POD_CIDR, POD_CIDR6), masquerade_all=True),
    )
    v4 = out["ipv4"]
    assert v4.service_ips == {VIP, VIP2, NODE, "203.0.113.5", "198.51.100.7"}
    assert (VIP2, "sctp", 9000) in v4.service_ports and (VIP, "udp", 53) in v4.service_ports
    assert (v4.pod_cidrs, v4.node_ip, v4.masquerade_all, v4.local_ips) == (
        (POD_CIDR,), NODE, True, {NODE},
    )  # fmt: skip
    assert out["ipv6"].service_ips == {VIP6} and out["ipv6"].pod_cidrs == (POD_CIDR6,)
    assert len(v4.hairpin) == 3 and not out["ipv6"].hairpin
    only4 = build_specs([_plan()], [NODE], {"ipv4": NODE})
    assert list(only4) == ["ipv4"]


def test_sctp_members_are_written_as_protocol_number() -> None:
    sets = fwr.layout(spec6()).sets
    assert sets["inet6:kube-router-svip-prt"].entries == {f"{VIP6},132:3868"}
    assert sets["inet6:kube-router-svip-prt"].spec.family == "inet6"


# --- applying ----------------------------------------------------------------------------------

EXPECTED_FILTER4 = f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-ROUTER-SERVICES - [0:0]
-A INPUT -m comment --comment "handle traffic to IPVS service IPs in custom chain" -m set --match-set kube-router-svip dst -j KUBE-ROUTER-SERVICES
-A INPUT {FOREIGN_INPUT}
-A KUBE-ROUTER-SERVICES -p icmp -m comment --comment "allow icmp echo requests" -m icmp --icmp-type 8 -j ACCEPT
-A KUBE-ROUTER-SERVICES -p icmp -m comment --comment "allow icmp destination unreachable messages" -m icmp --icmp-type 3 -j ACCEPT
-A KUBE-ROUTER-SERVICES -p icmp -m comment --comment "allow icmp time exceeded messages" -m icmp --icmp-type 11 -j ACCEPT
-A KUBE-ROUTER-SERVICES -m comment --comment "allow input traffic to ipvs services" -m set --match-set kube-router-svip-prt dst,dst -j ACCEPT
-A KUBE-ROUTER-SERVICES -m comment --comment "reject all unexpected traffic to service IPs" -m set ! --match-set kube-router-local-ips dst -j REJECT --reject-with icmp-port-unreachable
COMMIT
"""
EXPECTED_NAT4 = f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-ROUTER-HAIRPIN - [0:0]
-A POSTROUTING {FOREIGN_POST}
-A POSTROUTING ! -s {POD_CIDR} ! -d {POD_CIDR} -m ipvs --vdir ORIGINAL --vmethod MASQ -m comment --comment "" -j SNAT --to-source {NODE} --random-fully
-A POSTROUTING -m ipvs --vdir ORIGINAL -j KUBE-ROUTER-HAIRPIN
-A KUBE-ROUTER-HAIRPIN -s {EP}/32 -d {EP}/32 -m ipvs --vaddr {VIP} --vport 80 -j SNAT --to-source {VIP}
COMMIT
"""


def _with_foreign(w: World) -> None:
    w.restore("ipv4", "filter", f"-A INPUT {FOREIGN_INPUT}")
    w.restore("ipv4", "nat", f"-A POSTROUTING {FOREIGN_POST}")
    w.sets.apply("create KUBE-SRC-FOREIGN hash:ip timeout 0\nadd KUBE-SRC-FOREIGN 10.9.9.9\n")


def test_full_apply_on_an_empty_kernel_writes_upstreams_rules() -> None:
    w = World()
    _with_foreign(w)
    run(w.fw.apply(specs(), full=True))
    dump = w.dump()
    assert dump["ipv4 filter"] == EXPECTED_FILTER4
    assert dump["ipv4 nat"] == EXPECTED_NAT4
    assert "--icmpv6-type 135" in dump["ipv6 filter"]
    assert "--reject-with icmp6-port-unreachable" in dump["ipv6 filter"]
    assert "KUBE-ROUTER-HAIRPIN" not in dump["ipv6 nat"]
    state = w.sets.state()
    assert state["kube-router-svip-prt"].entries == {
        f"{VIP},tcp:80",
        f"{VIP},udp:53",
        f"{NODE},tcp:30080",
    }
    assert state["inet6:kube-router-svip"].spec.family == "inet6"
    assert state["KUBE-SRC-FOREIGN"].entries == {"10.9.9.9"}
    # one ipset restore and one iptables-restore per table and family
    assert len(w.sets.writes) == 1
    assert [len(t.writes) for t in w.tables.values()] == [2, 2]


@pytest.mark.parametrize("full", [True, False])
def test_a_second_apply_of_the_same_specs_writes_nothing(full: bool) -> None:
    w = World()
    _with_foreign(w)
    run(w.fw.apply(specs(), full=True))
    w.reset()
    run(w.fw.apply(specs(), full=full))
    assert w.writes() == 0


def test_a_fresh_controller_on_a_correct_kernel_writes_nothing() -> None:
    w = World()
    run(w.fw.apply(specs(), full=True))
    w.reset()
    run(ProxyFirewall(w.tables, w.sets).apply(specs(), full=False))  # no last: reads the kernel
    assert w.writes() == 0


def test_a_change_of_service_vips_costs_only_set_members() -> None:
    w = World()
    run(w.fw.apply(specs(), full=True))
    w.reset()
    changed = specs(
        service_ips=frozenset({VIP2, NODE}),
        service_ports=frozenset({(VIP2, "tcp", 443), (NODE, "tcp", 30080)}),
    )
    run(w.fw.apply(changed, full=False))
    assert sum(len(t.writes) for t in w.tables.values()) == 0
    assert len(w.sets.writes) == 1
    lines = sorted(w.sets.writes[0].splitlines())
    assert lines == sorted([
        f"add kube-router-svip {VIP2}", f"del kube-router-svip {VIP}",
        f"add kube-router-svip-prt {VIP2},tcp:443",
        f"del kube-router-svip-prt {VIP},tcp:80", f"del kube-router-svip-prt {VIP},udp:53",
    ])  # fmt: skip


def _random_spec(rnd: random.Random) -> dict[Family, FirewallSpec]:
    vips = rnd.sample([f"10.96.0.{i}" for i in range(1, 9)], rnd.randint(0, 5))
    eps = [f"10.1.0.{i}" for i in range(1, 5)]
    return specs(
        local_ips=frozenset(rnd.sample([NODE, "127.0.0.1", "172.16.0.1"], rnd.randint(1, 3))),
        service_ips=frozenset(vips),
        service_ports=frozenset((v, rnd.choice(["tcp", "udp", "sctp"]), 80) for v in vips),
        pod_cidrs=tuple(rnd.sample([POD_CIDR, "10.2.0.0/24"], rnd.randint(0, 2))),
        node_ip=rnd.choice([NODE, "192.168.1.11", None]),
        masquerade_all=rnd.random() < 0.5,
        permit_all=rnd.random() < 0.7,
        hairpin=frozenset(HairpinRule(rnd.choice(eps), v, 80) for v in vips if rnd.random() < 0.5),
    )


def _unordered_nat(dump: dict[str, str]) -> dict[str, Any]:
    """Appended rules land in the order they came: nat is compared as a multiset of lines."""
    return {k: sorted(v.splitlines()) if k.endswith("nat") else v for k, v in dump.items()}


@pytest.mark.parametrize("seed", range(12))
def test_partial_applies_equal_a_full_apply_from_scratch(seed: int) -> None:
    rnd = random.Random(seed)
    w = World()
    _with_foreign(w)
    for _ in range(8):
        want = _random_spec(rnd)
        run(w.fw.apply(want, full=False))
        fresh = World()
        _with_foreign(fresh)
        run(fresh.fw.apply(want, full=True))
        assert _unordered_nat(w.dump()) == _unordered_nat(fresh.dump())
        assert w.tables["ipv4"].fake.rules("POSTROUTING", "nat")[0].text == FOREIGN_POST
        w.reset()
        run(w.fw.apply(want, full=True))
        assert w.writes() == 0


DAMAGE = {
    "jump deleted": ("ipv4", "filter", '-D INPUT -m comment --comment "handle traffic to IPVS service IPs in custom chain" -m set --match-set kube-router-svip dst -j KUBE-ROUTER-SERVICES'),
    "foreign rule put first": ("ipv4", "filter", "-I INPUT 1 -s 10.9.9.9/32 -j DROP"),
    "chain flushed": ("ipv4", "filter", "-F KUBE-ROUTER-SERVICES"),
    "chain rule added": ("ipv4", "filter", "-A KUBE-ROUTER-SERVICES -j ACCEPT"),
    "hairpin rule deleted": ("ipv4", "nat", "-F KUBE-ROUTER-HAIRPIN"),
    "stray hairpin rule": ("ipv4", "nat", "-A KUBE-ROUTER-HAIRPIN -s 10.1.0.9/32 -d 10.1.0.9/32 -m ipvs --vaddr 10.96.0.99 --vport 80 -j SNAT --to-source 10.96.0.99"),
    "masquerade deleted": ("ipv4", "nat", f'-D POSTROUTING ! -s {POD_CIDR} ! -d {POD_CIDR} -m ipvs --vdir ORIGINAL --vmethod MASQ -m comment --comment "" -j SNAT --to-source {NODE} --random-fully'),
    "old MASQUERADE variant": ("ipv4", "nat", '-I POSTROUTING 1 -m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ -m comment --comment "" -j MASQUERADE'),
    "old SNAT variant": ("ipv4", "nat", f'-A POSTROUTING -m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ -m comment --comment "" ! -s {POD_CIDR} ! -d {POD_CIDR} -j SNAT --to-source {NODE}'),
    "stale node ip": ("ipv4", "nat", '-A POSTROUTING -m ipvs --vdir ORIGINAL --vmethod MASQ -m comment --comment "" -j SNAT --to-source 192.168.1.99 --random-fully'),
    "doubled hairpin jump": ("ipv4", "nat", "-A POSTROUTING -m ipvs --vdir ORIGINAL -j KUBE-ROUTER-HAIRPIN"),
    "v6 jump deleted": ("ipv6", "filter", '-D INPUT -m comment --comment "handle traffic to IPVS service IPs in custom chain" -m set --match-set inet6:kube-router-svip dst -j KUBE-ROUTER-SERVICES'),
}  # fmt: skip
SET_DAMAGE = {
    "member deleted": f"del kube-router-svip {VIP}\n",
    "member added": "add kube-router-local-ips 10.7.7.7\n",
    "v6 member deleted": f"del inet6:kube-router-svip-prt {VIP6},sctp:3868\n",
}


@pytest.mark.parametrize("case", [*DAMAGE, *SET_DAMAGE])
def test_full_apply_repairs_damage_and_keeps_foreign_rules(case: str) -> None:
    w = World()
    _with_foreign(w)
    run(w.fw.apply(specs(), full=True))
    good = w.dump()
    if case in DAMAGE:
        family, table, line = DAMAGE[case]
        w.restore(family, table, line)
    else:
        w.sets.apply(SET_DAMAGE[case])
    assert w.dump() != good
    run(w.fw.apply(specs(), full=False))  # partial trusts what it wrote: no repair
    assert w.dump() != good
    run(w.fw.apply(specs(), full=True))
    repaired = w.dump()
    if case == "foreign rule put first":  # the foreign rule stays, our jump goes above it
        assert repaired["ipv4 filter"].count("-A INPUT") == 3
        assert (
            repaired["ipv4 filter"].split("-A INPUT ")[1].startswith('-m comment --comment "handle')
        )
    else:
        assert _unordered_nat(repaired) == _unordered_nat(good)


def test_the_policy_controllers_jump_and_ours_settle_and_then_write_nothing() -> None:
    w = World()
    fake = w.tables["ipv4"].fake
    w.restore("ipv4", "filter", f"-A INPUT {FOREIGN_INPUT}")
    npc_jump = '-m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-INPUT'
    state = FamilyState({"INPUT": [npc_jump], "KUBE-ROUTER-INPUT": []}, {})
    npc_lines = []
    for _ in range(4):  # both controllers' full syncs, alternately
        table = ipt.parse_save(fake.dump("filter"))["filter"]
        npc_plan = npc.plan_full(state, npc.KernelView(table, {}, "ipv4"))
        npc_lines.append(npc_plan.rule_lines)
        if npc_plan.rule_lines:
            fake.apply(npc_plan.rules.render())
        w.reset()
        run(w.fw.apply(specs(), full=True))
        ours = w.writes()
    assert npc_lines[-2:] == [0, 0] and ours == 0
    inputs = [r.text for r in fake.rules("INPUT")]
    assert inputs[0] == npc_jump and inputs[1].endswith("-j KUBE-ROUTER-SERVICES")
    assert inputs[2] == FOREIGN_INPUT


@pytest.mark.parametrize(
    ("packet", "action", "reject"),
    [
        (Packet("10.0.0.1", VIP, "tcp", 40000, 80), "ACCEPT", None),
        (Packet("10.0.0.1", VIP, "udp", 40000, 53), "ACCEPT", None),
        (Packet("10.0.0.1", VIP, "tcp", 40000, 81), "REJECT", "icmp-port-unreachable"),
        (Packet("10.0.0.1", VIP, "udp", 40000, 80), "REJECT", "icmp-port-unreachable"),
        (Packet("10.0.0.1", VIP, "icmp", icmp_type=8), "ACCEPT", None),
        (Packet("10.0.0.1", VIP, "icmp", icmp_type=3, icmp_code=4), "ACCEPT", None),
        (Packet("10.0.0.1", NODE, "tcp", 40000, 30080), "ACCEPT", None),
        (
            Packet("10.0.0.1", NODE, "tcp", 40000, 22),
            "ACCEPT",
            None,
        ),  # a local IP: not ours to reject
        (Packet("10.0.0.1", "10.0.0.2", "tcp", 40000, 81), "ACCEPT", None),  # not a VIP at all
        (Packet("fd00::1", VIP6, "sctp", 40000, 3868, family="ipv6"), "ACCEPT", None),
        (
            Packet("fd00::1", VIP6, "tcp", 40000, 3868, family="ipv6"),
            "REJECT",
            "icmp6-port-unreachable",
        ),
        (Packet("fd00::1", VIP6, "icmp", family="ipv6", icmp_type=135), "ACCEPT", None),
        (Packet("fd00::1", VIP6, "icmp", family="ipv6", icmp_type=129), "ACCEPT", None),
    ],
)
def test_packets_to_service_ips_meet_the_services_chain(
    packet: Packet, action: str, reject: str | None
) -> None:
    w = World()
    run(w.fw.apply(specs(), full=True))

    def contains(name: str, value: str, flags: str) -> bool:
        return w.sets.contains(name, value, flags)

    verdict = trace(w.tables[packet.family].fake, "INPUT", packet, contains)
    assert (verdict.action, verdict.reject_with) == (action, reject)
    jumped = ("INPUT", 0) in verdict.hits  # the jump to KUBE-ROUTER-SERVICES
    assert jumped == (packet.dst in (VIP, VIP6, NODE))


def test_without_permit_all_there_is_no_services_chain_nor_jump() -> None:
    w = World()
    run(w.fw.apply(specs(), full=True))
    run(w.fw.apply(specs(permit_all=False), full=False))
    dump = w.dump()
    assert "KUBE-ROUTER-SERVICES" not in dump["ipv4 filter"]
    assert "KUBE-ROUTER-SERVICES" in dump["ipv6 filter"]  # only v4 changed
    assert "kube-router-svip" in dump["sets"]  # the sets stay, as upstream's


def test_masquerade_all_and_no_hairpin() -> None:
    w = World()
    run(w.fw.apply(specs(), full=True))
    run(w.fw.apply(specs(masquerade_all=True, hairpin=frozenset()), full=False))
    nat = w.dump()["ipv4 nat"]
    assert "HAIRPIN" not in nat
    assert f'--comment "" -j SNAT --to-source {NODE} --random-fully' in nat
    assert nat.count("--vmethod MASQ") == 2


def test_a_failed_apply_makes_the_next_one_full() -> None:
    w = World()
    run(w.fw.apply(specs(), full=True))
    good = w.dump()
    w.tables["ipv4"].fake.apply("*filter\n-F KUBE-ROUTER-SERVICES\nCOMMIT\n")  # damage
    w.tables["ipv4"].fail = True
    with pytest.raises(FirewallError, match="injected failure"):
        run(w.fw.apply(specs(masquerade_all=True), full=False))
    assert w.fw.last == {}
    w.tables["ipv4"].fail = False
    run(w.fw.apply(specs(), full=False))  # reads the kernel, so repairs
    assert w.dump() == good
    assert w.fw.last == specs()


def test_cleanup_removes_ours_and_nothing_else() -> None:
    w = World()
    _with_foreign(w)
    before = w.dump()
    run(w.fw.apply(specs(masquerade_all=True), full=True))
    w.restore(
        "ipv4",
        "nat",
        '-A POSTROUTING -m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ -m comment --comment "" -j MASQUERADE',
    )
    run(w.fw.cleanup())
    assert w.dump() == before
    assert w.fw.last == {}
    w.reset()
    run(w.fw.cleanup())  # nothing left to do
    assert w.writes() == 0


def test_an_unknown_family_is_refused() -> None:
    fw = ProxyFirewall({"ipv4": CountingTables(FakeIPTables("ipv4"))}, FakeIPSets())
    with pytest.raises(FirewallError, match="ipv6"):
        run(fw.apply(specs(), full=True))


def test_kernel_layout_recognises_only_our_postrouting_rules() -> None:
    rules = [
        FOREIGN_POST,
        '-m ipvs --vdir ORIGINAL --vmethod MASQ -m comment --comment "" -j MASQUERADE',
        '-m ipvs --vdir ORIGINAL --vmethod MASQ -m comment --comment "x" -j MASQUERADE',
        "-m ipvs --vdir ORIGINAL -j KUBE-ROUTER-HAIRPIN",
        "-m ipvs --vdir ORIGINAL -j SNAT --to-source 1.2.3.4",
    ]
    table = ipt.Table(
        "nat",
        {"POSTROUTING": ipt.Chain("POSTROUTING", "ACCEPT", [ipt.Rule.from_spec(r) for r in rules])},
    )
    got = fwp.kernel_layout("ipv4", None, table, {}).postrouting
    assert got == (rules[1], rules[3])


@pytest.mark.parametrize("base", sorted(fwr.BASE_SETS))
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_our_sets_are_kube_routers_but_not_the_policy_controllers(
    base: str, family: Family
) -> None:
    name = fwr.set_name(base, family)
    assert ipset.owned(name)  # the ipset port lets us write and destroy them
    assert not ipset.owned(name, npc.SET_PREFIXES)  # NPC neither reads nor cleans them up
    jump = ipt.Rule.from_spec(fwr.input_jump(family))
    assert not npc._is_our_jump(jump)  # nor moves or deletes our INPUT jump

"""Packets through kube-router-shaped netpol chains in the iptables fake."""

from __future__ import annotations

import dataclasses

import pytest

from kube_router.dataplane import ipset
from kube_router.dataplane.ipset_fake import FakeIPSets
from kube_router.dataplane.iptables_fake import FakeIPTables
from kube_router.dataplane.iptables_parse import Family, Transaction
from kube_router.dataplane.tracer import Packet, TraceError, Verdict, member, trace

POD, PEER, STRANGER, OTHER_POD = "10.1.0.5", "10.1.0.9", "10.1.0.8", "10.1.0.7"
POD_CHAIN, POL_CHAIN = "KUBE-POD-FW-ABCDEFGHIJKLMNOP", "KUBE-NWPLCY-QRSTUVWXYZ234567"
SETS: dict[str, set[str]] = {
    "KUBE-SRC-PEERS": {PEER},
    "KUBE-DST-NP": {f"{POD},udp:53"},
    "kube-router-local-pods": {POD, OTHER_POD},
}
OK = 0x20000  # netpol-ok


def contains(name: str, value: str, flags: str) -> bool:
    return value in SETS.get(name, set())


def netpol_ruleset(pod: str = POD, family: Family = "ipv4") -> FakeIPTables:
    """A ruleset shaped as in §4.3: one pod, one ingress policy (peers, tcp/80), default egress."""
    fake = FakeIPTables(family, set_exists=lambda n: n in SETS)
    tx = Transaction()
    for name in ("KUBE-ROUTER-INPUT", "KUBE-ROUTER-FORWARD", "KUBE-ROUTER-OUTPUT"):
        tx.declare(name)
    for name in ("KUBE-NWPLCY-DEFAULT", "KUBE-NWPLCY-COMMON", "KUBE-NWPLCY-TAIL"):
        tx.declare(name)
    tx.declare(POD_CHAIN).declare(POL_CHAIN)
    for hook in ("INPUT", "FORWARD", "OUTPUT"):
        tx.insert(hook, f'-m comment --comment "kube-router netpol - X" -j KUBE-ROUTER-{hook}')
    tx.append("KUBE-NWPLCY-DEFAULT", "-j MARK --set-xmark 0x10000/0x10000")
    tx.append("KUBE-NWPLCY-COMMON", "-m conntrack --ctstate INVALID -j DROP")
    tx.append("KUBE-NWPLCY-COMMON", "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    ping = "-p icmp --icmp-type" if family == "ipv4" else "-p ipv6-icmp --icmpv6-type"
    tx.append("KUBE-NWPLCY-COMMON", f"{ping} echo-request -j ACCEPT")
    tx.append("KUBE-NWPLCY-TAIL", "-m mark --mark 0x20000/0x20000 -j ACCEPT")
    # pod chain: -I 1 in reverse, so the final order is common, local, default egress, policy
    tx.insert(POD_CHAIN, f"-d {pod} -j {POL_CHAIN}")
    tx.insert(POD_CHAIN, f"-s {pod} -j KUBE-NWPLCY-DEFAULT")
    tx.insert(POD_CHAIN, f"-m addrtype --src-type LOCAL -d {pod} -j ACCEPT")
    tx.insert(POD_CHAIN, "-j KUBE-NWPLCY-COMMON")
    tx.append(
        POD_CHAIN,
        "-m mark ! --mark 0x10000/0x10000 -j NFLOG --nflog-group 100 -m limit --limit 10/minute"
        " --limit-burst 10",
    )
    tx.append(POD_CHAIN, "-m mark ! --mark 0x10000/0x10000 -j REJECT")
    tx.append(POD_CHAIN, "-j MARK --set-mark 0/0x10000")
    tx.append(POD_CHAIN, "-j MARK --set-mark 0x20000/0x20000")
    for spec in (
        "-m set --match-set KUBE-SRC-PEERS src -p tcp --dport 80",
        "-m set --match-set KUBE-DST-NP dst,dst -p udp",
    ):
        tx.append(POL_CHAIN, f"{spec} -j MARK --set-xmark 0x10000/0x10000")
        tx.append(POL_CHAIN, f"{spec} -m mark --mark 0x10000/0x10000 -j RETURN")
    for chain in ("KUBE-ROUTER-FORWARD", "KUBE-ROUTER-OUTPUT"):
        tx.append(chain, f"-d {pod} -j {POD_CHAIN}")
    tx.append("KUBE-ROUTER-FORWARD", f"-m physdev --physdev-is-bridged -d {pod} -j {POD_CHAIN}")
    for chain in ("KUBE-ROUTER-INPUT", "KUBE-ROUTER-FORWARD", "KUBE-ROUTER-OUTPUT"):
        tx.append(chain, f"-s {pod} -j {POD_CHAIN}")
        tx.append(chain, "-j KUBE-NWPLCY-TAIL")
        tx.append(chain, "-m mark --mark 0x20000/0x20000 -j ACCEPT")
    tx.declare("FORWARD", "DROP")
    fake.apply(tx.render())
    return fake


FAKE = netpol_ruleset()


def pkt(src: str = PEER, dst: str = POD, **kw: object) -> Packet:
    return dataclasses.replace(Packet(src, dst, "tcp", 40000, 80, bridged=True), **kw)  # type: ignore[arg-type]


# (id, hook, packet, action, final mark, nflog groups)
CASES = [
    ("peer-allowed", "FORWARD", pkt(), "ACCEPT", OK, []),
    ("stranger-rejected-logged", "FORWARD", pkt(src=STRANGER), "REJECT", 0, [100]),
    ("wrong-port", "FORWARD", pkt(dport=81), "REJECT", 0, [100]),
    ("udp-named-port", "FORWARD", pkt(src=STRANGER, proto="udp", dport=53), "ACCEPT", OK, []),
    ("udp-other-port", "FORWARD", pkt(src=STRANGER, proto="udp", dport=54), "REJECT", 0, [100]),
    ("established", "FORWARD", pkt(src=STRANGER, ct_state="ESTABLISHED"), "ACCEPT", 0, []),
    ("related", "FORWARD", pkt(src=STRANGER, ct_state="RELATED"), "ACCEPT", 0, []),
    ("invalid", "FORWARD", pkt(ct_state="INVALID"), "DROP", 0, []),
    ("ping", "FORWARD", pkt(src=STRANGER, proto="icmp", icmp_type=8), "ACCEPT", 0, []),
    ("pong-is-not-ping", "FORWARD", pkt(src=STRANGER, proto="icmp", icmp_type=0),
     "REJECT", 0, [100]),
    ("from-node", "OUTPUT", pkt(src="10.0.0.1", src_local=True, bridged=False), "ACCEPT", 0, []),
    ("egress-default", "FORWARD", pkt(src=POD, dst="8.8.8.8", dport=53), "ACCEPT", OK, []),
    ("not-a-pod-hits-policy", "FORWARD", pkt(src="1.1.1.1", dst="2.2.2.2"), "DROP", 0, []),
    ("input-not-a-pod", "INPUT", pkt(src="1.1.1.1", dst="10.0.0.1"), "ACCEPT", 0, []),
    ("premarked-ok", "FORWARD", pkt(src="1.1.1.1", dst="2.2.2.2", mark=OK), "ACCEPT", OK, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("hook", "packet", "action", "mark", "nflog"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_netpol_traces(hook: str, packet: Packet, action: str, mark: int, nflog: list[int]) -> None:
    verdict = trace(FAKE, hook, packet, contains)
    assert (verdict.action, verdict.mark, verdict.nflog_groups) == (action, mark, nflog)


def test_hits_follow_jumps_and_returns() -> None:
    # not bridged: a bridged packet also takes the physdev jump and walks the pod chain twice
    verdict = trace(FAKE, "FORWARD", pkt(bridged=False), contains)
    assert verdict.hits == [
        ("FORWARD", 0),
        ("KUBE-ROUTER-FORWARD", 0),  # -d pod -j pod chain
        (POD_CHAIN, 0),  # -j KUBE-NWPLCY-COMMON (nothing matched there, falls back)
        (POD_CHAIN, 3),  # -d pod -j policy chain
        (POL_CHAIN, 0),  # MARK 0x10000
        (POL_CHAIN, 1),  # RETURN
        (POD_CHAIN, 6),  # clear 0x10000
        (POD_CHAIN, 7),  # set 0x20000 -> end of pod chain, back to KUBE-ROUTER-FORWARD
        ("KUBE-ROUTER-FORWARD", 3),  # -j KUBE-NWPLCY-TAIL (physdev and -s pod rules skipped)
        ("KUBE-NWPLCY-TAIL", 0),  # netpol-ok accept
    ]


def test_reject_records_how() -> None:
    verdict = trace(FAKE, "FORWARD", pkt(src=STRANGER), contains)
    assert verdict.reject_with == "icmp-port-unreachable"
    assert (POD_CHAIN, 4) in verdict.hits  # the NFLOG rule, non-terminating


NEGATIONS = [
    ("! -s 10.0.0.0/8 -j DROP", Packet("10.0.0.1", "10.0.0.2"), "ACCEPT"),
    ("! -s 10.0.0.0/8 -j DROP", Packet("11.0.0.1", "10.0.0.2"), "DROP"),
    ("-p tcp ! --dport 80 -j DROP", Packet("1.1.1.1", "2.2.2.2", dport=80), "ACCEPT"),
    ("-p tcp ! --dport 80 -j DROP", Packet("1.1.1.1", "2.2.2.2", dport=81), "DROP"),
    ("! -p tcp -j DROP", Packet("1.1.1.1", "2.2.2.2", proto="udp"), "DROP"),
    ("-m set ! --match-set KUBE-SRC-PEERS src -j DROP", Packet(PEER, POD), "ACCEPT"),
    ("-m set ! --match-set KUBE-SRC-PEERS src -j DROP", Packet(STRANGER, POD), "DROP"),
    ("-m physdev ! --physdev-is-bridged -j DROP", Packet("1.1.1.1", "2.2.2.2"), "DROP"),
    ("-m addrtype ! --dst-type LOCAL -j DROP",
     Packet("1.1.1.1", "2.2.2.2", dst_local=True), "ACCEPT"),
    ("-i eth+ -j DROP", Packet("1.1.1.1", "2.2.2.2", in_iface="eth0"), "DROP"),
    ("! -o veth1 -j DROP", Packet("1.1.1.1", "2.2.2.2", out_iface="veth1"), "ACCEPT"),
    ("-p udp -m multiport --dports 53,100:200 -j DROP",
     Packet("1.1.1.1", "2.2.2.2", "udp", dport=150), "DROP"),
    ("-m conntrack ! --ctstate NEW -j DROP", Packet("1.1.1.1", "2.2.2.2"), "ACCEPT"),
    ("-m mark --mark 0x1/0x1 -j DROP", Packet("1.1.1.1", "2.2.2.2", mark=3), "DROP"),
    ("-m mark --mark 0x1 -j DROP", Packet("1.1.1.1", "2.2.2.2", mark=3), "ACCEPT"),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "packet", "action"), NEGATIONS)
def test_single_rule_matches(rule: str, packet: Packet, action: str) -> None:
    fake = FakeIPTables("ipv4", set_exists=lambda n: n in SETS)
    fake.apply(f"*filter\n-A INPUT {rule}\nCOMMIT\n")
    assert trace(fake, "INPUT", packet, contains).action == action


def test_marks_change_for_later_rules_and_logs_do_not_stop() -> None:
    fake = FakeIPTables("ipv4")
    fake.apply(
        "*filter\n:INPUT DROP [0:0]\n-A INPUT -j MARK --set-mark 0x4/0x4\n"
        '-A INPUT -j LOG --log-prefix "seen "\n-A INPUT -j NFLOG --nflog-group 7\n'
        "-A INPUT -j MARK --xor-mark 0x1\n-A INPUT -m mark --mark 0x5 -j ACCEPT\nCOMMIT\n"
    )
    verdict = trace(fake, "INPUT", Packet("1.1.1.1", "2.2.2.2"), contains)
    assert verdict == Verdict(
        "ACCEPT",
        0x5,
        [("INPUT", 0), ("INPUT", 1), ("INPUT", 2), ("INPUT", 3), ("INPUT", 4)],
        [7],
        ["seen "],
    )


def test_policy_applies_after_return_from_builtin() -> None:
    fake = FakeIPTables("ipv4")
    fake.apply("*filter\n:OUTPUT DROP [0:0]\n-A OUTPUT -j RETURN\n-A OUTPUT -j ACCEPT\nCOMMIT\n")
    assert trace(fake, "OUTPUT", Packet("1.1.1.1", "2.2.2.2"), contains).action == "DROP"


def test_ipv6_packets() -> None:
    fake = netpol_ruleset("fd00::5", "ipv6")
    SETS["KUBE-SRC-PEERS"].add("fd00::9")
    packet = Packet("fd00::9", "fd00::5", "tcp", 1, 80, family="ipv6", bridged=True)
    assert trace(fake, "FORWARD", packet, contains).action == "ACCEPT"
    other = dataclasses.replace(packet, src="fd00::8")
    assert trace(fake, "FORWARD", other, contains).reject_with == "icmp6-port-unreachable"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("src", "1.1.1.1"), ("dst", "2.2.2.2"), ("dst,dst", "2.2.2.2,udp:53"),
     ("src,src", "1.1.1.1,udp:9")],
)  # fmt: skip
def test_member_spelling(flags: str, expected: str) -> None:
    assert member(Packet("1.1.1.1", "2.2.2.2", "udp", 9, 53), flags) == expected


def test_errors() -> None:
    fake = FakeIPTables("ipv4")
    fake.apply("*filter\n:A - [0:0]\n-A INPUT -m addrtype --src-type UNICAST\nCOMMIT\n")
    packet = Packet("1.1.1.1", "2.2.2.2")
    with pytest.raises(TraceError, match="only LOCAL"):
        trace(fake, "INPUT", packet, contains)
    with pytest.raises(TraceError, match="not a built-in chain"):
        trace(fake, "A", packet, contains)
    with pytest.raises(TraceError, match="ipv6 packet"):
        trace(fake, "OUTPUT", dataclasses.replace(packet, family="ipv6"), contains)


def _list_sets() -> FakeIPSets:
    """Policy sets as list:sets of shared hash:ip pools (one per family)."""
    pool, pool6 = (
        ipset.SetSpec("KUBE-POOL-A", "hash:ip"),
        ipset.SetSpec("inet6:KUBE-POOL-A", "hash:ip", "inet6"),
    )
    lst, lst6 = (
        ipset.SetSpec("KUBE-SRC-L", "list:set"),
        ipset.SetSpec("inet6:KUBE-SRC-L", "list:set", "inet6"),
    )
    tx = ipset.Transaction().replace(pool, [PEER]).replace(pool6, ["fd00::9"])
    tx.replace(lst, [pool.name]).replace(lst6, [pool6.name])
    sets = FakeIPSets()
    sets.apply(tx.render())
    return sets


@pytest.mark.parametrize(
    ("family", "name", "src", "action"),
    [
        ("ipv4", "KUBE-SRC-L", PEER, "ACCEPT"),
        ("ipv4", "KUBE-SRC-L", STRANGER, "DROP"),
        ("ipv6", "inet6:KUBE-SRC-L", "fd00::9", "ACCEPT"),
        ("ipv6", "inet6:KUBE-SRC-L", "fd00::8", "DROP"),
    ],
)
def test_match_set_through_a_list_set(family: Family, name: str, src: str, action: str) -> None:
    sets = _list_sets()
    fake = FakeIPTables(family, set_exists=lambda n: n in sets.sets)
    fake.apply(
        f"*filter\n:INPUT DROP [0:0]\n-A INPUT -m set --match-set {name} src -j ACCEPT\nCOMMIT\n"
    )
    dst = POD if family == "ipv4" else "fd00::5"
    assert trace(fake, "INPUT", Packet(src, dst, family=family), sets.contains).action == action

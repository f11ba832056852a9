# ruff: noqa: E501  (rule lines kept verbatim, one per line, as kube-router writes them)
"""The fake and the real iptables-restore agree: same transactions, same outcome, same state.

Each case runs on both backends (nft, legacy) and both families in a fresh network namespace:
the setup is restored, then the transaction; success or failure must match, and the saved filter
table (chains, policies, rules as iptables-save prints them) must be identical.
"""

from __future__ import annotations

import subprocess

import pytest

from kube_router.dataplane.exec import CommandError, Executor
from kube_router.dataplane.iptables import (
    Backend,
    RealIPTables,
    detect_backend,
)
from kube_router.dataplane.iptables_fake import FakeIPTables
from kube_router.dataplane.iptables_parse import Family, Transaction, parse_save

SETS: dict[str, tuple[str, Family]] = {
    "KUBE-SRC-A": ("hash:ip", "ipv4"),
    "KUBE-DST-P": ("hash:ip,port", "ipv4"),
    "KUBE-NET": ("hash:net", "ipv4"),
    "inet6:KUBE-SRC-B": ("hash:ip", "ipv6"),
    "inet6:KUBE-DST-Q": ("hash:ip,port", "ipv6"),
}

VALUES: dict[Family, dict[str, str]] = {
    "ipv4": {
        "ip": "10.1.0.5", "ip2": "10.1.0.6", "net": "10.0.0.5/8", "cidr": "10.96.0.0/12",
        "bad_ip": "10.0.0.300", "bad_mask": "10.0.0.1/33", "foreign_ip": "fd00::1",
        "set": "KUBE-SRC-A", "pset": "KUBE-DST-P", "foreign_set": "inet6:KUBE-SRC-B",
        "icmp": "-p icmp --icmp-type echo-request", "icmp2": "-p icmp --icmp-type 3/1",
        "reject": "icmp-host-prohibited", "foreign_reject": "icmp6-adm-prohibited",
    },
    "ipv6": {
        "ip": "fd00::5", "ip2": "FD00:0::6", "net": "fd00::5/8", "cidr": "fd00:96::/108",
        "bad_ip": "fd00::zz", "bad_mask": "fd00::1/129", "foreign_ip": "10.0.0.1",
        "set": "inet6:KUBE-SRC-B", "pset": "inet6:KUBE-DST-Q", "foreign_set": "KUBE-SRC-A",
        "icmp": "-p ipv6-icmp --icmpv6-type neighbor-solicitation",
        "icmp2": "-p icmpv6 --icmpv6-type echo-reply",
        "reject": "icmp6-adm-prohibited", "foreign_reject": "icmp-host-prohibited",
    },
}  # fmt: skip

NETPOL = """:KUBE-ROUTER-INPUT - [0:0]
:KUBE-ROUTER-FORWARD - [0:0]
:KUBE-ROUTER-OUTPUT - [0:0]
:KUBE-NWPLCY-DEFAULT - [0:0]
:KUBE-NWPLCY-COMMON - [0:0]
:KUBE-NWPLCY-TAIL - [0:0]
:KUBE-POD-FW-ABCDEFGHIJKLMNOP - [0:0]
:KUBE-NWPLCY-QRSTUVWXYZ234567 - [0:0]
-I INPUT 1 -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-INPUT
-I FORWARD 1 -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" -j KUBE-ROUTER-FORWARD
-I OUTPUT 1 -m comment --comment "kube-router netpol - VEAAIY32XVBHCSCY" -j KUBE-ROUTER-OUTPUT
-A KUBE-ROUTER-INPUT -d {cidr} -m comment --comment "allow traffic to primary cluster IP range - XYZ" -j RETURN
-A KUBE-ROUTER-INPUT -p tcp -m comment --comment "allow LOCAL TCP traffic to node ports - X" -m addrtype --dst-type LOCAL -m multiport --dports 30000:32767 -j RETURN
-A KUBE-NWPLCY-DEFAULT -j MARK --set-xmark 0x10000/0x10000 -m comment --comment "rule to mark traffic matching a network policy"
-A KUBE-NWPLCY-COMMON -m conntrack --ctstate INVALID -j DROP
-A KUBE-NWPLCY-COMMON -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A KUBE-NWPLCY-COMMON {icmp} -j ACCEPT
-A KUBE-NWPLCY-COMMON {icmp2} -j ACCEPT
-A KUBE-NWPLCY-TAIL -m mark --mark 0x20000/0x20000 -m comment --comment "accept netpol-ok" -j ACCEPT
-I KUBE-POD-FW-ABCDEFGHIJKLMNOP 1 -j KUBE-NWPLCY-COMMON -m comment --comment "common netpol rules"
-I KUBE-POD-FW-ABCDEFGHIJKLMNOP 1 -d {ip} -m addrtype --src-type LOCAL -j ACCEPT
-I KUBE-POD-FW-ABCDEFGHIJKLMNOP 1 -s {ip} -j KUBE-NWPLCY-DEFAULT -m comment --comment "default egress"
-I KUBE-POD-FW-ABCDEFGHIJKLMNOP 1 -d {ip} -j KUBE-NWPLCY-QRSTUVWXYZ234567 -m comment --comment "ns/pol policy"
-A KUBE-POD-FW-ABCDEFGHIJKLMNOP -m comment --comment "ns/pod log-drop" -m mark ! --mark 0x10000/0x10000 -j NFLOG --nflog-group 100 -m limit --limit 10/minute --limit-burst 10
-A KUBE-POD-FW-ABCDEFGHIJKLMNOP -m comment --comment "ns/pod reject" -m mark ! --mark 0x10000/0x10000 -j REJECT
-A KUBE-POD-FW-ABCDEFGHIJKLMNOP -j MARK --set-mark 0/0x10000
-A KUBE-POD-FW-ABCDEFGHIJKLMNOP -j MARK --set-mark 0x20000/0x20000 -m comment --comment "set netpol-ok mark"
-A KUBE-NWPLCY-QRSTUVWXYZ234567 -m comment --comment "ns/pol ingress pods" -m set --match-set {set} src -p tcp --dport 80 -j MARK --set-xmark 0x10000/0x10000
-A KUBE-NWPLCY-QRSTUVWXYZ234567 -m comment --comment "ns/pol ingress pods" -m set --match-set {set} src -p tcp --dport 80 -m mark --mark 0x10000/0x10000 -j RETURN
-A KUBE-NWPLCY-QRSTUVWXYZ234567 -m set --match-set {pset} dst,dst -p udp --dport 53:60 -j MARK --set-xmark 0x10000/0x10000
-A KUBE-ROUTER-FORWARD -m physdev --physdev-is-bridged -d {ip} -m comment --comment "ns/pod in" -j KUBE-POD-FW-ABCDEFGHIJKLMNOP
-A KUBE-ROUTER-FORWARD -d {ip} -j KUBE-POD-FW-ABCDEFGHIJKLMNOP
-A KUBE-ROUTER-OUTPUT -s {ip} -j KUBE-POD-FW-ABCDEFGHIJKLMNOP
-A KUBE-ROUTER-FORWARD -j KUBE-NWPLCY-TAIL
-A KUBE-ROUTER-FORWARD -m mark --mark 0x20000/0x20000 -j ACCEPT"""

SMALL = ":A - [0:0]\n:B - [0:0]\n-A A -j B\n-A B -s {ip} -j ACCEPT"

# (id, setup, transaction, ok)
CASES: list[tuple[str, str, str, bool]] = [
    ("netpol-ruleset", "", NETPOL, True),
    ("netpol-resync-replaces-pod-chain", NETPOL,
     ":KUBE-POD-FW-NEWNEWNEWNEWNEWN - [0:0]\n"
     "-A KUBE-POD-FW-NEWNEWNEWNEWNEWN -j KUBE-NWPLCY-COMMON\n"
     "-I KUBE-ROUTER-FORWARD 1 -d {ip2} -j KUBE-POD-FW-NEWNEWNEWNEWNEWN\n"
     "-D KUBE-ROUTER-FORWARD -d {ip} -j KUBE-POD-FW-ABCDEFGHIJKLMNOP\n"
     "-D KUBE-ROUTER-FORWARD -m physdev --physdev-is-bridged -d {ip} -m comment --comment \"ns/pod in\" -j KUBE-POD-FW-ABCDEFGHIJKLMNOP\n"
     "-D KUBE-ROUTER-OUTPUT -s {ip} -j KUBE-POD-FW-ABCDEFGHIJKLMNOP\n"
     "-F KUBE-POD-FW-ABCDEFGHIJKLMNOP\n-X KUBE-POD-FW-ABCDEFGHIJKLMNOP", True),
    ("netpol-x-still-referenced", NETPOL,
     "-F KUBE-POD-FW-ABCDEFGHIJKLMNOP\n-X KUBE-POD-FW-ABCDEFGHIJKLMNOP", False),
    ("flush-both-then-x", SMALL, "-F A\n-F B\n-X B", True),
    ("x-referenced", SMALL, "-X B", False),
    ("x-not-empty", SMALL, "-F A\n-X B", False),
    ("declare-flushes", SMALL, ":A - [0:0]\n:B - [0:0]\n-X B\n-X A", True),
    ("declare-flushes-but-b-kept-rule", SMALL, ":A - [0:0]\n-X B", False),
    ("x-missing", SMALL, "-X Z", False),
    ("x-builtin", SMALL, "-X INPUT", False),
    ("append-missing-chain", SMALL, "-A Z -j ACCEPT", False),
    ("jump-missing-chain", SMALL, "-A A -j Z", False),
    ("jump-declared-later", SMALL, "-A A -j Z\n:Z - [0:0]", False),
    ("jump-after-x", SMALL, "-F A\n-F B\n-X B\n-A A -j B", False),
    ("delete-missing-rule", SMALL, "-D B -s {ip2} -j ACCEPT", False),
    ("delete-reordered-rule", SMALL, "-D B -j ACCEPT -s {ip}", True),
    ("delete-by-number", SMALL, "-D B 1", True),
    ("delete-number-too-big", SMALL, "-D B 2", False),
    ("insert-too-big", SMALL, "-I B 3 -j DROP", False),
    ("insert-at-end", SMALL, "-I B 2 -j DROP\n-I B -j RETURN", True),
    ("new-existing", SMALL, "-N A", False),
    ("new-then-use", SMALL, "-N C\n-A C -j A", True),
    ("builtin-policy-keeps-rules", "-A INPUT -j ACCEPT", ":INPUT DROP [0:0]\n:FORWARD - [0:0]", True),
    ("policy-command", "", "-P FORWARD DROP", True),
    ("chain-name-clash", "", ":ACCEPT - [0:0]", False),
    ("chain-name-28", "", ":" + "C" * 28 + " - [0:0]", True),
    ("chain-name-29", "", ":" + "C" * 29 + " - [0:0]", False),
    ("failure-rolls-back", SMALL, "-A A -j DROP\n:C - [0:0]\n-A Z -j ACCEPT", False),
    ("flush-all", SMALL, "-F", True),
    ("set-missing", SMALL, "-A A -m set --match-set NOPE src -j ACCEPT", False),
    ("set-other-family", SMALL, "-A A -m set --match-set {foreign_set} src -j ACCEPT", False),
    ("bad-address", SMALL, "-A A -s {bad_ip} -j ACCEPT", False),
    ("bad-mask", SMALL, "-A A -s {bad_mask} -j ACCEPT", False),
    ("other-family-address", SMALL, "-A A -d {foreign_ip} -j ACCEPT", False),
    ("host-bits-cleared", SMALL, "-A A -s {net} ! -d {ip2} -i eth+ ! -o lo -j ACCEPT", True),
    ("reject-with", SMALL, "-A A -j REJECT --reject-with {reject}", True),
    ("reject-with-other-family", SMALL, "-A A -j REJECT --reject-with {foreign_reject}", False),
    ("tcp-reset-needs-tcp", SMALL, "-A A -j REJECT --reject-with tcp-reset", False),
    ("tcp-reset", SMALL, "-A A -p tcp -j REJECT --reject-with tcp-reset", True),
    ("marks", SMALL,
     "-A A -j MARK --and-mark 0xff\n-A A -j MARK --or-mark 0x4\n-A A -j MARK --xor-mark 4\n"
     "-A A -j MARK --set-mark 0x20000\n-A A -m mark --mark 1/0xffffffff\n-A A -m mark ! --mark 7/3", True),
    ("mark-needs-option", SMALL, "-A A -j MARK", False),
    ("limits", SMALL,
     "-A A -m limit --limit 120/minute\n-A A -m limit --limit 1/s --limit-burst 5\n"
     "-A A -m limit --limit 7/hour --limit-burst 3", True),
    ("log-nflog", SMALL,
     "-A A -j LOG --log-level 4 --log-prefix foo\n-A A -j LOG --log-prefix \"a b\" --log-level debug\n"
     "-A A -j NFLOG --nflog-prefix \"a b\" --nflog-group 5 --nflog-threshold 2\n-A A -j NFLOG", True),
    ("ports", SMALL,
     "-A A -p tcp --dport 80:80 --sport 1024:\n-A A -p udp ! --dport http\n"
     "-A A -p sctp --sport 5 -j ACCEPT\n-A A -p udp -m multiport ! --sports 53,54:60", True),
    ("multiport-needs-proto", SMALL, "-A A -m multiport --dports 53", False),
    ("dport-needs-proto", SMALL, "-A A --dport 53", False),
    ("tcp-match-needs-proto", SMALL, "-A A -m tcp --dport 53", False),
    ("comments", SMALL,
     "-A A -m comment --comment abc\n-A A -m comment --comment \"\"\n"
     "-A A -m comment --comment \"a\\\"b\"\n-A A -m comment --comment a/b:c,d#e\n"
     "-A A -m comment --comment \"a\\'b\\\\c\"", True),
    ("single-quotes-are-not-quotes", SMALL, "-A A -m comment --comment 'x y'", False),
    ("ctstate-addrtype-physdev", SMALL,
     "-A A -m conntrack ! --ctstate NEW,INVALID\n-A A -m addrtype --dst-type LOCAL --src-type local\n"
     "-A A -m physdev ! --physdev-is-bridged\n-A A -m physdev --physdev-is-bridged --physdev-is-in", True),
    ("unknown-match", SMALL, "-A A -m foo", False),
    ("unknown-option", SMALL, "-A A --bogus", False),
    ("extra-argument", SMALL, "-A A -j ACCEPT extra", False),
    ("two-protocols", SMALL, "-A A -p tcp -p udp", False),
    ("nat-target-in-filter", SMALL, "-A A -j MASQUERADE", False),
    ("loop-unreachable-is-fine", SMALL, "-A B -j A", True),
    ("loop-reachable", SMALL + "\n-A INPUT -j A", "-A B -j A", False),
    ("hook-onto-loop", SMALL + "\n-A B -j A", "-A FORWARD -j A", False),
    ("self-loop-reachable", SMALL, "-A OUTPUT -j B\n-A B -j B", False),
    ("protocol-names", SMALL, "-A A -p 6\n-A A -p UDP\n-A A -p all\n-A A ! -p tcp", True),
]  # fmt: skip


def _sets_in(netns: str) -> None:
    for name, (kind, family) in SETS.items():
        fam = "inet" if family == "ipv4" else "inet6"
        subprocess.run(
            ["ip", "netns", "exec", netns, "ipset", "create", name, kind, "family", fam],
            check=True,
        )


def _state(save: str) -> dict[str, tuple[str | None, list[str]]]:
    table = parse_save(save)["filter"]
    return {n: (c.policy, [r.spec for r in c.rules]) for n, c in table.chains.items()}


async def _outcome(ipt: RealIPTables | FakeIPTables, setup: str, tx: str) -> tuple[bool, str]:
    if setup:
        await ipt.restore(f"*filter\n{setup}\nCOMMIT\n")
    try:
        await ipt.restore(f"*filter\n{tx}\nCOMMIT\n")
    except CommandError as err:
        return False, err.stderr
    return True, ""


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize(("setup", "tx", "ok"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_fake_and_real_agree(
    netns: str, ns_exec: Executor, backend: Backend, family: Family, setup: str, tx: str, ok: bool
) -> None:
    _sets_in(netns)
    values = VALUES[family]
    setup, tx = setup.format(**values), tx.format(**values)
    real = RealIPTables(ns_exec, family, backend)
    fake = FakeIPTables(family, set_family=lambda name: SETS[name][1] if name in SETS else None)
    real_ok, real_err = await _outcome(real, setup, tx)
    fake_ok, fake_err = await _outcome(fake, setup, tx)
    assert (real_ok, fake_ok) == (ok, ok), f"real: {real_err!r} fake: {fake_err!r}"
    real_state, fake_state = _state(await real.save()), _state(await fake.save())
    assert fake_state == real_state
    assert (await fake.save()) == _strip_comments(await real.save())


def _strip_comments(save: str) -> str:
    return "".join(line + "\n" for line in save.splitlines() if not line.startswith("#"))


async def test_real_error_points_at_the_failing_line(ns_exec: Executor) -> None:
    real = RealIPTables(ns_exec, "ipv4", "legacy")
    tx = Transaction().declare("A").append("A", "-j ACCEPT").append("A", "-s 10.0.0.300")
    with pytest.raises(CommandError) as info:
        await real.restore(tx)
    assert info.value.line == 4
    assert "-A A -s 10.0.0.300" in str(info.value)


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (None, "nft"),
        (("iptables-legacy-restore", "KUBE-IPTABLES-HINT"), "legacy"),
        (("ip6tables-legacy-restore", "KUBE-KUBELET-CANARY"), "legacy"),
        (("iptables-nft-restore", "KUBE-KUBELET-CANARY"), "nft"),
        (("ip6tables-nft-restore", "KUBE-IPTABLES-HINT"), "nft"),
    ],
)
async def test_detect_backend_in_a_namespace(
    ns_exec: Executor, where: tuple[str, str] | None, expected: str
) -> None:
    if where is not None:
        restore, chain = where
        await ns_exec.run([restore, "--noflush"], input=f"*mangle\n:{chain} - [0:0]\nCOMMIT\n")
    assert await detect_backend(ns_exec) == expected

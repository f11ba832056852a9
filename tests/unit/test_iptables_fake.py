"""The strict iptables fake: canonical rule forms, noflush semantics, atomicity, refusals.

Every expectation here was observed on iptables 1.8.9 (nft and legacy); the privileged tier
re-checks the fake against the real tool.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kube_router.dataplane.exec import CommandError
from kube_router.dataplane.iptables_fake import FakeIPTables
from kube_router.dataplane.iptables_parse import Family, Transaction, parse_save

SETS: dict[str, Family] = {"S4": "ipv4", "S6": "ipv6", "SP": "ipv4", "inet6:S6": "ipv6"}

# (family, rule as written, rule as iptables-save prints it)
CANONICAL = [
    ("ipv4", "-s 10.0.0.1 -j ACCEPT", "-s 10.0.0.1/32 -j ACCEPT"),
    ("ipv4", "-s 10.0.0.5/24 -j ACCEPT", "-s 10.0.0.0/24 -j ACCEPT"),
    ("ipv4", "! -d 10.2.0.0/255.255.0.0 -j ACCEPT", "! -d 10.2.0.0/16 -j ACCEPT"),
    ("ipv4", "-p 6 -j ACCEPT", "-p tcp -j ACCEPT"),
    ("ipv4", "-p UDP -j ACCEPT", "-p udp -j ACCEPT"),
    ("ipv4", "-p all -j ACCEPT", "-j ACCEPT"),
    ("ipv4", "-p tcp --dport 80:80 -j ACCEPT", "-p tcp -m tcp --dport 80 -j ACCEPT"),
    ("ipv4", "-p tcp --dport http -j ACCEPT", "-p tcp -m tcp --dport 80 -j ACCEPT"),
    (
        "ipv4",
        "-p tcp --dport 80:81 --sport 1024:65535 -j ACCEPT",
        "-p tcp -m tcp --sport 1024:65535 --dport 80:81 -j ACCEPT",
    ),
    (
        "ipv4",
        '-m comment --comment "ns/pol ingress pods" -m set --match-set S4 src -p tcp --dport 80'
        " -j MARK --set-xmark 0x10000/0x10000",
        '-p tcp -m comment --comment "ns/pol ingress pods" -m set --match-set S4 src -m tcp'
        " --dport 80 -j MARK --set-xmark 0x10000/0x10000",
    ),
    (
        "ipv4",
        "-m mark ! --mark 0x10000/0x10000 -j NFLOG --nflog-group 100 -m limit --limit 10/minute"
        " --limit-burst 10",
        "-m mark ! --mark 0x10000/0x10000 -m limit --limit 10/min --limit-burst 10"
        " -j NFLOG --nflog-group 100",
    ),
    ("ipv4", "-m limit --limit 120/minute -j ACCEPT", "-m limit --limit 2/sec -j ACCEPT"),
    ("ipv4", "-m limit --limit 1/s --limit-burst 5 -j ACCEPT", "-m limit --limit 1/sec -j ACCEPT"),
    ("ipv4", "-m limit --limit 7/hour -j ACCEPT", "-m limit --limit 7/hour -j ACCEPT"),
    ("ipv4", "-j REJECT", "-j REJECT --reject-with icmp-port-unreachable"),
    ("ipv6", "-j REJECT", "-j REJECT --reject-with icmp6-port-unreachable"),
    ("ipv4", "-j MARK --set-mark 0/0x10000", "-j MARK --set-xmark 0x0/0x10000"),
    ("ipv4", "-j MARK --set-mark 0x20000", "-j MARK --set-xmark 0x20000/0xffffffff"),
    ("ipv4", "-j MARK --set-xmark 65536", "-j MARK --set-xmark 0x10000/0xffffffff"),
    ("ipv4", "-j MARK --and-mark 0xff", "-j MARK --set-xmark 0x0/0xffffff00"),
    ("ipv4", "-j MARK --or-mark 0x4", "-j MARK --set-xmark 0x4/0x4"),
    ("ipv4", "-j MARK --xor-mark 0x4", "-j MARK --set-xmark 0x4/0x0"),
    ("ipv4", "-m mark --mark 0x1/0xffffffff -j ACCEPT", "-m mark --mark 0x1 -j ACCEPT"),
    ("ipv4", "-m mark --mark 65536/65536 -j ACCEPT", "-m mark --mark 0x10000/0x10000 -j ACCEPT"),
    (
        "ipv4",
        "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ),
    (
        "ipv4",
        "-m addrtype --dst-type LOCAL --src-type local -j ACCEPT",
        "-m addrtype --src-type LOCAL --dst-type LOCAL -j ACCEPT",
    ),
    (
        "ipv4",
        "-m physdev --physdev-is-bridged -d 10.1.0.5 -j ACCEPT",
        "-d 10.1.0.5/32 -m physdev --physdev-is-bridged -j ACCEPT",
    ),
    (
        "ipv4",
        "-p icmp --icmp-type echo-request -j ACCEPT",
        "-p icmp -m icmp --icmp-type 8 -j ACCEPT",
    ),
    ("ipv4", "-j LOG --log-level 4 --log-prefix foo", "-j LOG --log-prefix foo"),
    ("ipv4", "-j LOG --log-level debug", "-j LOG --log-level 7"),
    ("ipv4", "-m comment --comment abc#def -j ACCEPT", '-m comment --comment "abc#def" -j ACCEPT'),
    ("ipv4", "-m set --match-set SP dst,dst -j ACCEPT", "-m set --match-set SP dst,dst -j ACCEPT"),
    ("ipv4", "-i eth+ ! -o veth1", "-i eth+ ! -o veth1"),
    (
        "ipv6",
        "-s fd00::1 -d 2001:db8:0:0::/64 -j ACCEPT",
        "-s fd00::1/128 -d 2001:db8::/64 -j ACCEPT",
    ),
    (
        "ipv6",
        "-p icmpv6 --icmpv6-type neighbor-solicitation -j ACCEPT",
        "-p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT",
    ),
    ("ipv6", "-m set --match-set inet6:S6 src", "-m set --match-set inet6:S6 src"),
]


def _fake(family: Family = "ipv4") -> FakeIPTables:
    return FakeIPTables(family, set_family=SETS.get)


@pytest.mark.parametrize(("family", "written", "saved"), CANONICAL)
def test_rules_are_stored_as_iptables_save_prints_them(
    family: Family, written: str, saved: str
) -> None:
    fake = _fake(family)
    fake.apply(f"*filter\n:A - [0:0]\n-A A {written}\nCOMMIT\n")
    assert [r.text for r in fake.rules("A")] == [saved]
    assert f"-A A {saved}\n" in fake.dump()
    # -D finds the rule by meaning, whatever the spelling
    fake.apply(f"*filter\n-D A {written}\nCOMMIT\n")
    assert fake.rules("A") == []


REFUSED = [
    ("ipv4", "-m comment --comment 'x y' -j ACCEPT", "Bad argument"),
    ("ipv4", "-m multiport --dports 53 -j ACCEPT", "multiport needs"),
    ("ipv4", "-m set --match-set NOPE src -j ACCEPT", "Set NOPE doesn't exist"),
    ("ipv4", "-m set --match-set S6 src -j ACCEPT", "protocol family of set S6 is IPv6"),
    ("ipv6", "-m set --match-set S4 src -j ACCEPT", "protocol family of set S4 is IPv4"),
    ("ipv4", "-s 10.0.0.300 -j ACCEPT", "host/network"),
    ("ipv4", "-s 10.0.0.1/33 -j ACCEPT", "invalid mask"),
    ("ipv4", "-s ::1 -j ACCEPT", "host/network"),
    ("ipv6", "-s 10.0.0.1 -j ACCEPT", "host/network"),
    ("ipv4", "-j REJECT --reject-with tcp-reset", "tcp-reset needs -p tcp"),
    ("ipv6", "-j REJECT --reject-with icmp-port-unreachable", "unknown reject type"),
    ("ipv4", "-j DNAT --to-destination 1.2.3.4", "only valid in the nat table"),
    ("ipv4", "-m foo -j ACCEPT", "Couldn't load match"),
    ("ipv4", "--bogus -j ACCEPT", 'unknown option "--bogus"'),
    ("ipv4", "--dport 80 -j ACCEPT", 'unknown option "--dport"'),
    ("ipv4", "-m tcp --dport 80 -j ACCEPT", "tcp needs"),
    ("ipv4", "-j ACCEPT extra", "Bad argument"),
    ("ipv4", "-p tcp -p udp -j ACCEPT", "multiple -p"),
    ("ipv4", "-j MARK --set-mark 0x1 --set-xmark 0x2", "cannot be used together"),
    ("ipv4", "-j MARK", "One of the --set-xmark"),
    ("ipv4", "-j ACCEPT -j DROP", "multiple -j"),
    ("ipv4", "-j NOPE", "Couldn't load target `NOPE'"),
    ("ipv4", "-j INPUT", "Couldn't load target `INPUT'"),
    ("ipv4", "-m set --match-set S4 src --match-set S4 dst", "can only be used once"),
    ("ipv4", "-m comment ! --comment x", "cannot be inverted"),
    ("ipv4", "-i abcdefghijklmnop", "IFNAMSIZ"),
    ("ipv4", "-m mark --mark 0x100000000", "out of range"),
    ("ipv4", "! -j ACCEPT", "cannot negate"),
    ("ipv4", "-m limit --limit 3/day", "per day"),  # legacy refuses, nft accepts: refuse
    ("ipv4", "-p tcp -m tcp --dport 1 -m tcp --sport 2", "loaded twice"),  # backends differ
    ("ipv4", "-s 1.2.3.4,5.6.7.8", "not supported by the fake"),
]


@pytest.mark.parametrize(("family", "rule", "message"), REFUSED)
def test_refuses_what_iptables_restore_refuses(family: Family, rule: str, message: str) -> None:
    fake = _fake(family)
    text = f"*filter\n:A - [0:0]\n-A A {rule}\nCOMMIT\n"
    with pytest.raises(CommandError) as info:
        fake.apply(text)
    assert message in info.value.stderr
    assert info.value.line == 3
    assert info.value.input == text
    assert not fake.has_chain("A")  # the declaration on line 2 was rolled back


SETUP = ":A - [0:0]\n:B - [0:0]\n-A A -j B\n-A B -j ACCEPT"

# (setup, transaction, error substring or None, expected chains {name: rules})
TRANSACTIONS: list[tuple[str, str, str | None, dict[str, list[str]] | None]] = [
    (SETUP, "-F A\n-F B\n-X B", None, {"A": []}),
    (SETUP, "-X B", "busy", None),
    (SETUP, "-F A\n-X B", "busy", None),  # B still has a rule
    (SETUP, ":A - [0:0]\n:B - [0:0]\n-X B", None, {"A": []}),  # declare flushes
    (SETUP, "-X Z", "No chain", None),
    (SETUP, "-A Z -j ACCEPT", "No chain", None),
    (SETUP, "-A A -j Z\n:Z - [0:0]", "Couldn't load target", None),  # declared too late
    (SETUP, "-X B\n-A A -j B", "busy", None),
    (SETUP, "-D B -j DROP", "Bad rule", None),
    (SETUP, "-D B 1", None, {"A": ["-j B"], "B": []}),
    (SETUP, "-D B 2", "Index of deletion too big", None),
    (SETUP, "-I B 3 -j DROP", "Index of insertion too big", None),
    (SETUP, "-I B 2 -j DROP", None, {"A": ["-j B"], "B": ["-j ACCEPT", "-j DROP"]}),
    (SETUP, "-I B -j DROP", None, {"A": ["-j B"], "B": ["-j DROP", "-j ACCEPT"]}),
    (SETUP, "-N A", "Chain already exists", None),
    (SETUP, ":A DROP [0:0]", "Can't set policy", None),
    (SETUP, "-X INPUT", "No chain", None),
    (SETUP, ":ACCEPT - [0:0]", "clash with target", None),
    (SETUP, ":" + "C" * 29 + " - [0:0]", "28 chars max", None),
    (SETUP, ":A - [0:0]\n-A A -j DROP\n:A - [0:0]", None, {"A": [], "B": ["-j ACCEPT"]}),
    (SETUP, "-F", None, {"A": [], "B": []}),
    (SETUP, "-A B -j A", None, {"A": ["-j B"], "B": ["-j ACCEPT", "-j A"]}),  # not reachable
    (SETUP, "-A B -j A\n-A INPUT -j A", "Too many links", None),
    (SETUP, "-A INPUT -j B\n-A B -j B", "Too many links", None),
]


@pytest.mark.parametrize(("setup", "tx", "error", "expected"), TRANSACTIONS)
def test_noflush_transactions(
    setup: str, tx: str, error: str | None, expected: dict[str, list[str]] | None
) -> None:
    fake = _fake()
    fake.apply(f"*filter\n{setup}\nCOMMIT\n")
    before = fake.dump()
    text = f"*filter\n{tx}\nCOMMIT\n"
    if error is not None:
        with pytest.raises(CommandError) as info:
            fake.apply(text)
        assert error in info.value.stderr
        assert fake.dump() == before  # atomic
        return
    fake.apply(text)
    assert expected is not None
    chains = parse_save(fake.dump())["filter"].chains
    for name, rules in expected.items():
        assert [r.spec for r in chains[name].rules] == rules
    assert set(chains) - {"INPUT", "FORWARD", "OUTPUT"} == set(expected)


def test_builtin_policy_declaration_keeps_rules() -> None:
    fake = _fake()
    fake.apply("*filter\n-A INPUT -j ACCEPT\nCOMMIT\n")
    fake.apply("*filter\n:INPUT DROP [0:0]\n:FORWARD - [0:0]\nCOMMIT\n")
    assert fake.policy("INPUT") == "DROP"
    assert fake.policy("FORWARD") == "ACCEPT"
    assert [r.text for r in fake.rules("INPUT")] == ["-j ACCEPT"]


def test_missing_commit_applies_nothing() -> None:
    fake = _fake()
    with pytest.raises(CommandError, match="COMMIT expected"):
        fake.apply("*filter\n:A - [0:0]\n")
    assert not fake.has_chain("A")


def test_unknown_table() -> None:
    with pytest.raises(CommandError, match="does not exist"):
        _fake().apply("*bogus\nCOMMIT\n")


def test_set_references_follow_rules() -> None:
    fake = FakeIPTables("ipv4", set_exists=lambda name: name.startswith("KUBE-"))
    fake.apply(
        "*filter\n:A - [0:0]\n-A A -m set --match-set KUBE-SRC-1 src -j ACCEPT\n"
        "-A A -m set --match-set KUBE-SRC-1 src -m set --match-set KUBE-DST-2 dst -j DROP\n"
        "COMMIT\n"
    )
    assert fake.referenced_sets() == {"KUBE-SRC-1", "KUBE-DST-2"}
    with pytest.raises(CommandError, match="Set other doesn't exist"):
        fake.apply("*filter\n-A A -m set --match-set other src\nCOMMIT\n")
    fake.apply("*filter\n-D A 2\nCOMMIT\n")
    assert fake.referenced_sets() == {"KUBE-SRC-1"}
    fake.apply("*filter\n-F A\n-X A\nCOMMIT\n")
    assert fake.referenced_sets() == set()


async def test_port_interface_with_transaction() -> None:
    fake = FakeIPTables("ipv6")
    tx = Transaction().declare("KUBE-NWPLCY-DEFAULT")
    tx.append("KUBE-NWPLCY-DEFAULT", "-j MARK --set-xmark 0x10000/0x10000")
    tx.insert("FORWARD", '-m comment --comment "kube-router netpol" -j KUBE-NWPLCY-DEFAULT')
    await fake.restore(tx)
    saved = await fake.save("filter")
    assert saved == (
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        ":KUBE-NWPLCY-DEFAULT - [0:0]\n"
        '-A FORWARD -m comment --comment "kube-router netpol" -j KUBE-NWPLCY-DEFAULT\n'
        "-A KUBE-NWPLCY-DEFAULT -j MARK --set-xmark 0x10000/0x10000\nCOMMIT\n"
    )
    assert (await fake.save("nat")).startswith("*nat\n:PREROUTING ACCEPT [0:0]\n")


def test_earlier_table_blocks_stay_committed() -> None:
    fake = _fake()
    with pytest.raises(CommandError):
        fake.apply("*filter\n:A - [0:0]\nCOMMIT\n*nat\n-A NOPE -j ACCEPT\nCOMMIT\n")
    assert fake.has_chain("A")


_FRAGMENTS = st.lists(
    st.sampled_from(
        [
            "-s 10.0.0.5/8", "! -d 10.1.0.5", "-i eth+", "! -o veth0", "-p tcp", "-p udp",
            "--dport 80:81", "! --sport 1024:", "-m comment --comment \"a b\"",
            "-m set --match-set S4 src", "-m set ! --match-set SP dst,dst",
            "-m mark ! --mark 0x10000/0x10000", "-m conntrack --ctstate ESTABLISHED,NEW",
            "-m addrtype --src-type LOCAL", "-m physdev --physdev-is-bridged",
            "-m limit --limit 10/minute --limit-burst 10", "-j MARK --set-mark 0x20000/0x20000",
            "-j NFLOG --nflog-group 100", "-j REJECT", "-j ACCEPT", "-j A",
        ]
    ),
    max_size=6,
)  # fmt: skip


@given(_FRAGMENTS)
def test_canonical_form_is_a_fixed_point(fragments: list[str]) -> None:
    """Whatever the fake accepts, it stores in a form it reads back as the same rule."""
    fake = _fake()
    rule = " ".join(fragments)
    try:
        fake.apply(f"*filter\n:A - [0:0]\n-A INPUT {rule}\nCOMMIT\n")
    except CommandError:
        return
    saved = fake.rules("INPUT")[0].text
    fake.apply(f"*filter\n-A INPUT {saved}\nCOMMIT\n")
    assert [r.text for r in fake.rules("INPUT")] == [saved, saved]
    fake.apply(f"*filter\n-D INPUT {rule}\n-D INPUT {saved}\nCOMMIT\n")
    assert fake.rules("INPUT") == []

"""The strict fake and the real ``ipset`` agree: same resulting sets, same success or failure
(and the same failing line and exit status), same membership answers."""

from __future__ import annotations

import re
import sys
from collections.abc import Awaitable

import pytest

from kube_router.dataplane.exec import Executor
from kube_router.dataplane.ipset import (
    IPSetRestoreError,
    RealIPSets,
    SetSpec,
    SetState,
    Transaction,
    parse_save,
    render_save,
)
from kube_router.dataplane.ipset_fake import FakeIPSets
from kube_router.dataplane.tracer import Packet, member

A, B, C = "KUBE-SRC-A", "KUBE-DST-B", "inet6:KUBE-SRC-C"
CA = f"create {A} hash:ip timeout 0\n"
CN = f"create {A} hash:net timeout 0\n"
C6 = f"create {C} hash:net family inet6 timeout 0\n"


def _adds(name: str, n: int) -> str:
    return "".join(f"add {name} 10.1.{i // 256}.{i % 256}\n" for i in range(1, n + 1))


L, M, P, Q = "KUBE-SRC-L", "KUBE-DST-M", "KUBE-POOL-P", "KUBE-POOL-Q"
LONG = "KUBE-POOL-ABCDEFGHIJKLMNOPQRSTUVW"  # 33 characters
CL = f"create {P} hash:ip timeout 0\ncreate {Q} hash:ip timeout 0\ncreate {L} list:set timeout 0\n"
CLM = CL + f"create {M} list:set timeout 0\nadd {L} {P}\nadd {M} {Q}\n"
POOLS = [f"KUBE-POOL-{i:04d}" for i in range(1000)]

LIST_CASES: list[tuple[str, str]] = [
    ("list add del", CL + f"add {L} {P}\nadd {L} {Q}\ndel {L} {P}\nadd {L} {P} timeout 0\n"),
    ("list unknown member", CL + f"add {L} {P}\nadd {L} KUBE-POOL-NONE\nadd {L} {Q}\n"),
    ("list del unknown member", CL + f"add {L} {P}\ndel {L} KUBE-POOL-NONE\n"),
    ("list in a list", CL + f"create {M} list:set\nadd {L} {P}\nadd {L} {M}\n"),
    ("list in itself", CL + f"add {L} {L}\n"),
    ("list member too long", CL + f"add {L} {P}\nadd {L} {LONG}\n"),
    ("list nomatch", CL + f"add {L} {P}\nadd {L} {Q} nomatch\n"),
    ("list re-add, del missing", CL + f"add {L} {P}\nadd {L} {P}\ndel {L} {Q}\n"),
    ("list no timeout", f"create {P} hash:ip\ncreate {L} list:set\nadd {L} {P} timeout 0\n"),
    (
        "list size no limit",
        f"create {L} list:set size 4\n"
        + "".join(f"create {n} hash:ip\nadd {L} {n}\n" for n in POOLS[:6]),
    ),
    ("list create family", f"create {L} list:set family inet\n"),
    ("list create maxelem", f"create {L} list:set maxelem 10\n"),
    ("list create size bad", f"create {L} list:set size x\n"),
    ("list create small size", f"create {L} list:set size 2\ncreate {L} list:set size 3\n"),
    ("hash create size", f"create {P} hash:ip size 8\n"),
    ("list create other size", CL + f"create {L} list:set size 16 timeout 0\n"),
    ("list create no timeout", CL + f"create {L} list:set\n"),
    ("list create hash", CL + f"create {L} hash:ip timeout 0\n"),
    ("list swap hash", CL + f"swap {L} {P}\n"),
    ("list destroy member", CL + f"add {L} {P}\ndestroy {Q}\ndestroy {P}\n"),
    ("list destroy all", CL + f"add {L} {P}\ndestroy\n"),
    ("list flush releases", CL + f"add {L} {P}\nflush {L}\ndestroy {P}\n"),
    ("list flush all releases", CL + f"add {L} {P}\nflush\ndestroy\n"),
    ("list destroy releases", CL + f"add {L} {P}\ndestroy {L}\ndestroy {P}\n"),
    ("list swap keeps references", CLM + f"swap {L} {M}\ndel {L} {Q}\ndestroy {Q}\ndestroy {P}\n"),
    (
        "list pool swapped",
        CL + f"add {L} {P}\ncreate TMP-X hash:ip timeout 0\nadd TMP-X 10.0.0.9\n"
        f"swap TMP-X {P}\ndestroy TMP-X\ndestroy {P}\n",
    ),
    (
        "list message boundary",
        f"create {L} list:set size 100000\n"
        + "".join(f"create {n} hash:ip\n" for n in POOLS)
        + "".join(f"add {L} {n}\n" for n in POOLS)
        + f"add {L} {LONG}\n",
    ),
]


CASES: list[tuple[str, str]] = [
    (
        "parse error drops unsent adds",
        CA + f"add {A} 10.0.0.1\nadd {A} 10.0.0.2\nadd {A} 300.1.1.1\n",
    ),
    ("missing set drops unsent adds", CA + f"add {A} 10.0.0.1\nadd {B} 10.0.0.9\n"),
    (
        "create sends the message",
        CA + f"add {A} 10.0.0.1\n{C6}add {A} 10.0.0.2\nadd {A} 300.1.1.1\n",
    ),
    (
        "del message lost",
        CA + f"add {A} 10.0.0.1\nadd {A} 10.0.0.5\ndel {A} 10.0.0.1\nadd {A} 300.1.1.1\n",
    ),
    (
        "page boundary",
        CA.replace("timeout 0", "timeout 0 maxelem 5000") + _adds(A, 1000) + f"add {A} 300.0.0.1\n",
    ),
    (
        "cidr in hash:ip expands",
        CA + f"add {A} 10.0.0.0/30\nadd {A} 10.0.1.5/31\nadd {A} 10.0.2.1-10.0.2.2\n",
    ),
    ("null element", CA + f"add {A} 1.1.1.1\nadd {A} 0.0.0.0/31\n"),
    ("ipv6 in inet", CA + f"add {A} 1.1.1.1\nadd {A} 2001:db8::1\n"),
    ("ipv4 in inet6", C6 + f"add {C} ::1\nadd {C} 10.0.0.0/8\n"),
    ("nomatch in hash:ip", CA + f"add {A} 1.1.1.1\nadd {A} 1.1.1.2 nomatch\n"),
    ("hash full", CA.replace("timeout 0", "timeout 0 maxelem 10") + f"add {A} 10.0.0.0/28\n"),
    ("no timeout support", f"create {A} hash:ip\nadd {A} 1.1.1.1 timeout 0\n"),
    ("name too long", f"create {A}-ABCDEFGHIJKLMNOPQRSTUVWXYZ hash:ip\n"),
    ("/0 refused", CN + f"add {A} 1.1.1.1\nadd {A} 0.0.0.0/0\n"),
    ("/0 split", CN + f"add {A} 0.0.0.0/1\nadd {A} 128.0.0.0/1\n"),
    (
        "v6 /0 split",
        C6 + f"add {C} 2000::/3\nadd {C} fd00::/8\nadd {C} 2001:db8::1/64 nomatch\nadd {C} ::/0\n",
    ),
    (
        "nomatch and host bits",
        CN + f"add {A} 10.0.0.1/24\nadd {A} 10.0.0.5/32\nadd {A} 10.1.0.0/16 nomatch\n",
    ),
    ("net range", CN + f"add {A} 10.0.0.0-10.0.0.6\n"),
    ("re-add flips nomatch", CN + f"add {A} 10.0.0.0/8\nadd {A} 10.0.0.0/8 nomatch\n"),
    ("del nomatch", CN + f"add {A} 1.0.0.0/8\ndel {A} 1.0.0.0/8 nomatch\n"),
    (
        "ip,port",
        f"create {B} hash:ip,port timeout 0\nadd {B} 10.0.0.1,tcp:80\nadd {B} 10.0.0.2,80\n"
        f"add {B} 10.0.0.3,sctp:80\nadd {B} 10.0.0.4,132:81\nadd {B} 10.0.0.5,udp:53\n",
    ),
    (
        "ip,port bad port",
        f"create {B} hash:ip,port timeout 0\nadd {B} 10.0.0.1,tcp:1\nadd {B} 10.0.0.1,tcp:65536\n",
    ),
    (
        "ip,port pseudo port",
        f"create {B} hash:ip,port timeout 0\nadd {B} 10.0.0.1,tcp:1\nadd {B} 10.0.0.1,47:5\n",
    ),
    (
        "ip,port v6",
        f"create inet6:{B} hash:ip,port family inet6 timeout 0\n"
        f"add inet6:{B} [2001:db8::2],udp:53\n",
    ),
    ("create other type", CA + f"create {A} hash:net timeout 0\n"),
    ("create other family", CA + f"create {A} hash:ip timeout 0 family inet6\n"),
    ("create other maxelem", CA + f"create {A} hash:ip timeout 0 maxelem 100\n"),
    ("create other hashsize", CA + f"create {A} hash:ip timeout 0 hashsize 64\n"),
    ("swap types", CA + f"create {B} hash:net timeout 0\nswap {A} {B}\n"),
    ("swap families", CA + f"create {B} hash:ip family inet6 timeout 0\nswap {A} {B}\n"),
    (
        "swap options",
        CA + f"add {A} 1.1.1.1\ncreate {B} hash:ip maxelem 5 hashsize 64\nswap {A} {B}\n",
    ),
    ("swap missing", CA + f"add {A} 1.1.1.1\nswap {A} {B}\n"),
    ("flush missing", CA + f"add {A} 1.1.1.1\nflush {B}\n"),
    ("destroy missing", CA + f"add {A} 1.1.1.1\ndestroy {B}\n"),
    ("unknown command", CA + f"add {A} 1.1.1.1\nfrobnicate {A}\n"),
    *LIST_CASES,
]


def _comparable(sets: dict[str, SetState]) -> dict[str, tuple[object, ...]]:
    """State without hashsize, which the kernel grows as a set fills."""
    return {
        n: (s.spec.type, s.spec.family, s.spec.maxelem, s.spec.timeout, s.spec.size, s.entries)
        for n, s in sets.items()
    }


async def _outcome(applying: Awaitable[None]) -> tuple[int | None, int | None] | None:
    try:
        await applying
    except IPSetRestoreError as err:
        return err.line, err.returncode
    return None


@pytest.mark.parametrize(("what", "text"), CASES, ids=[c[0] for c in CASES])
async def test_restore_agrees(ns_exec: Executor, what: str, text: str) -> None:
    real, fake = RealIPSets(ns_exec), FakeIPSets()
    real_outcome = await _outcome(real.restore_unchecked(text))
    fake_outcome = await _outcome(fake.restore_unchecked(text))
    assert fake_outcome == real_outcome, what
    assert _comparable(await fake.save()) == _comparable(await real.save()), what


@pytest.mark.parametrize("family", ["inet", "inet6"])
async def test_replace_agrees(ns_exec: Executor, family: str) -> None:
    real, fake = RealIPSets(ns_exec), FakeIPSets()
    v6 = family == "inet6"
    net = SetSpec("inet6:KUBE-SRC-N" if v6 else "KUBE-SRC-N", "hash:net", family)
    ips = SetSpec("inet6:KUBE-DST-I" if v6 else "KUBE-DST-I", "hash:ip", family)
    rounds: tuple[tuple[list[str], list[str]], ...] = (
        (["2000::/3", "fd00::/8", "2001:db8::/32 nomatch"], ["2001:db8::1", "2001:db8::2"])
        if v6
        else (["0.0.0.0/1", "128.0.0.0/1", "10.0.0.0/8 nomatch"], ["10.0.0.1", "10.0.0.2"]),
        (["2001:db8::/48"], []) if v6 else (["10.1.0.0/16"], []),
    )
    for nets, hosts in rounds:
        for port in (real, fake):
            await port.restore(Transaction().replace(net, nets).replace(ips, hosts))
        assert _comparable(await fake.save()) == _comparable(await real.save())
    state = await real.save()
    assert state[net.name].entries == set(rounds[-1][0])
    assert not any(n.startswith("TMP-") for n in state)


async def test_replace_of_a_set_with_another_family_fails_alike(ns_exec: Executor) -> None:
    """create -exist keeps the inet set silently, then the swap refuses: a TMP- set is left."""
    real, fake = RealIPSets(ns_exec), FakeIPSets()
    text = Transaction().create(SetSpec("KUBE-DST-F", "hash:ip")).render()
    tx = Transaction().replace(SetSpec("KUBE-DST-F", "hash:ip", "inet6"), ["2001:db8::1"])
    outcomes = []
    for port in (real, fake):
        await port.restore_unchecked(text)
        outcomes.append(await _outcome(port.restore(tx)))
    assert outcomes[0] == outcomes[1] == (5, 1)  # the swap line
    assert _comparable(await fake.save()) == _comparable(await real.save())


MEMBER_ENTRIES = [
    "10.0.0.0/8",
    "10.1.0.0/16 nomatch",
    "10.1.2.0/24",
    "10.1.2.3 nomatch",
    "0.0.0.0/1",
]
PROBES = ["10.2.3.4", "10.1.3.4", "10.1.2.4", "10.1.2.3", "11.0.0.1", "127.0.0.1", "200.1.1.1"]


async def test_membership_agrees(ns_exec: Executor) -> None:
    real, fake = RealIPSets(ns_exec), FakeIPSets()
    tx = Transaction().replace(SetSpec("KUBE-SRC-M", "hash:net"), MEMBER_ENTRIES)
    tx.replace(
        SetSpec("inet6:KUBE-SRC-M", "hash:net", "inet6"),
        ["2001:db8::/32", "2001:db8:1::/48 nomatch"],
    )
    tx.replace(
        SetSpec("kube-router-svip-prt", "hash:ip,port"), ["10.96.0.1,tcp:443", "10.96.0.1,132:9"]
    )
    for port in (real, fake):
        await port.restore(tx)
    probes = (
        [("KUBE-SRC-M", p) for p in PROBES]
        + [("inet6:KUBE-SRC-M", p) for p in ["2001:db8::1", "2001:db8:1::1", "2001:db9::1"]]
        + [
            ("kube-router-svip-prt", p)
            for p in ["10.96.0.1,tcp:443", "10.96.0.1,udp:443", "10.96.0.1,sctp:9"]
        ]
    )
    answers = [(n, p, await real.test(n, p), fake.contains(n, p)) for n, p in probes]
    assert [a for a in answers if a[2] != a[3]] == []
    assert [a[2] for a in answers[: len(PROBES)]] == [True, False, True, False, True, True, False]


async def test_referenced_set_cannot_be_destroyed(ns_exec: Executor) -> None:
    real = RealIPSets(ns_exec)
    fake = FakeIPSets(is_referenced=lambda name: name == "KUBE-SRC-REF")
    spec = SetSpec("KUBE-SRC-REF", "hash:ip")
    for port in (real, fake):
        await port.restore(Transaction().replace(spec, ["10.0.0.1"]))
    await ns_exec.run(
        [
            "iptables-nft",
            "-A",
            "INPUT",
            "-m",
            "set",
            "--match-set",
            spec.name,
            "src",
            "-j",
            "ACCEPT",
        ]
    )
    outcomes = []
    for port in (real, fake):
        with pytest.raises(IPSetRestoreError, match="in use by a kernel component") as info:
            await port.destroy_owned([spec.name])
        outcomes.append(info.value.line)
        # replacing the contents of a referenced set still works (swap keeps the reference)
        await port.restore(Transaction().replace(spec, ["10.0.0.2"]))
    assert outcomes == [1, 1]
    assert _comparable(await fake.save()) == _comparable(await real.save())
    assert (await real.save())[spec.name].entries == {"10.0.0.2"}
    await ns_exec.run(["iptables-nft", "-F", "INPUT"])
    await real.destroy_owned([spec.name])
    assert await real.save() == {}


# --- list:set through transactions -------------------------------------------------------------


def _pool(family: str, tag: str) -> SetSpec:
    name = f"KUBE-POOL-{tag * 15}"
    return SetSpec(f"inet6:{name}" if family == "inet6" else name, "hash:ip", family)


def _list(family: str, base: str = "KUBE-SRC-L") -> SetSpec:
    return SetSpec(f"inet6:{base}" if family == "inet6" else base, "list:set", family)


@pytest.mark.parametrize("family", ["inet", "inet6"])
async def test_list_set_replace_agrees(ns_exec: Executor, family: str) -> None:
    """A policy list:set moves from one pool to another through TMP- and swap; the old pool can
    then be destroyed; what we read back is exactly what we built (family from the name)."""
    real, fake = RealIPSets(ns_exec), FakeIPSets()
    old, new, lst = _pool(family, "A"), _pool(family, "B"), _list(family)
    addrs = ["2001:db8::1", "2001:db8::2"] if family == "inet6" else ["10.0.0.1", "10.0.0.2"]
    rounds = [
        Transaction().replace(old, addrs[:1]).replace(new, addrs).replace(lst, [old.name]),
        Transaction().replace(lst, [new.name]).destroy(old.name),
        Transaction().replace(new, addrs[1:]),  # a referenced pool is refilled through TMP-
    ]
    for tx in rounds:
        for port in (real, fake):
            await port.restore(tx)
        assert _comparable(await fake.save()) == _comparable(await real.save())
    state = await real.save()
    assert state[lst.name] == SetState(lst, frozenset({new.name}))
    assert state[new.name].entries == {addrs[1]}
    assert set(state) == {lst.name, new.name}  # no TMP- set left, the old pool gone
    assert parse_save(render_save(state)) == state


@pytest.mark.parametrize("family", ["inet", "inet6"])
async def test_list_set_references_agree(ns_exec: Executor, family: str) -> None:
    """Which destroys fail, one after another, as lists are emptied, swapped and flushed."""
    real, fake = RealIPSets(ns_exec), FakeIPSets()
    a, b = _pool(family, "A"), _pool(family, "B")
    la, lb = _list(family, "KUBE-SRC-A"), _list(family, "KUBE-DST-B")
    build = Transaction().fill(a, []).fill(b, []).fill(la, [a.name]).fill(lb, [b.name])
    steps: list[tuple[Transaction, list[str]]] = [
        (build, [a.name, b.name]),
        (Transaction().swap(la.name, lb.name), [a.name, b.name]),
        (Transaction().delete(la.name, b.name), [b.name, a.name]),  # la held b after the swap
        (Transaction().flush(lb.name), [a.name, la.name, lb.name]),
    ]
    outcomes: dict[str, list[object]] = {"real": [], "fake": []}
    for tx, destroys in steps:
        for key, port in (("real", real), ("fake", fake)):
            await port.restore(tx)
            for name in destroys:
                outcomes[key].append(await _outcome(port.destroy_owned([name])))
        assert _comparable(await fake.save()) == _comparable(await real.save())
    assert outcomes["fake"] == outcomes["real"]
    assert outcomes["real"] == [(1, 1), (1, 1), (1, 1), (1, 1), None, (1, 1), None, None, None]
    assert await real.save() == {}


async def test_list_set_failures_agree(ns_exec: Executor) -> None:
    """An unknown member and a list in a list fail on the same line, keeping the same sets."""
    real, fake = RealIPSets(ns_exec), FakeIPSets()
    pool, lst, other = _pool("inet", "A"), _list("inet"), _list("inet", "KUBE-DST-M")
    txs = [
        Transaction().fill(pool, ["10.0.0.1"]).fill(lst, [pool.name, "KUBE-POOL-NONE"]),
        Transaction().fill(other, []).add(lst, other.name),
    ]
    for tx in txs:
        outcomes = [await _outcome(port.restore(tx)) for port in (real, fake)]
        assert outcomes[0] == outcomes[1] == (len(tx), 1)
        assert _comparable(await fake.save()) == _comparable(await real.save())


SENDER = """
import socket, sys
for arg in sys.argv[1:]:
    addr, sport, dport = arg.split(",")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", int(sport)))
        sock.sendto(b"x", (addr, int(dport)))
"""
FIRST_SPORT = 20000
COUNTER = re.compile(r"^\[(\d+):\d+\] .*--sport (\d+) ")
LIST_POOLS = (
    "create KUBE-POOL-4 hash:ip timeout 0\nadd KUBE-POOL-4 10.0.0.1\nadd KUBE-POOL-4 10.1.0.1\n"
    "create KUBE-POOL-N hash:net timeout 0\nadd KUBE-POOL-N 10.0.0.0/8\n"
    "add KUBE-POOL-N 10.1.0.0/16 nomatch\n"
    "create inet6:KUBE-POOL-6 hash:ip family inet6 timeout 0\nadd inet6:KUBE-POOL-6 2001:db8::1\n"
    "create KUBE-POOL-PP hash:ip,port timeout 0\nadd KUBE-POOL-PP 10.0.0.1,udp:80\n"
    "create KUBE-SRC-L list:set timeout 0\nadd KUBE-SRC-L KUBE-POOL-N\nadd KUBE-SRC-L KUBE-POOL-4\n"
    "create KUBE-SRC-MIX list:set timeout 0\nadd KUBE-SRC-MIX inet6:KUBE-POOL-6\n"
    "add KUBE-SRC-MIX KUBE-POOL-4\n"
    "create KUBE-SRC-PP list:set timeout 0\nadd KUBE-SRC-PP KUBE-POOL-4\n"
    "add KUBE-SRC-PP KUBE-POOL-PP\n"
    "create KUBE-SRC-E list:set timeout 0\n"
)
# (list, destination address, destination port, --match-set flags, the kernel matches it)
LIST_PROBES = [
    ("KUBE-SRC-L", "10.2.3.4", 1, "dst", True),
    ("KUBE-SRC-L", "10.1.0.1", 1, "dst", True),  # nomatch in the hash:net, then the hash:ip
    ("KUBE-SRC-L", "10.1.0.2", 1, "dst", False),
    ("KUBE-SRC-L", "11.0.0.1", 1, "dst", False),
    ("KUBE-SRC-MIX", "10.0.0.1", 1, "dst", True),  # the inet6 member does not answer
    ("KUBE-SRC-MIX", "10.0.0.2", 1, "dst", False),
    ("KUBE-SRC-MIX", "2001:db8::1", 1, "dst", True),
    ("KUBE-SRC-MIX", "2001:db8::2", 1, "dst", False),
    ("KUBE-SRC-PP", "10.0.0.1", 80, "dst", True),  # the hash:ip answers
    ("KUBE-SRC-PP", "10.0.0.9", 80, "dst", False),
    ("KUBE-SRC-PP", "10.0.0.9", 80, "dst,dst", False),
    ("KUBE-SRC-PP", "10.1.0.1", 81, "dst,dst", True),  # the hash:ip takes the first dimension
    ("KUBE-SRC-PP", "10.0.0.1", 80, "dst,dst", True),
    ("KUBE-SRC-PP", "10.5.0.1", 80, "dst,dst", False),
    ("KUBE-SRC-E", "10.0.0.1", 1, "dst", False),
]


async def _kernel_matches(ns_exec: Executor) -> list[bool]:
    """Send one UDP packet a probe (told apart by source port) past an OUTPUT rule matching the
    probe's list:set; the rule's packet counter says whether the kernel matched it."""
    for family in ("-4", "-6"):
        await ns_exec.run(["ip", family, "route", "add", "default", "dev", "lo"])
    args = []
    for i, (name, addr, dport, flags, _) in enumerate(LIST_PROBES):
        binary = "ip6tables-nft" if ":" in addr else "iptables-nft"
        sport = FIRST_SPORT + i
        rule = ["-p", "udp", "--sport", str(sport), "-m", "set", "--match-set", name, flags]
        await ns_exec.run([binary, "-A", "OUTPUT", *rule, "-j", "ACCEPT"])
        args.append(f"{addr},{sport},{dport}")
    await ns_exec.run([sys.executable, "-c", SENDER, *args])
    counts: dict[int, int] = {}
    for binary in ("iptables-nft-save", "ip6tables-nft-save"):
        saved = (await ns_exec.run([binary, "-c"])).stdout
        for match in filter(None, map(COUNTER.match, saved.splitlines())):
            counts[int(match[2]) - FIRST_SPORT] = int(match[1])
    return [counts[i] > 0 for i in range(len(LIST_PROBES))]


async def test_list_set_membership_agrees(ns_exec: Executor) -> None:
    """Real packets: a list:set matches when a member does, the fake's ``contains`` agrees."""
    real, fake = RealIPSets(ns_exec), FakeIPSets()
    for port in (real, fake):
        await port.restore_unchecked(LIST_POOLS)
    kernel = await _kernel_matches(ns_exec)
    ours = [
        fake.contains(name, member(Packet("10.9.9.9", addr, "udp", 1, dport), flags), flags)
        for name, addr, dport, flags, _ in LIST_PROBES
    ]
    assert ours == kernel == [probe[-1] for probe in LIST_PROBES]
    names = ["KUBE-POOL-N", "KUBE-POOL-4", "inet6:KUBE-POOL-6", "KUBE-POOL-NONE", "10.0.0.1"]
    tests = [(await real.test("KUBE-SRC-L", n), await fake.test("KUBE-SRC-L", n)) for n in names]
    assert tests == [(True, True), (True, True), (False, False), (False, False), (False, False)]


async def test_list_set_save_round_trip(ns_exec: Executor) -> None:
    """``ipset save`` of list:sets parses into the specs we build (family from the name,
    timeout 0, size) and renders back to the same."""
    real = RealIPSets(ns_exec)
    specs = [
        _pool("inet6", "A"),
        _list("inet6"),
        _list("inet"),
        SetSpec("KUBE-DST-S", "list:set", size=16),
        SetSpec("KUBE-DST-T", "list:set", timeout=None),
    ]
    tx = Transaction().fill(specs[0], ["2001:db8::1"]).fill(specs[1], [specs[0].name])
    for spec in specs[2:]:
        tx.fill(spec, [specs[0].name])
    await real.restore(tx)
    text = (await ns_exec.run(["ipset", "save"])).stdout
    assert "create KUBE-DST-S list:set size 16 timeout 0" in text
    state = parse_save(text)
    assert {n: s.spec for n, s in state.items()} == {s.name: s for s in specs}
    assert all(state[s.name].entries == {specs[0].name} for s in specs[1:])
    assert parse_save(render_save(state)) == state == await real.save()

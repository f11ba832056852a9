"""The strict fake and the real ``ipset`` agree: same resulting sets, same success or failure
(and the same failing line and exit status), same membership answers."""

from __future__ import annotations

from collections.abc import Awaitable

import pytest

from kube_router.dataplane.exec import Executor
from kube_router.dataplane.ipset import (
    IPSetRestoreError,
    RealIPSets,
    SetSpec,
    SetState,
    Transaction,
)
from kube_router.dataplane.ipset_fake import FakeIPSets

A, B, C = "KUBE-SRC-A", "KUBE-DST-B", "inet6:KUBE-SRC-C"
CA = f"create {A} hash:ip timeout 0\n"
CN = f"create {A} hash:net timeout 0\n"
C6 = f"create {C} hash:net family inet6 timeout 0\n"


def _adds(name: str, n: int) -> str:
    return "".join(f"add {name} 10.1.{i // 256}.{i % 256}\n" for i in range(1, n + 1))


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
]


def _comparable(sets: dict[str, SetState]) -> dict[str, tuple[object, ...]]:
    """State without hashsize, which the kernel grows as a set fills."""
    return {
        n: (s.spec.type, s.spec.family, s.spec.maxelem, s.spec.timeout, s.entries)
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

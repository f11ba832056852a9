"""The strict ipset fake: what survives a failing restore, what it refuses, membership.

The expectations here are what ipset 7.17 on a 6.x kernel did (tests/privileged checks the fake
against the real tool for the same inputs).
"""

from __future__ import annotations

import pytest

from kube_router.dataplane.ipset import (
    IPSetRestoreError,
    NotOwnedError,
    SetNotFoundError,
    SetSpec,
    Transaction,
)
from kube_router.dataplane.ipset_entry import FakeUnsupportedError
from kube_router.dataplane.ipset_fake import FakeIPSets

CREATE_A = "create a hash:ip timeout 0\n"
CREATE_N = "create n hash:net timeout 0\n"


def _run(
    text: str, exist: bool = True, fake: FakeIPSets | None = None
) -> tuple[int | str | None, dict[str, frozenset[str]]]:
    """(failing line, None on success, "noline" for a failure without line) and entries."""
    fake = fake or FakeIPSets()
    outcome: int | str | None = None
    try:
        fake.apply(text, exist)
    except IPSetRestoreError as err:
        outcome = err.line if err.line is not None else "noline"
    return outcome, {name: st.entries for name, st in fake.state().items()}


@pytest.mark.parametrize(
    ("text", "line", "a"),
    [
        # a parse error drops the unsent add lines before it (same set, same message)
        (CREATE_A + "add a 10.0.0.1\nadd a 10.0.0.2\nadd a 300.0.0.1\n", 4, set()),
        # ... and an add to a missing set does too
        (CREATE_A + "add a 10.0.0.1\nadd b 10.0.0.9\n", 3, set()),
        # a create line sends the message before it
        (
            CREATE_A + "add a 10.0.0.1\ncreate b hash:ip timeout 0\nadd a 10.0.0.2\nadd a x:y\n",
            5,
            {"10.0.0.1"},
        ),
        # so does a switch from add to del (the del message is then lost)
        (
            CREATE_A + "add a 10.0.0.1\nadd a 10.0.0.5\ndel a 10.0.0.1\nadd a 300.1.1.1\n",
            5,
            {"10.0.0.1", "10.0.0.5"},
        ),
        # COMMIT sends it too
        (CREATE_A + "add a 10.0.0.1\nCOMMIT\nadd a 300.1.1.1\n", 4, {"10.0.0.1"}),
        # a CIDR or range in an IPv4 hash:ip adds every address
        (
            CREATE_A + "add a 10.0.0.0/30\nadd a 10.0.1.5/31\nadd a 10.0.2.1-10.0.2.2\n",
            None,
            {
                "10.0.0.0",
                "10.0.0.1",
                "10.0.0.2",
                "10.0.0.3",
                "10.0.1.4",
                "10.0.1.5",
                "10.0.2.1",
                "10.0.2.2",
            },
        ),
        (CREATE_A + "add a 1.1.1.1\nadd a 0.0.0.0/31\n", 3, {"1.1.1.1"}),  # null element: kernel
        (CREATE_A + "add a 1.1.1.1\nadd a 2001:db8::1\n", 3, set()),
        (CREATE_A + "add a 1.1.1.1\nadd a 1.1.1.2 nomatch\n", "noline", set()),
        (CREATE_A + "del a 1.2.3.4\n", None, set()),  # -exist: deleting a missing element is fine
        (
            "create a hash:ip timeout 0 maxelem 3\nadd a 1.0.0.1\nadd a 1.0.0.2\nadd a 1.0.0.3\n"
            "add a 1.0.0.1\nadd a 1.0.0.4\n",
            6,
            {"1.0.0.1", "1.0.0.2", "1.0.0.3"},
        ),
        (
            "create a hash:ip timeout 0 maxelem 10\nadd a 10.0.0.0/28\n",
            2,
            {f"10.0.0.{i}" for i in range(1, 10)} | {"10.0.0.0"},
        ),
        ("create a hash:ip\nadd a 1.1.1.1 timeout 0\n", 2, set()),
        ("create abcdefghijklmnopqrstuvwxyz012345 hash:ip\n", 1, None),
        ("foo a\n", "noline", None),
    ],
)
def test_restore_is_not_atomic(text: str, line: int | str | None, a: set[str] | None) -> None:
    outcome, sets = _run(text)
    assert outcome == line
    assert sets.get("a") == (None if a is None else frozenset(a))


@pytest.mark.parametrize(
    ("text", "line", "n"),
    [
        (CREATE_N + "add n 1.1.1.1\nadd n 0.0.0.0/0\n", 3, {"1.1.1.1"}),  # /0: kernel refuses
        (CREATE_N + "add n 0.0.0.0/1\nadd n 128.0.0.0/1\n", None, {"0.0.0.0/1", "128.0.0.0/1"}),
        (
            CREATE_N + "add n 10.0.0.1/24\nadd n 10.0.0.5/32\nadd n 10.1.0.0/16 nomatch\n",
            None,
            {"10.0.0.0/24", "10.0.0.5", "10.1.0.0/16 nomatch"},
        ),
        (CREATE_N + "add n 10.0.0.0-10.0.0.6\n", None, {"10.0.0.0/30", "10.0.0.4/31", "10.0.0.6"}),
        (CREATE_N + "add n 10.0.0.0/8\nadd n 10.0.0.0/8 nomatch\n", None, {"10.0.0.0/8 nomatch"}),
        (CREATE_N + "add n 10.0.0.0/8 nomatch\nadd n 10.0.0.0/8\n", None, {"10.0.0.0/8"}),
        (CREATE_N + "add n 1.0.0.0/8\ndel n 1.0.0.0/8 nomatch\n", "noline", set()),
        (CREATE_N + "add n 1.0.0.0/33\n", 2, set()),
    ],
)
def test_hash_net(text: str, line: int | str | None, n: set[str]) -> None:
    outcome, sets = _run(text)
    assert (outcome, sets["n"]) == (line, frozenset(n))


def test_without_exist() -> None:
    # a kernel error keeps the elements of the message before the failing one
    text = CREATE_A + "add a 10.0.0.1\nadd a 10.0.0.2\nadd a 10.0.0.1\nadd a 10.0.0.3\n"
    assert _run(text, exist=False) == (4, {"a": frozenset({"10.0.0.1", "10.0.0.2"})})
    assert _run(CREATE_N + "add n 10.0.0.0/8\nadd n 10.0.0.0/8 nomatch\n", exist=False)[0] == 3
    assert _run(CREATE_A + "del a 1.2.3.4\n", exist=False)[0] == 2
    assert _run("destroy zz\n", exist=False)[0] == 1
    assert _run(CREATE_A + CREATE_A, exist=False)[0] == 2


@pytest.mark.parametrize(
    ("second", "line"),
    [
        ("create a hash:net timeout 0", 2),  # another type: refused even with -exist
        ("create a hash:ip timeout 0 family inet6", None),  # another family: silently kept!
        ("create a hash:ip timeout 0 maxelem 100", 2),
        ("create a hash:ip timeout 0 hashsize 64", None),
        ("create a hash:ip", 2),  # without timeout support
        ("create b hash:foo", 2),
        ("create b hash:ip family inet7", 2),
        ("create b hash:ip bogus 5", "noline"),
        ("flush zz", 2),
        ("destroy zz", None),
        ("swap zz a", 2),
        ("swap a zz", 2),
        ("swap a a", None),
    ],
)
def test_set_commands(second: str, line: int | str | None) -> None:
    outcome, sets = _run(CREATE_A + second + "\n")
    assert outcome == line
    assert "a" in sets


@pytest.mark.parametrize(
    ("b", "ok"),
    [
        ("hash:net timeout 0", False),
        ("hash:ip family inet6 timeout 0", False),
        ("hash:ip maxelem 5 hashsize 64", True),  # swap moves the options along
    ],
)
def test_swap_types(b: str, ok: bool) -> None:
    fake = FakeIPSets()
    outcome, _ = _run(CREATE_A + "add a 1.1.1.1\n" + f"create b {b}\nswap a b\n", fake=fake)
    assert (outcome is None) == ok
    if ok:
        state = fake.state()
        assert state["b"].entries == {"1.1.1.1"} and state["a"].spec.maxelem == 5


@pytest.mark.parametrize(
    ("text", "committed"),
    [
        # 4096-byte messages: 167 IPv4 elements with a one-letter set name ...
        ("create a hash:ip timeout 0 maxelem 100000\n{adds}add a 300.0.0.1\n", 835),
        # ... 166 with a 31-character name, 111 IPv6, 100 ip,port, 125 with a prefix length
        (
            "create abcdefghijklmnopqrstuvwxyz01234 hash:ip timeout 0\n{adds}"
            "add abcdefghijklmnopqrstuvwxyz01234 300.0.0.1\n",
            996,
        ),
        ("create a hash:ip family inet6 timeout 0\n{adds}add a 300.0.0.1\n", 999),
        ("create a hash:ip,port timeout 0\n{adds}add a 300.0.0.1,tcp:80\n", 900),
        ("create a hash:net timeout 0\n{adds}add a 300.0.0.0/24\n", 875),
    ],
)
def test_message_boundaries(text: str, committed: int) -> None:
    name = text.split()[1]
    family = "inet6" if "inet6" in text else "inet"
    suffix = ",tcp:80" if "ip,port" in text else "/24" if "hash:net" in text else ""
    lines = []
    for i in range(1, 1001):
        addr = f"2001:db8::{i:x}" if family == "inet6" else f"10.{i // 256}.{i % 256}.0"
        if suffix != "/24" and family == "inet":
            addr = f"10.1.{i // 256}.{i % 256}"
        lines.append(f"add {name} {addr}{suffix}\n")
    outcome, sets = _run(text.format(adds="".join(lines)))
    assert outcome == 1002
    assert len(sets[name]) == committed


async def test_replace_and_ownership() -> None:
    fake = FakeIPSets()
    fake.apply("create cali-foo hash:ip\nadd cali-foo 1.1.1.1\n")
    spec = SetSpec("KUBE-SRC-X", "hash:net")
    await fake.restore(Transaction().replace(spec, ["10.0.0.0/8", "10.1.0.0/16 nomatch"]))
    await fake.restore(Transaction().replace(spec, ["10.2.0.0/16"]))
    assert (await fake.save()) == {"KUBE-SRC-X": fake.state()["KUBE-SRC-X"]}
    assert fake.state()["KUBE-SRC-X"].entries == {"10.2.0.0/16"}
    with pytest.raises(NotOwnedError):
        await fake.destroy_owned(["KUBE-SRC-X", "cali-foo"])
    with pytest.raises(NotOwnedError):
        await fake.restore(Transaction().flush("cali-foo"))
    await fake.destroy_owned(["KUBE-SRC-X", "KUBE-DST-MISSING"])
    assert set(fake.state()) == {"cali-foo"}


def test_referenced_set_cannot_be_destroyed() -> None:
    fake = FakeIPSets(is_referenced=lambda name: name == "X")
    fake.apply("create X hash:ip timeout 0\ncreate Y hash:ip timeout 0\n")
    with pytest.raises(IPSetRestoreError, match="in use by a kernel component") as info:
        fake.apply("add X 1.1.1.1\ndestroy X\n")
    assert info.value.line == 2
    assert fake.state()["X"].entries == {"1.1.1.1"}  # the add was sent before the destroy
    fake.apply("swap X Y\ndestroy Y\n")  # references follow the name
    with pytest.raises(IPSetRestoreError):
        fake.apply("destroy\n")  # destroy-all refuses when any set is referenced
    assert set(fake.state()) == {"X"}


@pytest.mark.parametrize(
    ("entries", "value", "member"),
    [
        (["10.0.0.0/8", "10.1.0.0/16 nomatch"], "10.2.3.4", True),
        (["10.0.0.0/8", "10.1.0.0/16 nomatch"], "10.1.3.4", False),
        (["10.0.0.0/8", "10.1.0.0/16 nomatch", "10.1.2.0/24"], "10.1.2.3", True),
        (["10.0.0.0/8 nomatch", "10.1.2.3"], "10.1.2.3", True),
        (["10.0.0.0/8 nomatch"], "10.1.2.3", False),
        (["0.0.0.0/1", "128.0.0.0/1"], "200.1.1.1", True),
        (["0.0.0.0/1"], "200.1.1.1", False),
    ],
)
def test_contains_hash_net(entries: list[str], value: str, member: bool) -> None:
    fake = FakeIPSets()
    fake.apply(Transaction().replace(SetSpec("KUBE-SRC-N", "hash:net"), entries).render())
    assert fake.contains("KUBE-SRC-N", value) is member


def test_contains_other_types() -> None:
    fake = FakeIPSets()
    tx = Transaction().replace(SetSpec("kube-router-svip", "hash:ip"), ["10.96.0.1"])
    tx.replace(SetSpec("kube-router-svip-prt", "hash:ip,port"), ["10.96.0.1,tcp:443"])
    fake.apply(tx.render())
    assert fake.contains("kube-router-svip", "10.96.0.1", "dst")
    assert not fake.contains("kube-router-svip", "10.96.0.2")
    assert fake.contains("kube-router-svip-prt", "10.96.0.1,tcp:443", "dst,dst")
    assert not fake.contains("kube-router-svip-prt", "10.96.0.1,udp:443")
    with pytest.raises(SetNotFoundError):
        fake.contains("nope", "1.1.1.1")
    with pytest.raises(ValueError, match="direction"):
        fake.contains("kube-router-svip", "1.1.1.1", "sideways")


@pytest.mark.parametrize(
    "text",
    [
        CREATE_A + "add a localhost.localdomain\n",
        CREATE_A + "add a 010.0.0.1\n",
        CREATE_A + "add a 1.2.3\n",
        "create a bitmap:port range 1-10\n",
        "create a hash:ip counters\n",
    ],
)
def test_unmodelled_input_is_refused_loudly(text: str) -> None:
    with pytest.raises(FakeUnsupportedError):
        FakeIPSets().apply(text)

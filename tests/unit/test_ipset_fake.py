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
LISTS = "create P hash:ip timeout 0\ncreate Q hash:ip timeout 0\ncreate L list:set timeout 0\n"
LONG = "abcdefghijklmnopqrstuvwxyz0123456"  # 33 characters


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
        "create a list:set counters\n",
        LISTS + "add L P\nadd L Q before P\n",
    ],
)
def test_unmodelled_input_is_refused_loudly(text: str) -> None:
    with pytest.raises(FakeUnsupportedError):
        FakeIPSets().apply(text)


# --- list:set ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "exist", "line", "members"),
    [
        (LISTS + "add L P\nadd L Q\n", True, None, {"P", "Q"}),
        # the kernel refuses these when the message is sent: the elements before it stay
        (LISTS + "add L P\nadd L zz\n", True, 5, {"P"}),  # no such set
        (LISTS + "create M list:set\nadd L P\nadd L M\n", True, 6, {"P"}),  # a list in a list
        (LISTS + "add L L\n", True, 4, set()),
        (LISTS + "create M list:set\nadd L P\ndel L M\n", True, 6, {"P"}),  # del checks it too
        (LISTS + "add L P\ndel L zz\n", True, 5, {"P"}),  # even with -exist
        # the tool refuses these: the unsent message is lost
        (LISTS + f"add L P\nadd L {LONG}\n", True, 5, set()),
        (LISTS + "add L P\nadd L Q nomatch\n", True, "noline", set()),
        # -exist: re-adding is a no-op, deleting a non-member is fine
        (LISTS + "add L P\nadd L P\n", True, None, {"P"}),
        (LISTS + "add L P\nadd L P\n", False, 5, {"P"}),
        (LISTS + "add L P\ndel L Q\n", True, None, {"P"}),
        (LISTS + "add L P\ndel L Q\n", False, 5, {"P"}),
        (LISTS + "add L P\nadd L Q\ndel L P\n", True, None, {"Q"}),
        (LISTS + "add L P timeout 0\n", True, None, {"P"}),
        ("create P hash:ip\ncreate L list:set\nadd L P timeout 0\n", True, 3, set()),
        # size is no limit
        (
            LISTS.replace("list:set timeout 0", "list:set size 4")
            + "".join(f"create S{i} hash:ip\nadd L S{i}\n" for i in range(5)),
            True,
            None,
            {f"S{i}" for i in range(5)},
        ),
    ],
)
def test_list_set_restore(
    text: str, exist: bool, line: int | str | None, members: set[str]
) -> None:
    outcome, sets = _run(text, exist)
    assert (outcome, sets["L"]) == (line, frozenset(members))


@pytest.mark.parametrize(
    ("second", "line", "size"),
    [
        ("create L list:set timeout 0", None, 8),  # -exist: the same list
        ("create L list:set", 2, 8),  # without timeout support
        ("create L list:set size 16 timeout 0", 2, 8),
        ("create L list:set size 3 timeout 0", 2, 8),  # raised to 4, not 8
        ("create L hash:ip timeout 0", 2, 8),
        ("create M list:set size 2", None, 8),
        ("create M list:set family inet", "noline", 8),  # ipset refuses these for list:set
        ("create M list:set hashsize 64", "noline", 8),
        ("create M list:set maxelem 64", "noline", 8),
        ("create M list:set bucketsize 12", "noline", 8),
        ("create M list:set size", "noline", 8),
        ("create M list:set size x", 2, 8),
        ("create M hash:ip size 8", "noline", 8),  # and size for hash types
    ],
)
def test_list_set_create(second: str, line: int | str | None, size: int) -> None:
    fake = FakeIPSets()
    outcome, _ = _run("create L list:set timeout 0\n" + second + "\n", fake=fake)
    assert outcome == line
    state = fake.state()
    assert state["L"].spec == SetSpec("L", "list:set", size=size)
    if "M" in state:
        assert state["M"].spec.size == 4  # the kernel's minimum


def _destroys(fake: FakeIPSets, names: str) -> dict[str, bool]:
    """Which of ``names`` could be destroyed now (tried one by one, each put back)."""
    out = {}
    for name in names.split():
        saved = {n: s for n, s in fake.sets.items()}
        refs = dict(fake.refs)
        try:
            fake.apply(f"destroy {name}\n")
            out[name] = True
        except IPSetRestoreError as err:
            assert err.reason.endswith("in use by a kernel component")
            out[name] = False
        fake.sets.clear()
        fake.sets.update(saved)
        fake.refs = refs
    return out


BOTH_IN = LISTS + "create M list:set timeout 0\nadd L P\nadd M Q\n"


@pytest.mark.parametrize(
    ("text", "can_destroy"),
    [
        (LISTS + "add L P\n", "Q L"),
        (LISTS + "add L P\nadd L Q\n", "L"),
        (LISTS + "add L P\ndel L P\n", "P Q L"),  # deleting the member releases it
        (LISTS + "add L P\nflush L\n", "P Q L"),  # so does flushing the list
        (LISTS + "add L P\nflush\n", "P Q L"),  # or every set
        (LISTS + "add L P\ndestroy L\n", "P Q"),  # or destroying the list
        (LISTS + "add L P\nadd L P\n", "Q L"),  # a re-add takes no second reference
        (BOTH_IN + "swap L M\n", "L M"),  # references stay with the member names
        (BOTH_IN + "swap L M\ndel L Q\n", "Q L M"),  # L now holds Q
        # a pool replaced through a TMP- set keeps its reference; the TMP- set has none
        (LISTS + "add L P\ncreate T hash:ip timeout 0\nswap T P\n", "Q L T"),
        (LISTS + "add L P\ncreate T list:set timeout 0\nadd T Q\nswap T L\ndestroy T\n", "P L"),
    ],
)
def test_list_set_references(text: str, can_destroy: str) -> None:
    fake = FakeIPSets()
    fake.apply(text)
    names = " ".join(sorted(fake.sets))
    assert _destroys(fake, names) == {n: n in can_destroy.split() for n in names.split()}


def test_list_set_destroy_all_and_swap() -> None:
    fake = FakeIPSets()
    fake.apply(LISTS + "add L P\nadd P 1.1.1.1\n")
    with pytest.raises(IPSetRestoreError, match="in use") as info:
        fake.apply("destroy Q\ndestroy\n")  # every set at once: refused, nothing destroyed
    assert info.value.line == 2 and set(fake.state()) == {"P", "L"}
    with pytest.raises(IPSetRestoreError, match="type does not match"):
        fake.apply("swap P L\n")
    fake.apply("create T hash:ip timeout 0\nadd T 2.2.2.2\nswap T P\ndestroy T\n")
    assert fake.state()["P"].entries == {"2.2.2.2"} and fake.state()["L"].entries == {"P"}
    fake.apply("flush\ndestroy\n")
    assert fake.state() == {} and fake.refs == {}


async def test_list_set_transactions() -> None:
    fake = FakeIPSets()
    lst = SetSpec("inet6:KUBE-SRC-L", "list:set", "inet6")
    pools = [SetSpec(f"inet6:KUBE-POOL-{i}", "hash:ip", "inet6") for i in "AB"]
    tx = Transaction().replace(pools[0], ["2001:db8::1"]).replace(pools[1], ["2001:db8::2"])
    await fake.restore(tx.replace(lst, [pools[0].name]))
    await fake.restore(Transaction().replace(lst, [pools[1].name]).destroy(pools[0].name))
    state = await fake.save()
    assert set(state) == {lst.name, pools[1].name}
    assert state[lst.name].spec == lst and state[lst.name].entries == {pools[1].name}
    assert fake.refs == {pools[1].name: 1}
    with pytest.raises(IPSetRestoreError, match="in use"):
        await fake.destroy_owned([pools[1].name])
    await fake.destroy_owned([lst.name, pools[1].name])
    assert fake.state() == {}


POOLS = (
    "create P4 hash:ip timeout 0\nadd P4 10.0.0.1\nadd P4 10.1.0.1\n"
    "create N hash:net timeout 0\nadd N 10.0.0.0/8\nadd N 10.1.0.0/16 nomatch\n"
    "create P6 hash:ip family inet6 timeout 0\nadd P6 2001:db8::1\n"
    "create PP hash:ip,port timeout 0\nadd PP 10.0.0.1,tcp:80\n"
    "create L list:set\nadd L N\nadd L P4\n"
    "create MIX list:set\nadd MIX P6\nadd MIX P4\n"
    "create LP list:set\nadd LP PP\n"
    "create LPP list:set\nadd LPP P4\nadd LPP PP\n"
    "create EMPTY list:set\n"
)


@pytest.mark.parametrize(
    ("name", "value", "direction", "member"),
    [
        ("L", "10.2.3.4", "src", True),  # N matches
        ("L", "10.1.0.1", "src", True),  # N says nomatch, so P4 is asked
        ("L", "10.1.0.2", "src", False),
        ("L", "11.0.0.1", "dst", False),
        ("MIX", "10.0.0.1", "src", True),  # P6 (inet6) does not answer an IPv4 address
        ("MIX", "2001:db8::1", "src", True),
        ("MIX", "2001:db8::2", "src", False),
        ("LP", "10.0.0.1,tcp:80", "dst,dst", True),
        ("LP", "10.0.0.1,tcp:81", "dst,dst", False),
        ("LP", "10.0.0.1", "dst", False),  # fewer flags than PP's dimensions: no match
        ("LPP", "10.1.0.1,tcp:81", "src,dst", True),  # P4 takes the first dimension
        ("LPP", "10.0.0.9,tcp:80", "src,dst", False),
        ("EMPTY", "10.0.0.1", "src", False),
    ],
)
def test_list_set_contains(name: str, value: str, direction: str, member: bool) -> None:
    fake = FakeIPSets()
    fake.apply(POOLS)
    assert fake.contains(name, value, direction) is member


async def test_list_set_test_asks_for_member_names() -> None:
    fake = FakeIPSets()
    fake.apply(POOLS)
    answers = [await fake.test("L", v) for v in ("N", "P4", "P6", "nosuch", "10.0.0.1")]
    assert answers == [True, True, False, False, False]
    with pytest.raises(ValueError, match="direction"):
        fake.contains("L", "10.0.0.1", "sideways")


@pytest.mark.parametrize(
    ("width", "count", "committed"),
    [(5, 1000, 835), (30, 300, 249)],  # 167 and 83 members a message, as ipset 7.17 sends
)
def test_list_set_message_boundaries(width: int, count: int, committed: int) -> None:
    names = [f"p{i:0{width - 1}d}" for i in range(1, count + 1)]
    text = "create big list:set size 100000\n" + "".join(f"create {n} hash:ip\n" for n in names)
    fake = FakeIPSets()
    fake.apply(text)
    outcome, sets = _run("".join(f"add big {n}\n" for n in names) + f"add big {LONG}\n", fake=fake)
    assert (outcome, len(sets["big"])) == (count + 1, committed)

"""ipset model: names, entry normalisation, the save parser and restore transactions."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kube_router.dataplane.ipset import (
    LIST_SET,
    OWNED_PREFIXES,
    InvalidEntryError,
    InvalidNameError,
    IPSetParseError,
    SetSpec,
    SetState,
    Transaction,
    family_name,
    list_family,
    normalize_entry,
    owned,
    parse_save,
    render_save,
    tmp_name,
)

NET, IP, IPPORT = "hash:net", "hash:ip", "hash:ip,port"
POOL = "KUBE-POOL-ABCDEFGHIJKLMNO"
POOL6 = f"inet6:{POOL}"


@pytest.mark.parametrize(
    ("set_type", "family", "entry", "canonical"),
    [
        (IP, "inet", "10.0.0.1", "10.0.0.1"),
        (IP, "inet", "10.0.0.1/32", "10.0.0.1"),
        (IP, "inet6", "2001:0db8:0:0::1", "2001:db8::1"),
        (IP, "inet6", "::ffff:1.2.3.4", "::ffff:1.2.3.4"),
        (NET, "inet", "10.0.0.7/24", "10.0.0.0/24"),
        (NET, "inet", "10.0.0.0/24  nomatch", "10.0.0.0/24 nomatch"),
        (NET, "inet", "10.0.0.5/32", "10.0.0.5"),
        (NET, "inet", "0.0.0.0/1", "0.0.0.0/1"),
        (NET, "inet6", "2001:db8:0::1/64", "2001:db8::/64"),
        (IPPORT, "inet", "10.0.0.1,tcp:80", "10.0.0.1,tcp:80"),
        (IPPORT, "inet", "10.0.0.1,80", "10.0.0.1,tcp:80"),
        (IPPORT, "inet", "10.0.0.1,udp:53", "10.0.0.1,udp:53"),
        (IPPORT, "inet", "10.0.0.1,sctp:9", "10.0.0.1,132:9"),
        (IPPORT, "inet", "10.0.0.1,132:9", "10.0.0.1,132:9"),
        (IPPORT, "inet6", "[2001:db8::1],tcp:443", "2001:db8::1,tcp:443"),
        (LIST_SET, "inet", POOL, POOL),  # a list:set entry is a set name, kept as written
        (LIST_SET, "inet6", POOL6, POOL6),
        (LIST_SET, "inet", POOL6, POOL6),  # the kernel takes any family's set as a member
        (LIST_SET, "inet", "a" * 31, "a" * 31),
    ],
)
def test_normalize(set_type: str, family: str, entry: str, canonical: str) -> None:
    assert normalize_entry(set_type, family, entry) == canonical


@pytest.mark.parametrize(
    ("set_type", "family", "entry"),
    [
        (IP, "inet", "2001:db8::1"),  # IPv6 in an inet set
        (IP, "inet6", "10.0.0.1"),
        (IP, "inet", "10.0.0.0/30"),  # ipset would add 4 addresses
        (IP, "inet", "0.0.0.0"),  # null element
        (IP, "inet", "10.0.0.1 nomatch"),
        (NET, "inet", "0.0.0.0/0"),  # the kernel refuses /0: split it
        (NET, "inet6", "::/0"),
        (NET, "inet", "10.0.0.0/33"),
        (NET, "inet", "10.0.0.0-10.0.0.6"),  # several blocks
        (IPPORT, "inet", "10.0.0.1"),
        (IPPORT, "inet", "10.0.0.1,tcp:70000"),
        (IPPORT, "inet", "10.0.0.1,tcp:80-81"),
        (IPPORT, "inet", "10.0.0.1,47:5"),
        (IPPORT, "inet", "0.0.0.0,tcp:5"),
        (IP, "inet", "300.1.1.1"),
        (IP, "inet", "010.0.0.1"),
        (LIST_SET, "inet", ""),
        (LIST_SET, "inet", "a" * 32),  # longer than a set name can be
        (LIST_SET, "inet", f"{POOL} nomatch"),  # no nomatch on list:set members
        (LIST_SET, "inet", f"{POOL} before X"),
        (LIST_SET, "inet6", "a\tb"),
    ],
)
def test_normalize_refuses(set_type: str, family: str, entry: str) -> None:
    with pytest.raises(InvalidEntryError):
        normalize_entry(set_type, family, entry)


def test_names() -> None:
    assert family_name("kube-router-svip", "inet") == "kube-router-svip"
    assert family_name("kube-router-svip", "inet6") == "inet6:kube-router-svip"
    assert family_name("inet6:x", "inet6") == "inet6:x"
    with pytest.raises(InvalidNameError):
        family_name("KUBE-SRC-ABCDEFGHIJKLMNOPQRSTUV", "inet6")  # 32 chars with the prefix
    with pytest.raises(InvalidNameError):
        SetSpec("a b", IP)
    assert owned("inet6:KUBE-DST-X") and owned("TMP-ABC") and owned("kube-router-local-ips")
    assert not owned("cali40-foo") and not owned("inet6:other")


def test_tmp_name_is_upstreams() -> None:
    # TMP- + base32(sha1("tmp:" + options))[:16], options as upstream's RefreshSet spells them
    spec = SetSpec("kube-router-svip", IP)
    assert spec.options() == "hash:ip timeout 0"
    assert SetSpec("inet6:x", IP, "inet6").options() == "hash:ip timeout 0 family inet6"
    name = tmp_name(spec)
    assert name.startswith("TMP-") and len(name) == 20
    assert name == tmp_name(SetSpec("KUBE-DST-OTHER", IP))  # one tmp set per option string
    assert name != tmp_name(SetSpec("KUBE-DST-OTHER", NET))


@pytest.mark.parametrize(
    ("spec", "options"),
    [
        (SetSpec("KUBE-SRC-L", LIST_SET), "list:set timeout 0"),
        (SetSpec("inet6:KUBE-SRC-L", LIST_SET, "inet6"), "list:set timeout 0"),  # no family
        (SetSpec("KUBE-SRC-L", LIST_SET, size=16), "list:set timeout 0 size 16"),
        (SetSpec("KUBE-SRC-L", LIST_SET, timeout=None, size=4), "list:set size 4"),
        (SetSpec("KUBE-SRC-L", LIST_SET, size=8), "list:set timeout 0"),  # 8 is the default
    ],
)
def test_list_set_options(spec: SetSpec, options: str) -> None:
    assert spec.options() == options


@pytest.mark.parametrize(
    ("name", "set_type", "family", "options", "match"),
    [
        ("KUBE-SRC-L", LIST_SET, "inet", {"maxelem": 100}, "no maxelem or hashsize"),
        ("KUBE-SRC-L", LIST_SET, "inet", {"hashsize": 64}, "no maxelem or hashsize"),
        ("KUBE-SRC-L", LIST_SET, "inet", {"size": 3}, "would make it 4"),
        ("inet6:KUBE-SRC-L", LIST_SET, "inet", {}, "family is its name's"),
        ("KUBE-SRC-L", LIST_SET, "inet6", {}, "family is its name's"),
        ("KUBE-SRC-H", IP, "inet", {"size": 16}, "only a list:set has a size"),
    ],
)
def test_list_set_spec_refuses(
    name: str, set_type: str, family: str, options: dict[str, int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        SetSpec(name, set_type, family, **options)


def test_list_set_family_and_tmp_names() -> None:
    assert (list_family("inet6:KUBE-SRC-L"), list_family("KUBE-SRC-L")) == ("inet6", "inet")
    v4, v6 = SetSpec("KUBE-SRC-L", LIST_SET), SetSpec("inet6:KUBE-SRC-L", LIST_SET, "inet6")
    assert tmp_name(v4) != tmp_name(SetSpec("KUBE-SRC-L", IP))  # options differ
    assert tmp_name(v4) == tmp_name(v6)  # no family in the options: one TMP- list for both
    assert tmp_name(v4) != tmp_name(SetSpec("KUBE-SRC-L", LIST_SET, size=16))
    # renaming takes the family of the new name (TMP- names have no inet6: prefix)
    assert v6.renamed("TMP-X") == SetSpec("TMP-X", LIST_SET)
    assert v4.renamed("inet6:KUBE-DST-L") == SetSpec("inet6:KUBE-DST-L", LIST_SET, "inet6")


def test_parse_save_strips_initval_and_filters() -> None:
    text = (
        "create KUBE-DST-A hash:ip family inet hashsize 1024 maxelem 65536 timeout 0 "
        "bucketsize 12 initval 0x95405863\n"
        "add KUBE-DST-A 10.0.0.1 timeout 0\n"
        "create cali-x hash:net family inet hashsize 1024 maxelem 65536\n"
        "add cali-x 10.0.0.0/8\n"
        "create inet6:kube-router-svip-prt hash:ip,port family inet6 hashsize 64 "
        "maxelem 100 timeout 0\n"
        "add inet6:kube-router-svip-prt 2001:db8::1,sctp:80 timeout 0\n"
        "create KUBE-SRC-B hash:net family inet hashsize 1024 maxelem 65536 timeout 0\n"
        "add KUBE-SRC-B 10.1.0.0/16 timeout 0 nomatch\n"
    )
    sets = parse_save(text)
    assert set(sets) == {"KUBE-DST-A", "inet6:kube-router-svip-prt", "KUBE-SRC-B"}
    assert sets["KUBE-DST-A"] == SetState(SetSpec("KUBE-DST-A", IP), frozenset({"10.0.0.1"}))
    prt = sets["inet6:kube-router-svip-prt"]
    assert (prt.spec.family, prt.spec.maxelem, prt.spec.hashsize) == ("inet6", 100, 64)
    assert prt.entries == {"2001:db8::1,132:80"}
    assert sets["KUBE-SRC-B"].entries == {"10.1.0.0/16 nomatch"}
    assert "cali-x" in parse_save(text, prefixes=None)


# what ipset 7.17 printed for these list:sets
LIST_SAVE = (
    f"create {POOL} hash:ip family inet hashsize 1024 maxelem 65536 timeout 0 bucketsize 12 "
    "initval 0x65536b73\n"
    f"add {POOL} 10.0.0.1 timeout 0\n"
    f"create {POOL6} hash:ip family inet6 hashsize 1024 maxelem 65536 timeout 0 bucketsize 12 "
    "initval 0x65536b74\n"
    "create KUBE-SRC-L list:set size 8 timeout 0\n"
    f"add KUBE-SRC-L {POOL} timeout 0\n"
    "create inet6:KUBE-SRC-L list:set size 8 timeout 0\n"
    f"add inet6:KUBE-SRC-L {POOL6} timeout 0\n"
    "create KUBE-DST-L list:set size 16\n"
    f"add KUBE-DST-L {POOL}\n"
    f"add KUBE-DST-L {POOL6}\n"
    "create cali-l list:set size 4\n"
)


@pytest.mark.parametrize(
    ("name", "spec", "entries"),
    [
        (POOL, SetSpec(POOL, IP), {"10.0.0.1"}),
        (POOL6, SetSpec(POOL6, IP, "inet6"), set()),
        ("KUBE-SRC-L", SetSpec("KUBE-SRC-L", LIST_SET), {POOL}),
        ("inet6:KUBE-SRC-L", SetSpec("inet6:KUBE-SRC-L", LIST_SET, "inet6"), {POOL6}),
        ("KUBE-DST-L", SetSpec("KUBE-DST-L", LIST_SET, timeout=None, size=16), {POOL, POOL6}),
    ],
)
def test_parse_save_list_sets(name: str, spec: SetSpec, entries: set[str]) -> None:
    sets = parse_save(LIST_SAVE)
    assert sets[name] == SetState(spec, frozenset(entries))
    assert "cali-l" not in sets


def test_list_save_round_trip() -> None:
    sets = parse_save(LIST_SAVE)
    assert parse_save(render_save(sets)) == sets
    assert "create KUBE-SRC-L list:set size 8 timeout 0\n" in render_save(sets)


@pytest.mark.parametrize("bad", ["bogus line here", "add KUBE-DST-A 1.1.1.1", "create KUBE-DST-A"])
def test_parse_save_errors(bad: str) -> None:
    with pytest.raises(IPSetParseError):
        parse_save(bad + "\n")


def _entries(set_type: str, family: str) -> st.SearchStrategy[str]:
    bits = 32 if family == "inet" else 128
    addr = st.integers(1, 2**bits - 1)
    make = ipaddress.IPv4Address if family == "inet" else ipaddress.IPv6Address
    if set_type == LIST_SET:
        return st.sampled_from([POOL, POOL6, "KUBE-POOL-0", "kube-router-x"])
    if set_type == IP:
        return addr.map(lambda a: normalize_entry(IP, family, str(make(a))))
    if set_type == NET:
        net = st.tuples(addr, st.integers(1, bits), st.booleans())
        return net.map(
            lambda t: normalize_entry(
                NET, family, f"{make(t[0])}/{t[1]}" + (" nomatch" if t[2] else "")
            )
        )
    port = st.tuples(addr, st.sampled_from(["tcp", "udp", "sctp"]), st.integers(0, 65535))
    return port.map(lambda t: normalize_entry(IPPORT, family, f"{make(t[0])},{t[1]}:{t[2]}"))


@st.composite
def _states(draw: st.DrawFn) -> dict[str, SetState]:
    out: dict[str, SetState] = {}
    for i in range(draw(st.integers(0, 4))):
        set_type = draw(st.sampled_from([IP, NET, IPPORT, LIST_SET]))
        family = draw(st.sampled_from(["inet", "inet6"]))
        name = family_name(f"{draw(st.sampled_from(OWNED_PREFIXES))}{i}", family)
        if set_type == LIST_SET:
            timeout = draw(st.sampled_from([0, None]))
            spec = SetSpec(name, LIST_SET, family, timeout=timeout, size=draw(st.integers(4, 99)))
        else:
            spec = SetSpec(
                name,
                set_type,
                family,
                draw(st.sampled_from([65536, 1000])),
                draw(st.sampled_from([64, 1024, 32768])),
            )
        out[name] = SetState(spec, frozenset(draw(st.lists(_entries(set_type, family)))))
    return out


@given(_states(), st.integers(0, 2**32 - 1))
def test_save_round_trip(states: dict[str, SetState], initval: int) -> None:
    text = render_save(states)
    # what the kernel adds: bucketsize/initval on create lines, timeouts on entries
    noisy = []
    for line in text.splitlines():
        if line.startswith("create"):
            noisy.append(f"{line} bucketsize 12 initval {initval:#x}")
        elif line.endswith(" nomatch"):
            noisy.append(line.removesuffix(" nomatch") + " timeout 0 nomatch")
        else:
            noisy.append(f"{line} timeout 0")
    assert parse_save("\n".join(noisy)) == states


def test_transaction_lines_and_normalisation() -> None:
    spec = SetSpec("KUBE-SRC-X", NET)
    tx = (
        Transaction().create(spec).add(spec, "10.0.0.9/24").add("KUBE-SRC-X", "10.1.0.0/16 nomatch")
    )
    tx.delete(spec, "10.1.0.0/16 nomatch").flush("KUBE-SRC-X").swap("KUBE-SRC-X", "KUBE-SRC-Y")
    tx.destroy("KUBE-SRC-Y")
    assert tx.lines == [
        "create KUBE-SRC-X hash:net timeout 0",
        "add KUBE-SRC-X 10.0.0.0/24",
        "add KUBE-SRC-X 10.1.0.0/16 nomatch",
        "del KUBE-SRC-X 10.1.0.0/16",
        "flush KUBE-SRC-X",
        "swap KUBE-SRC-X KUBE-SRC-Y",
        "destroy KUBE-SRC-Y",
    ]
    assert tx.names == {"KUBE-SRC-X", "KUBE-SRC-Y"}
    with pytest.raises(InvalidEntryError):
        Transaction().add(SetSpec("KUBE-DST-X", IP), "2001:db8::1")
    with pytest.raises(InvalidNameError):
        Transaction().flush("x" * 32)


def test_replace_goes_through_tmp_and_swap() -> None:
    spec = SetSpec("inet6:KUBE-DST-X", IP, "inet6")
    tmp = tmp_name(spec)
    tx = Transaction().replace(spec, ["2001:db8::2", "2001:0db8::1", "2001:db8::2"])
    assert tx.lines == [
        f"create {tmp} hash:ip timeout 0 family inet6",
        f"flush {tmp}",
        f"add {tmp} 2001:db8::1",
        f"add {tmp} 2001:db8::2",
        "create inet6:KUBE-DST-X hash:ip timeout 0 family inet6",
        f"swap {tmp} inet6:KUBE-DST-X",
        f"destroy {tmp}",
    ]


def test_list_set_transaction() -> None:
    lst, other = SetSpec("KUBE-SRC-L", LIST_SET), SetSpec("inet6:KUBE-DST-L", LIST_SET, "inet6")
    tx = Transaction().create(lst).add(lst, POOL).add("KUBE-SRC-L", POOL6).delete(lst, POOL)
    tx.fill(other, [POOL6, POOL6]).swap(lst.name, other.name).add(other.name, "KUBE-POOL-0")
    tx.destroy(lst.name)
    assert tx.lines == [
        "create KUBE-SRC-L list:set timeout 0",
        f"add KUBE-SRC-L {POOL}",
        f"add KUBE-SRC-L {POOL6}",
        f"del KUBE-SRC-L {POOL}",
        "create inet6:KUBE-DST-L list:set timeout 0",
        f"add inet6:KUBE-DST-L {POOL6}",
        "swap KUBE-SRC-L inet6:KUBE-DST-L",
        "add inet6:KUBE-DST-L KUBE-POOL-0",
        "destroy KUBE-SRC-L",
    ]
    with pytest.raises(InvalidEntryError):
        Transaction().add(lst, f"{POOL} nomatch")
    with pytest.raises(InvalidEntryError):
        Transaction().create(lst).add(lst.name, "x" * 32)  # known spec: checked by name too


def test_list_set_replace() -> None:
    spec = SetSpec("inet6:KUBE-SRC-L", LIST_SET, "inet6")
    tmp = tmp_name(spec)
    assert Transaction().replace(spec, [POOL6]).lines == [
        f"create {tmp} list:set timeout 0",
        f"flush {tmp}",
        f"add {tmp} {POOL6}",
        "create inet6:KUBE-SRC-L list:set timeout 0",
        f"swap {tmp} inet6:KUBE-SRC-L",
        f"destroy {tmp}",
    ]


def test_replace_is_cheap_for_100k() -> None:
    spec = SetSpec("KUBE-SRC-BIG", IP, maxelem=200_000)
    entries = [str(ipaddress.IPv4Address(0x0A000000 + i)) for i in range(1, 100_001)]
    tx = Transaction().replace(spec, entries)
    assert len(tx) == 100_005
    assert len(tx.render()) > 100_000

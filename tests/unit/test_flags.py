"""The pflag-compatible parser, usage rendering and Go value syntax (durations, strconv, CSV)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kube_router import flags, goparse
from kube_router.flags import (
    BOOL,
    DURATION,
    IP_SLICE,
    STRING,
    STRING_SLICE,
    UINT8,
    UINT_SLICE,
    FlagError,
    FlagSpec,
    format_duration,
    parse_duration,
    parse_flags,
    render_usage,
)

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

SPECS = (
    FlagSpec("on", BOOL, "false", "A bool."),
    FlagSpec("name", STRING, "dflt", "A string."),
    FlagSpec("v", STRING, "0", "Verbosity.", shorthand="v"),
    FlagSpec("help", BOOL, "false", "Help.", shorthand="h"),
    FlagSpec("version", BOOL, "false", "Version.", shorthand="V"),
    FlagSpec("period", DURATION, "1m30s", "A duration."),
    FlagSpec("ttl", UINT8, "0", "A uint8."),
    FlagSpec("list", STRING_SLICE, "a,b", "A string slice."),
    FlagSpec("nums", UINT_SLICE, "", "A uint slice."),
    FlagSpec("ips", IP_SLICE, "", "An IP slice."),
)


def values(*argv: str) -> dict[str, object]:
    return parse_flags(SPECS, list(argv)).values


def error(*argv: str) -> str:
    with pytest.raises(FlagError) as info:
        parse_flags(SPECS, list(argv))
    return str(info.value)


# --- syntax -----------------------------------------------------------------------------------


def test_defaults_are_parsed_like_values() -> None:
    got = values()
    assert got == {
        "on": False,
        "name": "dflt",
        "v": "0",
        "help": False,
        "version": False,
        "period": 90_000_000_000,
        "ttl": 0,
        "list": ["a", "b"],
        "nums": [],
        "ips": [],
    }


@pytest.mark.parametrize(
    "argv",
    [["--name=x"], ["--name", "x"], ["--name=", "--name=x"]],
)
def test_long_flag_value_forms(argv: list[str]) -> None:
    assert values(*argv)["name"] == "x"


def test_value_may_contain_equals_and_start_with_dash() -> None:
    assert values("--name=a=b")["name"] == "a=b"
    assert values("--name", "-x")["name"] == "-x"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--on"], True),
        (["--on=true"], True),
        (["--on=1"], True),
        (["--on=T"], True),
        (["--on=false"], False),
        (["--on=0"], False),
        (["--on=FALSE"], False),
        (["--on", "--on=false"], False),
    ],
)
def test_bool_forms(argv: list[str], expected: bool) -> None:
    assert values(*argv)["on"] is expected


def test_bool_does_not_consume_the_next_word() -> None:
    parsed = parse_flags(SPECS, ["--on", "false"])
    assert parsed.values["on"] is True
    assert parsed.args == ["false"]


@pytest.mark.parametrize(
    "argv",
    [["-v", "3"], ["-v=3"], ["-v3"], ["--v", "3"], ["--v=3"]],
)
def test_shorthand_and_long_v(argv: list[str]) -> None:
    assert values(*argv)["v"] == "3"


def test_combined_shorthands() -> None:
    got = values("-hV")
    assert got["help"] is True
    assert got["version"] is True
    assert values("-hv", "4")["v"] == "4"
    assert values("-Vv=5")["v"] == "5"
    assert values("-h=false")["help"] is False


def test_positional_arguments_and_double_dash() -> None:
    parsed = parse_flags(SPECS, ["a", "--on", "-", "--", "--name=x", "b"])
    assert parsed.args == ["a", "-", "--name=x", "b"]
    assert parsed.values["on"] is True
    assert parsed.values["name"] == "dflt"


def test_changed_records_given_flags() -> None:
    assert parse_flags(SPECS, ["--on", "-v", "1"]).changed == {"on", "v"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nope"], "unknown flag: --nope"),
        (["--nope=1"], "unknown flag: --nope"),
        (["-x"], "unknown shorthand flag: 'x' in -x"),
        (["-hx"], "unknown shorthand flag: 'x' in -x"),
        (["---on"], "bad flag syntax: ---on"),
        (["--=on"], "bad flag syntax: --=on"),
        (["--name"], "flag needs an argument: --name"),
        (["-v"], "flag needs an argument: 'v' in -v"),
        (["--on=maybe"], 'invalid argument "maybe" for "--on" flag: '
         'strconv.ParseBool: parsing "maybe": invalid syntax'),
        (["-h=maybe"], 'invalid argument "maybe" for "-h, --help" flag: '
         'strconv.ParseBool: parsing "maybe": invalid syntax'),
        (["--ttl=256"], 'invalid argument "256" for "--ttl" flag: '
         'strconv.ParseUint: parsing "256": value out of range'),
        (["--ttl=-1"], 'invalid argument "-1" for "--ttl" flag: '
         'strconv.ParseUint: parsing "-1": invalid syntax'),
        (["--period=abc"], 'invalid argument "abc" for "--period" flag: '
         'time: invalid duration "abc"'),
    ],
)  # fmt: skip
def test_errors_read_like_pflag(argv: list[str], message: str) -> None:
    assert error(*argv) == message


# --- slices -----------------------------------------------------------------------------------


def test_string_slice_first_use_replaces_default_then_appends() -> None:
    assert values("--list=x")["list"] == ["x"]
    assert values("--list=x,y", "--list", "z")["list"] == ["x", "y", "z"]
    assert values("--list=")["list"] == []
    assert values("--list=", "--list=q")["list"] == ["q"]


def test_string_slice_is_csv() -> None:
    assert values('--list="a,b",c')["list"] == ["a,b", "c"]
    assert values('--list="say ""hi""",x')["list"] == ['say "hi"', "x"]
    assert values("--list=a,,b")["list"] == ["a", "", "b"]
    assert values("--list= a")["list"] == [" a"]
    assert 'bare " in non-quoted-field' in error('--list=a"b')
    assert 'extraneous or missing " in quoted-field' in error('--list="ab')
    assert 'extraneous or missing " in quoted-field' in error('--list="a"b')


def test_uint_slice() -> None:
    assert values("--nums=1,2", "--nums=3")["nums"] == [1, 2, 3]
    assert values("--nums=18446744073709551615")["nums"] == [(1 << 64) - 1]
    assert 'parsing "": invalid syntax' in error("--nums=")
    assert 'parsing "-1": invalid syntax' in error("--nums=1,-1")
    assert 'parsing "0x10": invalid syntax' in error("--nums=0x10")  # base 10 here
    assert "value out of range" in error("--nums=18446744073709551616")


def test_ip_slice() -> None:
    got = values("--ips=192.0.2.1, 2001:db8::1", "--ips='10.0.0.1'")["ips"]
    assert got == [
        ipaddress.IPv4Address("192.0.2.1"),
        ipaddress.IPv6Address("2001:db8::1"),
        ipaddress.IPv4Address("10.0.0.1"),
    ]
    assert values("--ips=::ffff:192.0.2.9")["ips"] == [ipaddress.IPv4Address("192.0.2.9")]
    assert values("--ips=")["ips"] == []
    assert error("--ips=192.0.2.300") == (
        'invalid argument "192.0.2.300" for "--ips" flag: '
        "invalid string being converted to IP address: 192.0.2.300"
    )
    assert "converted to IP address: fe80::1%eth0" in error("--ips=fe80::1%eth0")
    assert "converted to IP address: 010.0.0.1" in error("--ips=010.0.0.1")


# --- durations --------------------------------------------------------------------------------

SECOND = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("0", 0),
        ("-0", 0),
        ("+0", 0),
        ("5s", 5 * SECOND),
        ("30s", 30 * SECOND),
        ("1478s", 1478 * SECOND),
        ("-5s", -5 * SECOND),
        ("+5s", 5 * SECOND),
        ("-0s", 0),
        ("5.0s", 5 * SECOND),
        ("5.6s", 5 * SECOND + 600_000_000),
        ("5.s", 5 * SECOND),
        (".5s", SECOND // 2),
        ("1.004s", SECOND + 4_000_000),
        ("100.00100s", 100 * SECOND + 1_000_000),
        ("10ns", 10),
        ("11us", 11_000),
        ("12\u00b5s", 12_000),
        ("12\u03bcs", 12_000),
        ("13ms", 13_000_000),
        ("300ms", 300_000_000),
        ("14s", 14 * SECOND),
        ("15m", 15 * 60 * SECOND),
        ("16h", 16 * 3600 * SECOND),
        ("1.5h", 5400 * SECOND),
        ("1m30s", 90 * SECOND),
        ("2h22m", (2 * 3600 + 22 * 60) * SECOND),
        ("3h30m", (3 * 3600 + 30 * 60) * SECOND),
        ("10.5s4m", 4 * 60 * SECOND + 10_500_000_000),
        ("-2m3.4s", -(2 * 60 * SECOND + 3_400_000_000)),
        ("1h2m3s4ms5us6ns", 3723 * SECOND + 4_005_006),
        ("39h9m14.425s", (39 * 3600 + 9 * 60 + 14) * SECOND + 425_000_000),
        ("52763797000ns", 52763797000),
        ("0.3333333333333333333h", 20 * 60 * SECOND),
        ("9007199254740993ns", (1 << 53) + 1),
        ("9223372036854775807ns", INT64_MAX),
        ("9223372036854775.807us", INT64_MAX),
        ("9223372036s854ms775us807ns", INT64_MAX),
        ("-9223372036854775808ns", INT64_MIN),
        ("-9223372036854775.808us", INT64_MIN),
        ("0.100000000000000000000h", 6 * 60 * SECOND),
        ("0.830103483285477580700h", 49 * 60 * SECOND + 48_372_539_827),
    ],
)
def test_parse_duration_like_go(text: str, nanoseconds: int) -> None:
    assert parse_duration(text) == nanoseconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'time: invalid duration ""'),
        ("3", 'time: missing unit in duration "3"'),
        ("-", 'time: invalid duration "-"'),
        ("s", 'time: invalid duration "s"'),
        (".", 'time: invalid duration "."'),
        ("-.", 'time: invalid duration "-."'),
        (".s", 'time: invalid duration ".s"'),
        ("+.s", 'time: invalid duration "+.s"'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        ("3000000h", 'time: invalid duration "3000000h"'),
        ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
        ("9223372036854775.808us", 'time: invalid duration "9223372036854775.808us"'),
        ("-9223372036854775809ns", 'time: invalid duration "-9223372036854775809ns"'),
        ("\u00e9s", 'time: invalid duration "\\xc3\\xa9s"'),
        ('1"s', 'time: unknown unit "\\"s" in duration "1\\"s"'),
    ],
)
def test_parse_duration_errors_like_go(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^time: ") as info:
        parse_duration(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("nanoseconds", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (1100, "1.1\u00b5s"),
        (2_200_000, "2.2ms"),
        (300_000_000, "300ms"),
        (3_300_000_000, "3.3s"),
        (245 * SECOND, "4m5s"),
        (245 * SECOND + 1_000_000, "4m5.001s"),
        (18367 * SECOND + 1_000_000, "5h6m7.001s"),
        (480 * SECOND + 1, "8m0.000000001s"),
        (90 * SECOND, "1m30s"),
        (360 * SECOND, "6m0s"),
        (65536 * SECOND, "18h12m16s"),
        (INT64_MAX, "2562047h47m16.854775807s"),
        (INT64_MIN, "-2562047h47m16.854775808s"),
        (-1, "-1ns"),
    ],
)
def test_format_duration_like_go(nanoseconds: int, text: str) -> None:
    assert format_duration(nanoseconds) == text


@given(st.integers(min_value=INT64_MIN, max_value=INT64_MAX))
def test_duration_round_trip(nanoseconds: int) -> None:
    text = format_duration(nanoseconds)
    assert parse_duration(text) == nanoseconds
    assert format_duration(parse_duration(text)) == text


@given(
    st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from(["ns", "us", "ms", "s", "m", "h"])),
        min_size=1,
        max_size=4,
    )
)
def test_duration_terms_add_up(terms: list[tuple[int, str]]) -> None:
    units = {"ns": 1, "us": 1000, "ms": 10**6, "s": SECOND, "m": 60 * SECOND, "h": 3600 * SECOND}
    text = "".join(f"{number}{unit}" for number, unit in terms)
    total = sum(number * units[unit] for number, unit in terms)
    if total > INT64_MAX:  # Go refuses a duration that overflows int64 nanoseconds
        with pytest.raises(ValueError, match="invalid duration"):
            parse_duration(text)
    else:
        assert parse_duration(text) == total


# --- strconv, quoting, CIDRs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bits", "expected"),
    [
        ("0", 16, 0),
        ("65535", 16, 65535),
        ("0x10", 16, 16),
        ("0X1f", 16, 31),
        ("010", 16, 8),
        ("0o17", 16, 15),
        ("0b101", 16, 5),
        ("1_000", 16, 1000),
        ("0x_1_0", 16, 16),
        ("4294967295", 32, 4294967295),
    ],
)
def test_parse_uint_base0(text: str, bits: int, expected: int) -> None:
    assert goparse.parse_uint(text, 0, bits) == expected


@pytest.mark.parametrize(
    ("text", "bits", "reason"),
    [
        ("", 16, "invalid syntax"),
        ("-1", 16, "invalid syntax"),
        ("+1", 16, "invalid syntax"),
        ("1a", 16, "invalid syntax"),
        ("08", 16, "invalid syntax"),
        ("0x", 16, "invalid syntax"),
        ("_1", 16, "invalid syntax"),
        ("1__0", 16, "invalid syntax"),
        ("1_", 16, "invalid syntax"),
        (" 1", 16, "invalid syntax"),
        ("65536", 16, "value out of range"),
        ("4294967296", 32, "value out of range"),
    ],
)
def test_parse_uint_errors(text: str, bits: int, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        goparse.parse_uint(text, 0, bits)
    assert str(info.value) == f"strconv.ParseUint: parsing {goparse.go_quote(text)}: {reason}"


def test_parse_int() -> None:
    assert goparse.parse_int("-3", 32) == -3
    assert goparse.parse_int("+7", 32) == 7
    assert goparse.parse_int("2147483647", 32) == 2147483647
    assert goparse.parse_int("-2147483648", 32) == -2147483648
    for text, reason in (("2147483648", "value out of range"), ("x", "invalid syntax")):
        with pytest.raises(ValueError) as info:
            goparse.parse_int(text, 32)
        assert str(info.value) == f'strconv.ParseInt: parsing "{text}": {reason}'


def test_go_quote() -> None:
    assert goparse.go_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert goparse.go_quote("tab\there\n") == '"tab\\there\\n"'
    assert goparse.go_quote("\x01\u00e9\u200b") == '"\\x01\u00e9\\u200b"'


def test_parse_cidr_like_go() -> None:
    assert str(goparse.parse_cidr("10.1.2.3/8")) == "10.0.0.0/8"
    assert str(goparse.parse_cidr("fd00::1/64")) == "fd00::/64"
    for bad in ("10.0.0.0", "10.0.0.0/33", "10.0.0.0/255.0.0.0", "10.0.0.0/", "x/8", "::/129"):
        with pytest.raises(ValueError, match="invalid CIDR address"):
            goparse.parse_cidr(bad)


def test_write_csv_quotes_like_go() -> None:
    assert goparse.write_csv(["a", "b c", "d,e", 'f"g', " h", ""]) == 'a,b c,"d,e","f""g"," h",'


# --- usage ------------------------------------------------------------------------------------


def test_usage_layout_like_pflag() -> None:
    text = render_usage(SPECS, "prog")
    lines = text.splitlines()
    assert text.endswith("\n")
    assert lines[0] == "Usage of prog:"
    assert lines[1:] == [
        "  -h, --help              Help.",
        "      --ips ipSlice       An IP slice. (default [])",
        "      --list strings      A string slice. (default [a,b])",
        '      --name string       A string. (default "dflt")',
        "      --nums uints        A uint slice. (default [])",
        "      --on                A bool.",
        "      --period duration   A duration. (default 1m30s)",
        "      --ttl uint8         A uint8.",
        '  -v, --v string          Verbosity. (default "0")',
        "  -V, --version           Version.",
    ]


def test_spec_helpers() -> None:
    spec = FlagSpec("some-flag", flags.UINT16, "0x10", "x")
    assert spec.attr == "some_flag"
    assert spec.type_name == "uint16"
    assert spec.default_value() == 16
    assert spec.default_text() == "16"
    assert spec.display_name == "--some-flag"
    assert FlagSpec("v", STRING, "0", "x", shorthand="v").display_name == "-v, --v"

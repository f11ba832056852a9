"""BGP communities from the node.bgp.communities annotation: upstream's table, gobgpd's names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kube_router.controllers.routing.compile.communities import (
    WELL_KNOWN,
    CommunityError,
    community_value,
    parse_communities,
)

# Upstream's Test_ValidateCommunity cases, plus gobgpd 3.10's other names.
VALID = [
    ("4294967041", "65535:65281", 0xFFFFFF01),
    ("4294967295", "65535:65535", 0xFFFFFFFF),
    ("0", "0:0", 0),
    ("65535:65281", "65535:65281", 0xFFFFFF01),
    ("65535:65535", "65535:65535", 0xFFFFFFFF),
    ("64512:100", "64512:100", (64512 << 16) | 100),
    ("no-export", "no-export", 0xFFFFFF01),
    ("internet", "internet", 0),
    ("planned-shut", "planned-shut", 0xFFFF0000),
    ("graceful-shutdown", "planned-shut", 0xFFFF0000),
    ("accept-own", "accept-own", 0xFFFF0001),
    ("blackhole", "blackhole", 0xFFFF029A),
    ("no-advertise", "no-advertise", 0xFFFFFF02),
    ("no-peer", "no-peer", 0xFFFFFF04),
    ("no-export-subconfed", "no-export-subconfed", 0xFFFFFF03),
    ("llgr-stale", "llgr-stale", 0xFFFF0006),
    ("no-llgr", "no-llgr", 0xFFFF0007),
]

INVALID = [
    "4294967296",  # above 32 bits
    "65536:65535",
    "65535:65536",
    "65536:65536",
    "0xFFFFFFFF",  # decimal only
    "community",
    "NO-EXPORT",  # names are lower case
    "1:2:3",
    "-1",
    "+5",
    ":5",
    "5:",
    "1_000",
]


@pytest.mark.parametrize(("text", "normal", "value"), VALID)
def test_valid_communities(text: str, normal: str, value: int) -> None:
    assert parse_communities(text) == ((normal,), [])
    assert community_value(text) == value


@pytest.mark.parametrize("text", INVALID)
def test_invalid_communities(text: str) -> None:
    good, errors = parse_communities(text)
    assert good == ()
    assert len(errors) == 1
    assert repr(text) in errors[0]
    with pytest.raises(CommunityError):
        community_value(text)


def test_list_keeps_good_entries_in_order_without_duplicates() -> None:
    good, errors = parse_communities(" 64512:1, bogus,no-export ,, 4294967041,64512:1")
    assert good == ("64512:1", "no-export", "65535:65281")
    assert len(errors) == 1
    assert "'bogus'" in errors[0]
    assert "kube-router.io/node.bgp.communities" in errors[0]


def test_empty_annotation() -> None:
    assert parse_communities("") == ((), [])


@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_any_32_bit_number_is_its_two_halves(value: int) -> None:
    (text,), errors = parse_communities(str(value))
    assert not errors
    assert community_value(text) == value


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_any_pair_round_trips(high: int, low: int) -> None:
    assert parse_communities(f"{high}:{low}") == ((f"{high}:{low}",), [])


@given(st.text(max_size=40))
def test_arbitrary_text_never_raises(text: str) -> None:
    good, errors = parse_communities(text)
    entries = [e for e in (x.strip() for x in text.split(",")) if e]
    assert len(good) + len(errors) <= len(entries)
    for item in good:
        assert item in WELL_KNOWN or community_value(item) >= 0

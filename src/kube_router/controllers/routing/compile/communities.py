"""BGP communities from the ``kube-router.io/node.bgp.communities`` node annotation (pure).

The annotation is a comma list; each entry is a 32-bit integer (``4294967041``), two 16-bit
integers (``65535:65281``) or a well-known name as gobgpd 3.10 spells it (``no-export``,
``planned-shut``, ...). Upstream validates each entry the way GoBGP parses it and skips the bad
ones with a warning; so do we, returning the bad ones as messages.

Public API:

- :func:`parse_communities` ``(text) -> (communities, errors)``: communities normalised to what
  gobgpd's policy API takes (``"a:b"`` for numbers, the name for well-known ones), in annotation
  order without duplicates; one message per bad entry.
- :func:`community_value` ``(text) -> int``: one entry's 32-bit value (``ValueError`` if bad).
- :data:`WELL_KNOWN`: name -> value, gobgpd 3.10's ``WellKnownCommunityNameMap``.
"""

from __future__ import annotations

from typing import Final

from kube_router.bgp.canon import WELL_KNOWN_COMMUNITIES
from kube_router.goparse import parse_uint

COMMUNITIES_ANNOTATION: Final = "kube-router.io/node.bgp.communities"

_BITS32: Final = 32
_BITS16: Final = 16
_HALF: Final = 16  # bits in each half of "a:b"
_LOW16: Final = 0xFFFF

#: gobgpd 3.10's well-known community names (pkg/packet/bgp WellKnownCommunityNameMap).
WELL_KNOWN: Final[dict[str, int]] = WELL_KNOWN_COMMUNITIES

#: RFC 8326 renamed 0xFFFF0000 GRACEFUL_SHUTDOWN; gobgpd 3.10 still calls it planned-shut.
ALIASES: Final[dict[str, str]] = {"graceful-shutdown": "planned-shut"}


class CommunityError(ValueError):
    """An annotation entry that is not a community."""


def _normalise(entry: str) -> str:
    """The spelling gobgpd takes for one entry; CommunityError when it is none of the forms."""
    try:
        value = parse_uint(entry, 10, _BITS32)
    except ValueError:
        pass
    else:
        return f"{value >> _HALF}:{value & _LOW16}"
    high, sep, low = entry.partition(":")
    if sep:
        try:
            return f"{parse_uint(high, 10, _BITS16)}:{parse_uint(low, 10, _BITS16)}"
        except ValueError as err:
            raise CommunityError(f"{entry!r} is not a community: {err}") from err
    name = ALIASES.get(entry, entry)
    if name in WELL_KNOWN:
        return name
    raise CommunityError(
        f"{entry!r} is not a community (a 32-bit number, two 16-bit numbers as a:b, "
        "or a well-known name such as no-export)"
    )


def community_value(entry: str) -> int:
    """The 32-bit value of one annotation entry (``ValueError`` when it is not a community)."""
    text = _normalise(entry.strip())
    if text in WELL_KNOWN:
        return WELL_KNOWN[text]
    high, _, low = text.partition(":")
    return (int(high) << _HALF) | int(low)


def parse_communities(text: str) -> tuple[tuple[str, ...], list[str]]:
    """Parse the annotation: the good communities normalised, and a message per bad entry."""
    good: dict[str, None] = {}
    errors: list[str] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            good[_normalise(entry)] = None
        except CommunityError as err:
            errors.append(f"{COMMUNITIES_ANNOTATION}: {err}; skipped")
    return tuple(good), errors

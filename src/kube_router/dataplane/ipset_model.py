"""The ipset port's model: our set names and what we own, a set's spec and state, the errors.

See :mod:`kube_router.dataplane.ipset` for the port (``ipset save`` parser, restore transactions,
real adapter), which re-exports all of this.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from kube_router.dataplane.ipset_entry import (
    FAMILIES,
    INET,
    INET6,
    LIST_SET,
    MAX_NAME_LEN,
    SET_TYPES,
    IPSetError,
    valid_set_name,
)

IPV6_PREFIX = "inet6:"
DEFAULT_MAXELEM = 65536


DEFAULT_HASHSIZE = 1024


DEFAULT_TIMEOUT = 0  # kube-router creates every set with "timeout 0" (timeout support, permanent)


DEFAULT_LIST_SIZE = 8  # list:set "size" when none is given


MIN_LIST_SIZE = 4  # the kernel raises a smaller list:set size to this


TMP_PREFIX = "TMP-"


TMP_HASH_BYTES = 10  # 10 bytes of sha1 -> 16 base32 characters, as upstream


OWNED_PREFIXES = ("kube-router-", "KUBE-SRC-", "KUBE-DST-", "KUBE-POOL-", TMP_PREFIX)


class InvalidNameError(IPSetError, ValueError):
    """A set name ipset would refuse (too long, empty, with whitespace)."""


class NotOwnedError(IPSetError):
    """An operation would touch a set that does not carry one of our prefixes."""


class SetNotFoundError(IPSetError, KeyError):
    """The named set does not exist."""


class IPSetParseError(IPSetError, ValueError):
    """``ipset save`` output we cannot read."""


class IPSetRestoreError(IPSetError):
    """``ipset restore`` failed: the line it named (1-based, if it named one), why, exit status.

    Raised by both the real adapter (chained from the CommandError carrying argv and input) and
    the fake, so tests can compare the two.
    """

    def __init__(
        self, line: int | None, reason: str, returncode: int | None = 1, text: str = ""
    ) -> None:
        where = f"line {line}" if line is not None else "no line named"
        super().__init__(f"ipset restore failed ({where}): {reason}")
        self.line = line
        self.reason = reason
        self.returncode = returncode
        self.text = text


def check_name(name: str) -> str:
    if not valid_set_name(name):
        raise InvalidNameError(f"invalid ipset name {name!r} (1..{MAX_NAME_LEN} chars, no spaces)")
    return name


def family_name(base: str, family: str) -> str:
    """The kernel name of a set: IPv6 sets get the ``inet6:`` prefix (as upstream)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}")
    name = f"{IPV6_PREFIX}{base}" if family == INET6 and not base.startswith(IPV6_PREFIX) else base
    return check_name(name)


def base_name(name: str) -> str:
    """The name without the ``inet6:`` prefix."""
    return name.removeprefix(IPV6_PREFIX)


def list_family(name: str) -> str:
    """The family we give a list:set (the kernel keeps none): inet6 for an ``inet6:`` name."""
    return INET6 if name.startswith(IPV6_PREFIX) else INET


def owned(name: str, prefixes: Sequence[str] = OWNED_PREFIXES) -> bool:
    """Whether a set is ours: its base name starts with one of ``prefixes``."""
    return base_name(name).startswith(tuple(prefixes))


@dataclass(frozen=True)
class SetSpec:
    """What a set is: name, type, family and create options. ``timeout`` None = no timeout
    support (foreign sets only; ours always have ``timeout 0``).

    A list:set (``SetSpec(name, LIST_SET, family)``) takes ``size`` and no maxelem or hashsize
    (they must stay at their defaults); its family is ours only, never written, and must be the
    one its name gives (:func:`list_family`), so that what we build equals what we read back.
    Hash sets take no ``size``."""

    name: str
    type: str
    family: str = INET
    maxelem: int = DEFAULT_MAXELEM
    hashsize: int = DEFAULT_HASHSIZE
    timeout: int | None = DEFAULT_TIMEOUT
    size: int = DEFAULT_LIST_SIZE

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.type not in SET_TYPES:
            raise ValueError(f"unsupported ipset type {self.type!r} (supported: {SET_TYPES})")
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}")
        if self.maxelem <= 0 or self.hashsize <= 0:
            raise ValueError("maxelem and hashsize must be positive")
        if self.type == LIST_SET:
            if self.family != list_family(self.name):
                raise ValueError(
                    f"{self.name}: a list:set's family is its name's ({list_family(self.name)})"
                )
            if (self.maxelem, self.hashsize) != (DEFAULT_MAXELEM, DEFAULT_HASHSIZE):
                raise ValueError(f"{self.name}: a list:set has no maxelem or hashsize")
            if self.size < MIN_LIST_SIZE:
                raise ValueError(
                    f"{self.name}: list:set size {self.size} < {MIN_LIST_SIZE} (the kernel "
                    "would make it 4)"
                )
        elif self.size != DEFAULT_LIST_SIZE:
            raise ValueError(f"{self.name}: only a list:set has a size")

    def options(self) -> str:
        """Create options as upstream spells them (this string seeds the TMP- name). A list:set
        gives ``list:set timeout 0`` (and ``size N`` when not 8): no family, hashsize or maxelem,
        which ipset refuses for it."""
        opts = [self.type]
        if self.timeout is not None:
            opts += ["timeout", str(self.timeout)]
        if self.type == LIST_SET:
            if self.size != DEFAULT_LIST_SIZE:
                opts += ["size", str(self.size)]
            return " ".join(opts)
        if self.family == INET6:
            opts += ["family", INET6]
        if self.hashsize != DEFAULT_HASHSIZE:
            opts += ["hashsize", str(self.hashsize)]
        if self.maxelem != DEFAULT_MAXELEM:
            opts += ["maxelem", str(self.maxelem)]
        return " ".join(opts)

    def renamed(self, name: str) -> SetSpec:
        """The same set under another name (a list:set takes the new name's family)."""
        family = list_family(name) if self.type == LIST_SET else self.family
        return dataclasses.replace(self, name=name, family=family)


@dataclass(frozen=True)
class SetState:
    """A set as it is: its spec and its canonical entries."""

    spec: SetSpec
    entries: frozenset[str] = field(default_factory=frozenset)


def tmp_name(spec: SetSpec) -> str:
    """The temporary set for bulk replacement: ``TMP-`` + base32(sha1("tmp:" + options))[:16]."""
    digest = hashlib.sha1(f"tmp:{spec.options()}".encode(), usedforsecurity=False).digest()
    return TMP_PREFIX + base64.b32encode(digest[:TMP_HASH_BYTES]).decode()

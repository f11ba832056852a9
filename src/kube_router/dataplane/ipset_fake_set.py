"""One set inside the ipset fake: members keyed as the kernel keys them, and value lookups."""

from __future__ import annotations

from dataclasses import dataclass, field

from kube_router.dataplane.ipset_entry import (
    INET,
    INET6,
    LIST_SET,
    EntryError,
    Key,
    format_key,
    parse_element,
)
from kube_router.dataplane.ipset_model import DEFAULT_LIST_SIZE, SetSpec, SetState, list_family


@dataclass
class FakeSet:
    type: str
    family: str
    maxelem: int
    hashsize: int
    timeout: int | None
    members: dict[Key, bool] = field(default_factory=dict)  # key -> nomatch
    cidrs: dict[int, int] = field(default_factory=dict)  # prefix length -> count (hash:net)
    size: int = DEFAULT_LIST_SIZE  # list:set
    names: list[str] = field(default_factory=list)  # list:set members, in order

    def put(self, key: Key, nomatch: bool) -> None:
        if key not in self.members:
            self.cidrs[key[1]] = self.cidrs.get(key[1], 0) + 1
        self.members[key] = nomatch

    def remove(self, key: Key) -> None:
        del self.members[key]
        self.cidrs[key[1]] -= 1
        if not self.cidrs[key[1]]:
            del self.cidrs[key[1]]

    def clear(self) -> None:
        self.members.clear()
        self.cidrs.clear()
        self.names.clear()

    def create_key(self) -> tuple[str, int, int, int | None]:
        """What ``create -exist`` compares: type, maxelem (list:set: size) and extensions
        (timeout), not family or hashsize."""
        return self.type, self.maxelem, self.size, self.timeout

    def state(self, name: str) -> SetState:
        if self.type == LIST_SET:
            spec = SetSpec(name, LIST_SET, list_family(name), timeout=self.timeout, size=self.size)
            return SetState(spec, frozenset(self.names))
        spec = SetSpec(name, self.type, self.family, self.maxelem, self.hashsize, self.timeout)
        fmt = [format_key(self.type, self.family, k, nm) for k, nm in self.members.items()]
        return SetState(spec, frozenset(fmt))


def value_family(addr: str) -> str:
    return INET6 if ":" in addr else INET


def value_key(target: FakeSet, value: str) -> Key:
    try:
        parsed = parse_element(target.type, target.family, [value])
    except EntryError as err:
        raise ValueError(f"bad {target.type} value {value!r}: {err.reason}") from err
    if len(parsed.keys) != 1:
        raise ValueError(f"{value!r} is not a single {target.type} value")
    return parsed.keys[0]

"""Store each distinct member list once: policy sets become ``list:set`` s of shared pool sets.

The compiler gives every policy rule its own ``hash:ip`` set under upstream's name. At scale most
of them hold the same members (the 1,000-policy benchmark: 3,200 sets, 440,280 entries, but only
1,065 distinct lists), and loading them is what bounds a full sync. So in the kernel each such
set ``KUBE-SRC-x``/``KUBE-DST-x`` is a ``list:set`` whose single member is a ``hash:ip`` pool set
``KUBE-POOL-<id>`` holding the addresses; policy sets with the same members share one pool. The
rules still match upstream's set names, and a packet matches a list:set exactly when it matches
its member, so enforcement is unchanged.

Destroying a ``list:set`` makes the kernel wait for an RCU barrier (16 ms each on the benchmark
machine), so a list no longer wanted is emptied at once and destroyed later, at most
:data:`DESTROYS_PER_SYNC` a sync: deleting many policies spreads over syncs instead of stalling
one. A garbage list wanted again is simply refilled.

Pools are edited in place when every set sharing one moves to the same new members (a pod added
to a namespace that 200 policies select: one pool gets one member). Sets whose members diverge
move to a pool that already holds their new members, or to a new pool. A pool nobody uses any
more is dropped (and so destroyed by the plan). :class:`Pools` is pure: it turns compiled sets
into the sets the kernel should hold; the plan diffs those like any others. A full sync seeds it
from what the kernel holds, so a restart or damage from outside costs only what differs.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Final

from kube_router.controllers.netpol.names import (
    DST_SET_PREFIX,
    IPV6_SET_PREFIX,
    SRC_SET_PREFIX,
    Family,
    ipset_name,
)
from kube_router.controllers.netpol.pieces import HASH_IP, LIST_SET, IPSetSpec

POOL_PREFIX: Final = "KUBE-POOL-"
POOL_ID_LEN: Final = 15  # "KUBE-POOL-" + 15 = 25 characters, 31 with "inet6:" (ipset's limit)
POOLED_PREFIXES: Final = (SRC_SET_PREFIX, DST_SET_PREFIX)
DESTROYS_PER_SYNC: Final = 8  # list:sets destroyed a sync (each waits for an RCU barrier)

Content = frozenset[str]


def is_pooled(spec: IPSetSpec) -> bool:
    """A policy ``hash:ip`` set (target, peer or named-port pods): stored through a pool."""
    return spec.kind == HASH_IP and spec.name.removeprefix(IPV6_SET_PREFIX).startswith(
        POOLED_PREFIXES
    )


def is_pool(name: str) -> bool:
    return name.removeprefix(IPV6_SET_PREFIX).startswith(POOL_PREFIX)


@dataclasses.dataclass(frozen=True)
class KernelSet:
    """What a full sync read of one of our sets: its type and canonical members."""

    kind: str
    entries: frozenset[str]


class Pools:
    """One family's assignment of policy sets to pool sets, kept from one sync to the next."""

    def __init__(self, family: Family) -> None:
        self.family = family
        self._serial = 0  # never reset: names of pools made after a re-seed stay fresh
        self._reset()

    def _reset(self) -> None:
        self._ptr: dict[str, str] = {}  # policy set -> its pool
        self._refs: dict[str, set[str]] = {}  # pool -> the policy sets in it
        self._pools: dict[str, IPSetSpec] = {}  # pool -> its spec (members)
        self._content: dict[str, Content] = {}  # pool -> its members as a set
        self._by_content: dict[Content, str] = {}  # members -> the pool holding them
        self._lists: dict[str, IPSetSpec] = {}  # policy set -> its list:set spec
        self._last: dict[str, IPSetSpec] = {}  # policy set -> the compiled spec last realized
        self._garbage: dict[str, IPSetSpec] = {}  # emptied lists waiting to be destroyed

    @property
    def garbage(self) -> int:
        """Emptied lists still to be destroyed by later syncs."""
        return len(self._garbage)

    def seed(self, kernel: Mapping[str, KernelSet]) -> None:
        """Forget everything and take the assignment the kernel holds (a full sync)."""
        self._reset()
        for name, have in kernel.items():
            if have.kind != LIST_SET or is_pool(name):
                continue
            # Until realize learns it is wanted, every list is garbage (destroyed a few a sync).
            self._garbage[name] = IPSetSpec(name, LIST_SET, self.family, ())
            if len(have.entries) != 1:
                continue
            (pool,) = have.entries
            held = kernel.get(pool)
            if held is None or held.kind != HASH_IP or not is_pool(pool):
                continue
            if pool not in self._pools:
                self._put_pool(IPSetSpec(pool, HASH_IP, self.family, tuple(sorted(held.entries))))
            self._attach(name, pool)

    def realize(self, desired: Mapping[str, IPSetSpec]) -> dict[str, IPSetSpec]:
        """The sets the kernel should hold for the compiled ``desired`` sets."""
        out: dict[str, IPSetSpec] = {}
        pooled: dict[str, IPSetSpec] = {}
        changed: list[str] = []
        for name, spec in desired.items():
            if not is_pooled(spec):
                out[name] = spec
                continue
            pooled[name] = spec
            if self._last.get(name) is not spec or name not in self._ptr:
                changed.append(name)
        for name in [n for n in self._ptr if n not in desired]:
            self._detach(name)
            self._lists.pop(name, None)
            self._garbage[name] = IPSetSpec(name, LIST_SET, self.family, ())
        self._reassign(changed, desired)
        self._last = pooled
        for pool in [p for p, refs in self._refs.items() if not refs]:
            self._drop_pool(pool)
        out.update(self._pools)
        for name in self._last:
            self._garbage.pop(name, None)
            out[name] = self._list_spec(name)
        for name in list(self._garbage)[:DESTROYS_PER_SYNC]:
            del self._garbage[name]  # absent from the result: the plan destroys it
        out.update(self._garbage)
        return out

    def _reassign(self, changed: Iterable[str], desired: Mapping[str, IPSetSpec]) -> None:
        """Detach every changed set, then give each group of sets with the same old pool and
        new members a pool: one holding those members already, else the old pool edited in place
        when nobody else still uses it (largest group first), else a new one."""
        groups: dict[tuple[str | None, Content], list[str]] = defaultdict(list)
        for name in changed:
            content = frozenset(desired[name].entries)
            groups[(self._ptr.get(name), content)].append(name)
            self._detach(name)
        for (old, content), names in sorted(groups.items(), key=lambda g: -len(g[1])):
            spec = desired[names[0]]
            pool = self._by_content.get(content)
            if pool is None and old is not None and old in self._pools and not self._refs[old]:
                pool = old
                self._edit_pool(pool, spec, content)
            elif pool is None:
                pool = self._new_pool(names[0], spec, content)
            for name in names:
                if pool != old:
                    self._lists.pop(name, None)
                self._attach(name, pool)

    def _attach(self, name: str, pool: str) -> None:
        self._ptr[name] = pool
        self._refs[pool].add(name)

    def _detach(self, name: str) -> None:
        pool = self._ptr.pop(name, None)
        if pool is not None:
            self._refs[pool].discard(name)

    def _put_pool(self, spec: IPSetSpec) -> None:
        content = frozenset(spec.entries)
        self._pools[spec.name] = spec
        self._content[spec.name] = content
        self._by_content.setdefault(content, spec.name)
        self._refs.setdefault(spec.name, set())

    def _edit_pool(self, pool: str, spec: IPSetSpec, content: Content) -> None:
        old = self._content[pool]
        if self._by_content.get(old) == pool:
            del self._by_content[old]
        # Keep the compiled spec's peer-set edit: the plan uses it when its base is what the
        # pool held (the same tuple), instead of diffing thousands of members.
        self._pools[pool] = dataclasses.replace(spec, name=pool)
        self._content[pool] = content
        self._by_content.setdefault(content, pool)

    def _new_pool(self, seed: str, spec: IPSetSpec, content: Content) -> str:
        while True:
            self._serial += 1
            text = f"{self.family}:{seed}:{self._serial}".encode()
            digest = hashlib.sha256(text).digest()
            suffix = base64.b32encode(digest).decode("ascii")[:POOL_ID_LEN]
            pool = ipset_name(POOL_PREFIX + suffix, self.family)
            if pool not in self._pools:
                break
        self._put_pool(dataclasses.replace(spec, name=pool, edit=None))
        return pool

    def _drop_pool(self, pool: str) -> None:
        content = self._content.pop(pool)
        if self._by_content.get(content) == pool:
            del self._by_content[content]
        del self._pools[pool]
        del self._refs[pool]

    def _list_spec(self, name: str) -> IPSetSpec:
        spec = self._lists.get(name)
        if spec is None:
            spec = IPSetSpec(name, LIST_SET, self.family, (self._ptr[name],))
            self._lists[name] = spec
        return spec

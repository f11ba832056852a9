"""``FakeEngine``: the BGP engine port in memory, strict like gobgpd 3.10 (proved against it by
``tests/unit/test_bgp_engine.py``, which runs the same scenarios on both and compares
``read_state()``).

What it refuses as gobgpd does (``EngineError``): peers or paths before BGP is started, a
prefix set mixing IPv4 and IPv6, a policy naming a defined set that does not exist (or of the
wrong kind), two statements of one name, two different peers or paths for one address/prefix,
invalid prefixes, addresses and communities (``InvalidSpec``), policies before BGP is started
(a fresh gobgpd cannot list defined sets). StopBgp drops peers and paths; StartBgp drops
defined sets, policies and assignments (gobgpd keeps them across StopBgp until the next
StartBgp).

Helpers for tests:
- ``read_state()`` → ``BgpState`` (the same shape as ``GrpcEngine.read_state()``);
- ``inject_route(RouteEvent)`` / ``inject_peer(PeerEvent)``: what gobgpd would report; learned
  best paths are kept and replayed first to every new ``watch_routes()`` (init=true);
- ``go_away()``: gobgpd died (every watch ends, every request raises ``EngineUnavailable``
  until ``come_back(keep_state)``);
- ``requests``: names of the mutating requests made, to assert that a repeated sync is a no-op.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Final, TypeVar

from kube_router.bgp import canon
from kube_router.bgp.canon import AssignedPolicy, BgpState
from kube_router.bgp.engine import EngineError, EngineUnavailable
from kube_router.bgp.model import (
    EXPORT_POLICY_PREFIX,
    IMPORT_POLICY_PREFIX,
    Action,
    DefinedSetSpec,
    DefinedType,
    GlobalSpec,
    PathSpec,
    PeerEvent,
    PeerSpec,
    PeerStatus,
    PolicySpec,
    PolicyState,
    RouteEvent,
    SessionState,
)

NOT_STARTED: Final = "bgp server hasn't started yet"
#: A configured neighbour's state before any event (gobgpd keeps trying to connect).
INITIAL_SESSION_STATE: Final = SessionState.ACTIVE
EXPORT: Final = "export"
IMPORT: Final = "import"
_DIRECTIONS: Final = {
    EXPORT: (EXPORT_POLICY_PREFIX, Action.REJECT),
    IMPORT: (IMPORT_POLICY_PREFIX, Action.ACCEPT),
}
_T = TypeVar("_T")
_END: Final = object()


class FakeEngine:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self.available = True
        self._route_queues: list[asyncio.Queue[object]] = []
        self._peer_queues: list[asyncio.Queue[object]] = []
        self._reset()

    def _reset(self) -> None:
        self.global_: GlobalSpec | None = None
        self.peers: dict[str, PeerSpec] = {}  # canonical
        self.peer_states: dict[str, SessionState] = {}
        self.paths: dict[str, PathSpec] = {}  # canonical, by prefix
        self.defined_sets: dict[tuple[DefinedType, str], DefinedSetSpec] = {}
        self.policies: dict[str, PolicySpec] = {}  # canonical, by installed name
        self.assigned: dict[str, tuple[list[str], Action]] = {}  # direction → (names, default)
        self.learned: dict[str, RouteEvent] = {}  # best paths from peers, by prefix

    # --- test helpers ------------------------------------------------------------------------

    def inject_route(self, event: RouteEvent) -> None:
        prefix = canon.canonical_prefix(event.prefix)
        if event.withdraw:
            self.learned.pop(prefix, None)
        else:
            self.learned[prefix] = event
        for queue in self._route_queues:
            queue.put_nowait(event)

    def inject_peer(self, event: PeerEvent) -> None:
        self.peer_states[canon.canonical_address(event.address)] = event.state
        for queue in self._peer_queues:
            queue.put_nowait(event)

    def go_away(self) -> None:
        """gobgpd died: watches end, requests fail until ``come_back``."""
        self.available = False
        for queue in (*self._route_queues, *self._peer_queues):
            queue.put_nowait(_END)

    def come_back(self, keep_state: bool = False) -> None:
        """gobgpd is back: empty (a restarted process) unless ``keep_state`` (adopted)."""
        self.available = True
        if not keep_state:
            self._reset()

    def _request(self, name: str, mutating: bool = True) -> None:
        if not self.available:
            raise EngineUnavailable(f"gobgpd {name}: unavailable: connection refused")
        if mutating:
            self.requests.append(name)

    def _started(self, request: str) -> GlobalSpec:
        if self.global_ is None:
            raise EngineError(f"gobgpd {request}: UNKNOWN: {NOT_STARTED}")
        return self.global_

    # --- global ------------------------------------------------------------------------------

    async def ensure_global(self, spec: GlobalSpec) -> None:
        self._request("GetBgp", mutating=False)
        want = canon.canonical_global(spec)
        if self.global_ == want:
            return
        if self.global_ is not None:
            await self.stop_bgp()
        self._request(f"StartBgp AS {spec.asn}")
        self.global_ = want
        self.defined_sets.clear()
        self.policies.clear()
        self.assigned.clear()

    async def stop_bgp(self) -> None:
        self._request("StopBgp")
        self.global_ = None
        self.peers.clear()
        self.peer_states.clear()
        self.paths.clear()
        self.learned.clear()

    # --- peers -------------------------------------------------------------------------------

    async def sync_peers(self, peers: Iterable[PeerSpec]) -> None:
        self._request("ListPeer", mutating=False)
        wanted: dict[str, PeerSpec] = {}
        for spec in peers:
            peer = canon.canonical_peer(spec)
            if peer.address in wanted and wanted[peer.address] != peer:
                raise EngineError(f"two different neighbours with address {peer.address}")
            wanted[peer.address] = peer
        for address in sorted(self.peers.keys() - wanted.keys()):
            self._delete_peer(address)
        for address, peer in sorted(wanted.items()):
            if self.peers.get(address) == peer:
                continue
            if address in self.peers:
                self._delete_peer(address)
            self._request(f"AddPeer {address}")
            self._started(f"AddPeer {address}")
            self.peers[address] = peer
            self.peer_states[address] = INITIAL_SESSION_STATE

    def _delete_peer(self, address: str) -> None:
        self._request(f"DeletePeer {address}")
        self._started(f"DeletePeer {address}")
        del self.peers[address]
        self.peer_states.pop(address, None)
        self.learned = {p: e for p, e in self.learned.items() if e.neighbor != address}

    async def peer_status(self) -> list[PeerStatus]:
        self._request("ListPeer", mutating=False)
        local_asn = self.global_.asn if self.global_ else 0
        return [
            PeerStatus(
                address=address,
                asn=peer.asn,
                state=self.peer_states.get(address, INITIAL_SESSION_STATE),
                internal=peer.asn == local_asn,
            )
            for address, peer in sorted(self.peers.items())
        ]

    # --- paths -------------------------------------------------------------------------------

    async def sync_paths(self, paths: Iterable[PathSpec]) -> None:
        self._request("ListPath", mutating=False)
        wanted: dict[str, PathSpec] = {}
        for spec in paths:
            path = canon.canonical_path(spec)
            if path.prefix in wanted and wanted[path.prefix] != path:
                raise EngineError(f"two different paths for prefix {path.prefix}")
            wanted[path.prefix] = path
        self._started("AddPathStream")
        if wanted == self.paths:
            return
        self._request(f"AddPathStream ({len(wanted)} paths)")
        self.paths = wanted

    # --- policies ----------------------------------------------------------------------------

    async def sync_policies(self, state: PolicyState) -> None:
        self._request("ListDefinedSet", mutating=False)
        self._started("AddDefinedSet")
        wanted = {(s.type, s.name): canon.canonical_defined_set(s) for s in state.defined_sets}
        for key, spec in wanted.items():
            _check_set(spec)
            if self.defined_sets.get(key) != spec:
                self._request(f"AddDefinedSet {spec.name}")
                self.defined_sets[key] = spec
        for direction in (EXPORT, IMPORT):
            wanted_policy = state.export if direction == EXPORT else state.import_
            self._sync_direction(direction, wanted_policy)
        used = {
            name
            for policy in self.policies.values()
            for stmt in policy.statements
            for name in (stmt.prefix_set, stmt.neighbor_set)
        }
        for key in sorted(self.defined_sets.keys() - wanted.keys(), key=lambda k: k[1]):
            if key[1] not in used:
                self._request(f"DeleteDefinedSet {key[1]}")
                del self.defined_sets[key]

    def _sync_direction(self, direction: str, wanted: PolicySpec | None) -> None:
        prefix, default = _DIRECTIONS[direction]
        names, current_default = self.assigned.get(direction, ([], Action.ACCEPT))
        ours = [n for n in names if canon.policy_version(n, prefix) is not None]
        keep = ""
        if wanted is not None:
            want = canon.canonical_policy(wanted)
            if len(ours) == 1 and current_default == default and self.policies[ours[0]] == want:
                keep = ours[0]
            else:
                versions = [canon.policy_version(n, prefix) or 0 for n in self.policies]
                keep = f"{prefix}{max(versions, default=0) + 1}"
                self._add_policy(keep, want)
                self._request(f"AddPolicyAssignment {keep}")
                names = [*names, keep]
                self.assigned[direction] = (names, default)
        for old in ours:
            if old != keep:
                self._request(f"DeletePolicyAssignment {old}")
                names = [n for n in names if n != old]
                self.assigned[direction] = (names, self.assigned[direction][1])
        if wanted is None and ours and not names:
            self._request(f"DeletePolicyAssignment {direction}")
            del self.assigned[direction]
        for name in sorted(self.policies):
            if name != keep and canon.policy_version(name, prefix) is not None:
                self._request(f"DeletePolicy {name}")
                del self.policies[name]

    def _add_policy(self, name: str, spec: PolicySpec) -> None:
        request = f"AddPolicy {name}"
        self._request(request)
        seen: set[str] = set()
        for stmt in spec.statements:
            if stmt.name in seen:
                raise EngineError(
                    f"gobgpd {request}: UNKNOWN: statement {name}_{stmt.name} already defined"
                )
            seen.add(stmt.name)
            refs = (
                (DefinedType.PREFIX, stmt.prefix_set),
                (DefinedType.NEIGHBOR, stmt.neighbor_set),
            )
            for kind, set_name in refs:
                if set_name and (kind, set_name) not in self.defined_sets:
                    raise EngineError(
                        f"gobgpd {request}: UNKNOWN: not found {kind.value} set {set_name}"
                    )
        self.policies[name] = spec

    # --- watching ----------------------------------------------------------------------------

    def watch_routes(self) -> AsyncIterator[RouteEvent]:
        self._request("WatchEvent(table)", mutating=False)
        queue: asyncio.Queue[object] = asyncio.Queue()
        for event in self.learned.values():
            queue.put_nowait(event)
        self._route_queues.append(queue)
        return _drain(queue, self._route_queues, RouteEvent)

    def watch_peers(self) -> AsyncIterator[PeerEvent]:
        self._request("WatchEvent(peer)", mutating=False)
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._peer_queues.append(queue)
        return _drain(queue, self._peer_queues, PeerEvent)

    # --- reading back ------------------------------------------------------------------------

    async def read_state(self) -> BgpState:
        self._request("read_state", mutating=False)
        state = BgpState(global_=self.global_, peers=dict(self.peers))
        if self.global_ is None:
            return state
        state.paths = dict(self.paths)
        state.defined_sets = dict(self.defined_sets)
        state.policies = frozenset(self.policies)
        for direction, (prefix, _) in _DIRECTIONS.items():
            names, default = self.assigned.get(direction, ([], Action.ACCEPT))
            ours = [n for n in names if canon.policy_version(n, prefix) is not None]
            if ours:
                top = max(ours, key=lambda n: canon.policy_version(n, prefix) or 0)
                assigned = AssignedPolicy(top, self.policies[top], default)
                if direction == EXPORT:
                    state.export = assigned
                else:
                    state.import_ = assigned
        return state


def _check_set(spec: DefinedSetSpec) -> None:
    if spec.type is DefinedType.PREFIX:
        families = {canon.prefix_family(p.prefix) for p in spec.prefixes}
        if len(families) > 1:
            raise EngineError(f"gobgpd AddDefinedSet {spec.name}: UNKNOWN: multiple families")


async def _drain(
    queue: asyncio.Queue[object], queues: list[asyncio.Queue[object]], kind: type[_T]
) -> AsyncIterator[_T]:
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, kind):
                yield item
    finally:
        if queue in queues:
            queues.remove(queue)

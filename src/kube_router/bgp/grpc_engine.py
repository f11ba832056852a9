"""``GrpcEngine``: the BGP engine port over gobgpd 3.10's gRPC API (grpc.aio).

    engine = GrpcEngine("unix:///run/kube-router/gobgpd.sock")   # or "127.0.0.1:50051"
    await engine.ensure_global(GlobalSpec(asn=64512, router_id="10.0.0.1"))
    await engine.sync_peers([...]); await engine.sync_policies(...); await engine.sync_paths([...])
    async for event in engine.watch_routes(): ...      # RouteEvent, current best paths first
    async for event in engine.watch_peers(): ...       # PeerEvent, on a stream of its own
    state = await engine.read_state()                  # BgpState (canonical), for tests and debug
    await engine.close()

Every ``sync_*`` reads what gobgpd holds and changes only the difference (level-triggered), so
it is right after an agent restart (gobgpd kept its state) and after a gobgpd restart (empty):

- ``ensure_global``: GetBgp; asn 0 → StartBgp; different → StopBgp + StartBgp (which drops
  every peer, path and policy: the caller syncs them again). gobgpd 3.10's GetBgp does not
  report the global graceful-restart settings, so a change of those alone does not restart BGP.
- ``sync_peers``: ListPeer; missing → AddPeer; changed → DeletePeer + AddPeer; extra →
  DeletePeer. A changed neighbour's session restarts.
- ``sync_paths``: ListPath of the global table (only our own paths, ``neighbor_ip "<nil>"``);
  additions, changes and withdrawals go in AddPathStream requests. Paths are keyed by prefix:
  gobgpd holds one local path per prefix.
- ``sync_policies``: defined sets by (type, name), members added and removed in place (gobgpd
  merges on AddDefinedSet); export/import policies ``kube_router_export<N>`` /
  ``kube_router_import<N>``: a changed policy is added as version N+1, assigned to ``global``
  (export default REJECT, import default ACCEPT), the old one unassigned and deleted. None →
  ours unassigned and deleted. Policies with other names are left alone. Defined sets not
  wanted and not used by any remaining policy are deleted last (gobgpd is the agent's own
  child: the agent owns its defined sets). Statements are named ``<policy>_<statement>``.

Errors: every gRPC failure becomes ``EngineError`` naming the request (gobgpd reports refusals
as UNKNOWN with a text), ``EngineUnavailable`` when gobgpd cannot be reached. Requests and
passwords are never logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, Final

import grpc

from kube_router.bgp import canon, codec
from kube_router.bgp.api import gobgp_pb2 as api
from kube_router.bgp.api import gobgp_pb2_grpc as rpc
from kube_router.bgp.engine import EngineError, EngineUnavailable
from kube_router.bgp.grpc_policy import PolicySync
from kube_router.bgp.model import (
    IPV4,
    IPV6,
    GlobalSpec,
    PathSpec,
    PeerEvent,
    PeerSpec,
    PeerStatus,
    PolicyState,
    RouteEvent,
)

log = logging.getLogger(__name__)

#: Deadline of one unary request (seconds); streams have none.
DEFAULT_TIMEOUT_S: Final = 30.0
#: Paths per AddPathStream message.
PATHS_PER_MESSAGE: Final = 1000
_GONE: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


def wrap_error(request: str, err: grpc.RpcError) -> EngineError:
    """The gRPC error as an EngineError naming the request (never the request's content)."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    if code == grpc.StatusCode.UNAVAILABLE:
        return EngineUnavailable(f"gobgpd {request}: unavailable: {details}")
    name = code.name if code is not None else "error"
    return EngineError(f"gobgpd {request}: {name}: {details}")


class GrpcEngine:
    """The BgpEngine protocol over one gRPC channel to gobgpd (created on first use)."""

    def __init__(self, target: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.target = target
        self._timeout = timeout_s
        self._channel: Any = None
        self._stub: Any = None

    def _api(self) -> Any:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.target)
            stub_class: Any = rpc.GobgpApiStub  # generated code, untyped
            self._stub = stub_class(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close()

    async def call(self, request: str, method: str, message: Any) -> Any:
        """One unary request; ``request`` names it in errors ("AddPeer 10.0.0.2")."""
        try:
            return await getattr(self._api(), method)(message, timeout=self._timeout)
        except grpc.RpcError as err:
            raise wrap_error(request, err) from err

    async def collect(self, request: str, method: str, message: Any) -> list[Any]:
        """Every response of a server-streaming request."""
        try:
            return [r async for r in getattr(self._api(), method)(message)]
        except grpc.RpcError as err:
            raise wrap_error(request, err) from err

    # --- global ------------------------------------------------------------------------------

    async def get_global(self) -> GlobalSpec | None:
        resp = await self.call("GetBgp", "GetBgp", api.GetBgpRequest())
        return codec.global_from_pb(getattr(resp, "global"))

    async def ensure_global(self, spec: GlobalSpec) -> None:
        current = await self.get_global()
        if current == canon.canonical_global(spec):
            return
        if current is not None:
            log.info("gobgpd runs AS %d id %s; restarting BGP with AS %d id %s",
                     current.asn, current.router_id, spec.asn, spec.router_id)  # fmt: skip
            await self.call("StopBgp", "StopBgp", api.StopBgpRequest())
        request = api.StartBgpRequest(**{"global": codec.global_to_pb(spec)})
        await self.call(f"StartBgp AS {spec.asn}", "StartBgp", request)

    async def stop_bgp(self) -> None:
        await self.call("StopBgp", "StopBgp", api.StopBgpRequest())

    # --- peers -------------------------------------------------------------------------------

    async def list_peers(self) -> list[Any]:
        resps = await self.collect("ListPeer", "ListPeer", api.ListPeerRequest())
        return [r.peer for r in resps]

    async def read_peers(self) -> dict[str, PeerSpec]:
        return {p.address: p for p in map(codec.peer_from_pb, await self.list_peers())}

    async def sync_peers(self, peers: Iterable[PeerSpec]) -> None:
        wanted = _by_address(peers)
        current = await self.read_peers()
        for address in sorted(current.keys() - wanted.keys()):
            await self._delete_peer(address)
        for address, spec in sorted(wanted.items()):
            have = current.get(address)
            if have == canon.canonical_peer(spec):
                continue
            if have is not None:
                log.info(
                    "BGP neighbour %s changed (%s); re-adding it",
                    address,
                    ", ".join(canon.changed_fields(have, canon.canonical_peer(spec))),
                )
                await self._delete_peer(address)
            request = api.AddPeerRequest(peer=codec.peer_to_pb(spec))
            await self.call(f"AddPeer {address}", "AddPeer", request)

    async def _delete_peer(self, address: str) -> None:
        request = api.DeletePeerRequest(address=address)
        await self.call(f"DeletePeer {address}", "DeletePeer", request)

    async def peer_status(self) -> list[PeerStatus]:
        return [codec.peer_status(p) for p in await self.list_peers()]

    # --- paths -------------------------------------------------------------------------------

    async def read_paths(self) -> dict[str, PathSpec]:
        """Our own paths in gobgpd's global RIB, by prefix; {} when BGP is not started."""
        if await self.get_global() is None:
            return {}
        paths: dict[str, PathSpec] = {}
        for family in (IPV4, IPV6):
            request = api.ListPathRequest(table_type=api.GLOBAL, family=codec.family_pb(family))
            for resp in await self.collect(f"ListPath {family}", "ListPath", request):
                for path in resp.destination.paths:
                    if codec.is_local(path):
                        spec = codec.path_from_pb(path)
                        paths[spec.prefix] = spec
        return paths

    async def sync_paths(self, paths: Iterable[PathSpec]) -> None:
        wanted = _by_prefix(paths)
        if await self.get_global() is None:
            raise EngineError("gobgpd AddPathStream: bgp server hasn't started yet")
        current = await self.read_paths()
        changes: list[api.Path] = []
        for prefix in sorted(current.keys() - wanted.keys()):
            path = codec.path_to_pb(current[prefix])
            path.is_withdraw = True
            changes.append(path)
        changes.extend(
            codec.path_to_pb(spec) for prefix, spec in wanted.items() if current.get(prefix) != spec
        )
        if changes:
            await self._stream_paths(changes)

    async def _stream_paths(self, paths: list[api.Path]) -> None:
        def requests() -> Iterator[api.AddPathStreamRequest]:
            for start in range(0, len(paths), PATHS_PER_MESSAGE):
                chunk = paths[start : start + PATHS_PER_MESSAGE]
                yield api.AddPathStreamRequest(table_type=api.GLOBAL, paths=chunk)

        try:
            await self._api().AddPathStream(requests(), timeout=self._timeout)
        except grpc.RpcError as err:
            raise wrap_error(f"AddPathStream ({len(paths)} paths)", err) from err

    # --- policies ----------------------------------------------------------------------------

    async def sync_policies(self, state: PolicyState) -> None:
        # A gobgpd that never ran StartBgp refuses ListDefinedSet ("invalid defined-set type").
        if await self.get_global() is None:
            raise EngineError("gobgpd AddDefinedSet: bgp server hasn't started yet")
        await PolicySync(self).sync(state)

    # --- watching ----------------------------------------------------------------------------

    def watch_routes(self) -> AsyncIterator[RouteEvent]:
        request = api.WatchEventRequest()
        request.table.filters.append(
            api.WatchEventRequest.Table.Filter(
                type=api.WatchEventRequest.Table.Filter.BEST, init=True
            )
        )
        return self._watch_routes(request)

    async def _watch_routes(self, request: api.WatchEventRequest) -> AsyncIterator[RouteEvent]:
        async for resp in self._watch("WatchEvent(table)", request):
            for path in resp.table.paths:
                try:
                    event = codec.route_event(path)
                except (codec.CodecError, canon.InvalidSpec) as err:
                    log.warning("gobgpd sent a path the agent cannot use: %s", err)
                    continue
                if event is not None:
                    yield event

    def watch_peers(self) -> AsyncIterator[PeerEvent]:
        request = api.WatchEventRequest()
        request.peer.SetInParent()
        return self._watch_peers(request)

    async def _watch_peers(self, request: api.WatchEventRequest) -> AsyncIterator[PeerEvent]:
        async for resp in self._watch("WatchEvent(peer)", request):
            if resp.HasField("peer"):
                event = codec.peer_event(resp.peer)
                if event is not None:
                    yield event

    async def _watch(self, request: str, message: Any) -> AsyncIterator[Any]:
        """The responses of a WatchEvent stream; it ends quietly when gobgpd goes."""
        call = self._api().WatchEvent(message)
        try:
            async for resp in call:
                yield resp
        except grpc.RpcError as err:
            if err.code() in _GONE:
                log.info("gobgpd %s ended: %s", request, err.details())
                return
            raise wrap_error(request, err) from err
        finally:
            call.cancel()

    # --- reading back ------------------------------------------------------------------------

    async def read_state(self) -> canon.BgpState:
        """Everything gobgpd holds, canonical (the same shape as ``FakeEngine.read_state``).

        Only the global settings and peers while BGP is not started.
        """
        policies = PolicySync(self)
        state = canon.BgpState(global_=await self.get_global())
        state.peers = await self.read_peers()
        if state.global_ is None:  # policies are unreadable before StartBgp, dropped by it
            return state
        state.paths = await self.read_paths()
        state.defined_sets = await policies.read_defined_sets()
        state.export, state.import_ = await policies.read_assigned()
        state.policies = frozenset(p.name for p in await policies.list_policies())
        return state

    async def wait_ready(self, timeout_s: float) -> None:
        """Until gobgpd answers GetBgp, or EngineUnavailable after ``timeout_s``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                await self.get_global()
                return
            except EngineUnavailable:
                if asyncio.get_running_loop().time() >= deadline:
                    raise
                await asyncio.sleep(0.05)


def _by_address(peers: Iterable[PeerSpec]) -> dict[str, PeerSpec]:
    wanted: dict[str, PeerSpec] = {}
    for spec in peers:
        address = canon.canonical_address(spec.address)
        if address in wanted and wanted[address] != spec:
            raise EngineError(f"two different neighbours with address {address}")
        wanted[address] = spec
    return wanted


def _by_prefix(paths: Iterable[PathSpec]) -> dict[str, PathSpec]:
    wanted: dict[str, PathSpec] = {}
    for spec in paths:
        path = canon.canonical_path(spec)
        if path.prefix in wanted and wanted[path.prefix] != path:
            raise EngineError(f"two different paths for prefix {path.prefix}")
        wanted[path.prefix] = path
    return wanted

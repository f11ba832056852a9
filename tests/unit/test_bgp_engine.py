"""The BGP engine port: the same scenarios on a real gobgpd (over gRPC) and on the fake.

Each scenario drives both engines with the same calls, then compares what each holds, read back
(``read_state()``: ListPeer, ListPath, ListDefinedSet, ListPolicy, ListPolicyAssignment on the
real one), and checks the scenario's own expectations. So the fake is proven against gobgpd.
gobgpd runs without a listener (listen_port -1) with its API on a unix socket in a temp dir.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from kube_router.bgp.canon import BgpState, canonical_peer
from kube_router.bgp.engine import BgpEngine, EngineError
from kube_router.bgp.fake import FakeEngine
from kube_router.bgp.grpc_engine import GrpcEngine
from kube_router.bgp.model import (
    IPV4,
    IPV6,
    Action,
    DefinedSetSpec,
    DefinedType,
    GlobalSpec,
    GracefulRestart,
    PathSpec,
    PeerSpec,
    PolicySpec,
    PolicyState,
    PrefixMatch,
    StatementSpec,
)

pytestmark = pytest.mark.skipif(shutil.which("gobgpd") is None, reason="gobgpd not installed")

GLOBAL = GlobalSpec(asn=64512, router_id="192.168.77.1", listen_port=-1)
GR = GracefulRestart(enabled=True, restart_time=120, deferral_time=300)
NODE2 = PeerSpec("192.168.77.2", 64512, local_address="192.168.77.1", internal=True)
NODE3 = PeerSpec("192.168.77.3", 64512, hold_time=30, graceful_restart=GR, internal=True)
ROUTER = PeerSpec(
    "192.168.77.254",
    64600,
    password="s3cret",
    multihop_ttl=5,
    families=(IPV4, IPV6),
    port=1179,
    keepalive=7,
)
RR_CLIENT = PeerSpec("192.168.77.4", 64512, rr_client=True, rr_cluster_id="192.168.77.1")
POD_V4 = PathSpec("10.244.1.0/24", "192.168.77.1")
POD_V6 = PathSpec("2001:db8:1::/64", "fd00:77::1")
VIP = PathSpec("10.96.0.10/32", "192.168.77.1", communities=(64512 << 16 | 100, 0xFFFFFF01))

POD_SET = DefinedSetSpec(
    "podcidrdefinedset", DefinedType.PREFIX, prefixes=(PrefixMatch("10.244.1.0/24", 24, 24),)
)
VIP_SET = DefinedSetSpec(
    "servicevipsdefinedset", DefinedType.PREFIX, prefixes=(PrefixMatch("10.96.0.10/32", 32, 32),)
)
IBGP_SET = DefinedSetSpec(
    "iBGPpeerset", DefinedType.NEIGHBOR, members=("192.168.77.2/32", "192.168.77.3")
)
EXT_SET = DefinedSetSpec("externalpeerset", DefinedType.NEIGHBOR, members=("192.168.77.254/32",))
COMM_SET = DefinedSetSpec("communityset", DefinedType.COMMUNITY, members=("64512:1", "no-export"))
EXPORT = PolicySpec(
    (
        StatementSpec("podcidrdefinedsetiBGPpeerset", "podcidrdefinedset", "iBGPpeerset"),
        StatementSpec(
            "servicevipsdefinedsetexternalpeerset",
            "servicevipsdefinedset",
            "externalpeerset",
            add_communities=("64512:100", "no-export"),
            prepend_asn=64512,
            prepend_repeat=2,
            next_hop_self=True,
        ),
    )
)
IMPORT = PolicySpec(
    (StatementSpec("servicevipsdefinedsetallpeerset", "servicevipsdefinedset", "", Action.REJECT),)
)
POLICIES = PolicyState((POD_SET, VIP_SET, IBGP_SET, EXT_SET, COMM_SET), EXPORT, IMPORT)

Step = Callable[[BgpEngine], Awaitable[None]]
Check = Callable[[BgpState], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]
    check: Check
    error: str = ""  # the last step raises EngineError containing this


def start(spec: GlobalSpec = GLOBAL) -> Step:
    return lambda e: e.ensure_global(spec)


def peers(*specs: PeerSpec) -> Step:
    return lambda e: e.sync_peers(specs)


def paths(*specs: PathSpec) -> Step:
    return lambda e: e.sync_paths(specs)


def policies(state: PolicyState) -> Step:
    return lambda e: e.sync_policies(state)


def stop() -> Step:
    return lambda e: e.stop_bgp()


def _peers_are(*specs: PeerSpec) -> Check:
    def check(state: BgpState) -> None:
        assert state.peers == {canonical_peer(s).address: canonical_peer(s) for s in specs}

    return check


def _paths_are(*prefix_next_hops: tuple[str, str]) -> Check:
    def check(state: BgpState) -> None:
        assert {p: s.next_hop for p, s in state.paths.items()} == dict(prefix_next_hops)

    return check


def _policies_v1(state: BgpState) -> None:
    assert state.export is not None and state.import_ is not None
    assert (state.export.name, state.export.default_action) == (
        "kube_router_export1",
        Action.REJECT,
    )
    assert (state.import_.name, state.import_.default_action) == (
        "kube_router_import1",
        Action.ACCEPT,
    )
    stmt = state.export.policy.statements[1]
    assert stmt.add_communities == ("64512:100", "65535:65281")
    assert state.defined_sets[(DefinedType.NEIGHBOR, "iBGPpeerset")].members == (
        "192.168.77.2/32",
        "192.168.77.3/32",
    )
    assert state.defined_sets[(DefinedType.COMMUNITY, "communityset")].members == (
        "64512:1",
        "65535:65281",
    )
    assert state.policies == {"kube_router_export1", "kube_router_import1"}


def _export_v2_import_gone(state: BgpState) -> None:
    assert state.export is not None and state.export.name == "kube_router_export2"
    assert state.export.policy.statements[0].action is Action.REJECT
    assert state.import_ is None
    assert state.policies == {"kube_router_export2"}
    # the sets the old policies used and no one wants any more are gone
    assert set(state.defined_sets) == {
        (DefinedType.PREFIX, "podcidrdefinedset"),
        (DefinedType.NEIGHBOR, "iBGPpeerset"),
    }
    assert state.defined_sets[(DefinedType.NEIGHBOR, "iBGPpeerset")].members == ("192.168.77.9/32",)


def _everything_dropped(state: BgpState) -> None:
    assert state.global_ is not None and state.global_.asn == 65001
    assert (state.peers, state.paths, state.defined_sets, state.policies) == ({}, {}, {}, set())


def _stopped(state: BgpState) -> None:
    assert state.global_ is None and state.peers == {} and state.paths == {}


POD_TO_IBGP = StatementSpec("podcidrdefinedsetiBGPpeerset", "podcidrdefinedset", "iBGPpeerset")
EXPORT_V2 = PolicySpec((StatementSpec(**{**POD_TO_IBGP.__dict__, "action": Action.REJECT}),))
BAD_COMMUNITY = PolicySpec((StatementSpec("a", add_communities=("x:1",)),))
IBGP_V2 = DefinedSetSpec("iBGPpeerset", DefinedType.NEIGHBOR, members=("192.168.77.9/32",))
MIXED = DefinedSetSpec(
    "mixed",
    DefinedType.PREFIX,
    prefixes=(PrefixMatch("10.0.0.0/8", 8, 32), PrefixMatch("fd00::/8", 8, 128)),
)
DUP_STMTS = PolicySpec((StatementSpec("a"), StatementSpec("a", action=Action.REJECT)))


def _check_global(state: BgpState) -> None:
    assert state.global_ == GlobalSpec(64512, "192.168.77.1", -1, ("0.0.0.0", "::"))


def _check_password(state: BgpState, password: str) -> None:
    assert state.peers["192.168.77.254"].password == password


def _check_paths(state: BgpState) -> None:
    assert state.paths == {
        "10.244.1.0/24": PathSpec("10.244.1.0/24", "192.168.77.1"),
        "2001:db8:1::/64": PathSpec("2001:db8:1::/64", "fd00:77::1"),
        "10.96.0.10/32": PathSpec("10.96.0.10/32", "192.168.77.1", (64512 << 16 | 100, 0xFFFFFF01)),
    }


def _check_no_policies(state: BgpState) -> None:
    assert (state.export, state.import_, state.policies, state.defined_sets) == (
        None,
        None,
        set(),
        {},
    )


SCENARIOS = [
    Scenario("start", (start(),), _check_global),
    Scenario(
        "peers of every kind",
        (start(), peers(NODE2, NODE3, ROUTER, RR_CLIENT)),
        _peers_are(NODE2, NODE3, ROUTER, RR_CLIENT),
    ),
    Scenario(
        "peers added, changed and deleted",
        (
            start(),
            peers(NODE2, NODE3, ROUTER),
            peers(NODE2, PeerSpec("192.168.77.3", 64512, hold_time=60), RR_CLIENT),
        ),
        _peers_are(NODE2, PeerSpec("192.168.77.3", 64512, hold_time=60), RR_CLIENT),
    ),
    Scenario(
        "a password change re-adds the peer",
        (start(), peers(ROUTER), peers(PeerSpec(**{**ROUTER.__dict__, "password": "other"}))),
        lambda s: _check_password(s, "other"),
    ),
    Scenario(
        "paths v4, v6 and communities",
        (start(), paths(POD_V4, POD_V6, VIP)),
        _check_paths,
    ),
    Scenario(
        "paths changed and withdrawn",
        (
            start(),
            paths(POD_V4, POD_V6, VIP),
            paths(PathSpec("10.244.1.9/24", "192.168.77.5"), VIP),
        ),
        _paths_are(("10.244.1.0/24", "192.168.77.5"), ("10.96.0.10/32", "192.168.77.1")),
    ),
    Scenario("all paths withdrawn", (start(), paths(POD_V4, VIP), paths()), _paths_are()),
    Scenario("policies installed as version 1", (start(), policies(POLICIES)), _policies_v1),
    Scenario(
        "the same policies again keep their version",
        (start(), policies(POLICIES), policies(POLICIES)),
        _policies_v1,
    ),
    Scenario(
        "a changed export is replaced by version 2; import None removes ours",
        (start(), policies(POLICIES), policies(PolicyState((POD_SET, IBGP_V2), EXPORT_V2, None))),
        _export_v2_import_gone,
    ),
    Scenario(
        "no policies at all",
        (start(), policies(POLICIES), policies(PolicyState())),
        _check_no_policies,
    ),
    Scenario(
        "a new AS restarts BGP and drops everything",
        (
            start(),
            peers(NODE2),
            paths(POD_V4),
            policies(POLICIES),
            start(GlobalSpec(65001, "192.168.77.1", -1)),
        ),
        _everything_dropped,
    ),
    Scenario("stop", (start(), peers(NODE2), paths(POD_V4), stop()), _stopped),
    Scenario(
        "peers before start", (peers(NODE2),), _stopped, error="bgp server hasn't started yet"
    ),
    Scenario("paths before start", (paths(POD_V4),), _stopped, error="hasn't started yet"),
    Scenario("policies before start", (policies(POLICIES),), _stopped, error="hasn't started yet"),
    Scenario(
        "a policy naming a missing set",
        (start(), policies(PolicyState((), EXPORT, None))),
        lambda s: None,
        error="not found",
    ),
    Scenario(
        "a prefix set of two families",
        (start(), policies(PolicyState((MIXED,), None, None))),
        lambda s: None,
        error="multiple families",
    ),
    Scenario(
        "two statements of one name",
        (start(), policies(PolicyState((), DUP_STMTS, None))),
        lambda s: None,
        error="already defined",
    ),
    Scenario(
        "an invalid community",
        (start(), policies(PolicyState((), BAD_COMMUNITY, None))),
        lambda s: None,
        error="invalid community",
    ),
    Scenario(
        "two different paths for one prefix",
        (start(), paths(POD_V4, PathSpec("10.244.1.0/24", "192.168.77.9"))),
        _paths_are(),
        error="two different paths",
    ),
]


@pytest.fixture
async def real(gobgpd_target: str) -> AsyncIterator[GrpcEngine]:
    engine = GrpcEngine(gobgpd_target)
    await engine.wait_ready(10)
    if await engine.get_global() is not None:
        await engine.stop_bgp()
    try:
        yield engine
    finally:
        await engine.close()


async def _run(engine: BgpEngine, scenario: Scenario) -> str:
    error = ""
    for i, step in enumerate(scenario.steps):
        try:
            await step(engine)
        except EngineError as err:
            assert i == len(scenario.steps) - 1, f"step {i} failed: {err}"
            error = str(err)
    return error


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_real_and_fake_agree(scenario: Scenario, real: GrpcEngine) -> None:
    fake = FakeEngine()
    errors = [await _run(real, scenario), await _run(fake, scenario)]
    for error in errors:
        if scenario.error:
            assert scenario.error in error
        else:
            assert error == ""
    real_state, fake_state = await real.read_state(), await fake.read_state()
    assert real_state == fake_state
    scenario.check(real_state)


async def test_fake_repeated_sync_makes_no_request() -> None:
    fake = FakeEngine()
    first: list[str] = []
    for round_ in range(2):
        await fake.ensure_global(GLOBAL)
        await fake.sync_peers([NODE2, ROUTER])
        await fake.sync_paths([POD_V4, VIP])
        await fake.sync_policies(POLICIES)
        if round_ == 0:
            first = list(fake.requests)
    assert fake.requests == first


async def test_peer_status_and_internal(real: GrpcEngine) -> None:
    fake = FakeEngine()
    for engine in (real, fake):
        await engine.ensure_global(GLOBAL)
        await engine.sync_peers([NODE2, ROUTER])
    got = [[(p.address, p.asn, p.internal) for p in await e.peer_status()] for e in (real, fake)]
    assert sorted(got[0]) == sorted(got[1])
    assert sorted(got[0]) == [("192.168.77.2", 64512, True), ("192.168.77.254", 64600, False)]

"""BGP policies and defined sets with upstream's names: iBGP, external peers, custom import
reject, prepend and communities, next-hop-self, route reflectors, IPv6 and dual-stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from routing_builders import make_node, make_settings

from kube_router.bgp.model import Action, DefinedSetSpec, DefinedType, PolicyState, StatementSpec
from kube_router.controllers.routing.compile import policies
from kube_router.controllers.routing.compile.settings import RoutingSettings

FIXTURES = Path(__file__).parent.parent / "testdata" / "routing" / "policies.yaml"
CASES: list[dict[str, Any]] = yaml.safe_load(FIXTURES.read_text())
ALL_SET_NAMES = [
    policies.POD_CIDR_SET,
    policies.SERVICE_VIPS_SET,
    policies.DEFAULT_ROUTE_SET,
    policies.CUSTOM_IMPORT_REJECT_SET,
    policies.POD_CIDR_SET_V6,
    policies.SERVICE_VIPS_SET_V6,
    policies.DEFAULT_ROUTE_SET_V6,
    policies.CUSTOM_IMPORT_REJECT_SET_V6,
    policies.IBGP_PEER_SET,
    policies.EXTERNAL_PEER_SET,
    policies.ALL_PEER_SET,
    policies.IBGP_PEER_SET_V6,
    policies.EXTERNAL_PEER_SET_V6,
    policies.ALL_PEER_SET_V6,
]


def _case_settings(case: dict[str, Any]) -> RoutingSettings:
    node = make_node(
        "n1", *case["ips"], annotations=case.get("annotations"), pod_cidrs=case["pod_cidrs"]
    )
    return make_settings(node, *case.get("flags", []))


def _state(case: dict[str, Any]) -> PolicyState:
    return policies.policy_state(
        _case_settings(case),
        ibgp_peer_ips=case["ibgp"],
        external_peer_ips=case["external"],
        vips=case["vips"],
    )


def _members(defined: DefinedSetSpec) -> list[str]:
    if defined.type is DefinedType.PREFIX:
        return sorted(f"{p.prefix} {p.mask_min} {p.mask_max}" for p in defined.prefixes)
    return sorted(defined.members)


def _rows(statements: tuple[StatementSpec, ...]) -> list[list[str]]:
    return [[s.prefix_set, s.neighbor_set, s.action.value] for s in statements]


def _assert_no_empty_references(state: PolicyState) -> None:
    """gobgpd matches anything against an empty set: no statement may name one."""
    filled = {d.name for d in state.defined_sets if d.prefixes or d.members}
    for policy in (state.export, state.import_):
        assert policy is not None
        for statement in policy.statements:
            assert statement.prefix_set in filled
            assert statement.neighbor_set in filled
            assert statement.name == statement.prefix_set + statement.neighbor_set


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_policies(case: dict[str, Any]) -> None:
    state = _state(case)
    assert state.export is not None
    assert state.import_ is not None
    assert _rows(state.export.statements) == case["export"]
    assert _rows(state.import_.statements) == case["import"]
    by_name = {d.name: d for d in state.defined_sets}
    assert list(by_name) == ALL_SET_NAMES  # every set, both families, as upstream keeps them
    for name, defined in by_name.items():
        want = sorted(case["sets"].get(name, []))
        assert _members(defined) == want, name
        kind = DefinedType.NEIGHBOR if "peerset" in name else DefinedType.PREFIX
        assert defined.type is kind
    _assert_no_empty_references(state)


def test_route_reflector_server_gets_no_policies() -> None:
    case = dict(CASES[1], annotations={"kube-router.io/rr.server": "1"})
    assert _state(case) == PolicyState()


EXTERNAL_ANNOTATIONS = {
    "kube-router.io/node.bgp.communities": "64512:100,no-export,4294967041,bad",
    "kube-router.io/path-prepend.as": "65100",
    "kube-router.io/path-prepend.repeat-n": "3",
}


@pytest.mark.parametrize("override", [False, True])
def test_external_statements_carry_prepend_next_hop_self_and_communities(override: bool) -> None:
    node = make_node(
        "n1", "10.1.0.2", annotations=EXTERNAL_ANNOTATIONS, pod_cidrs=["172.20.0.0/24"]
    )
    flags = ["--override-nexthop"] if override else []
    state = policies.policy_state(
        make_settings(node, *flags),
        ibgp_peer_ips=["10.1.0.2", "10.1.0.3"],
        external_peer_ips=["192.168.1.1"],
        vips=["10.96.0.1"],
    )
    assert state.export is not None
    by_name = {s.name: s for s in state.export.statements}
    ibgp = by_name["podcidrdefinedsetiBGPpeerset"]
    assert ibgp == StatementSpec(
        "podcidrdefinedsetiBGPpeerset", "podcidrdefinedset", "iBGPpeerset", Action.ACCEPT
    )  # no prepend, next-hop-self or communities towards iBGP peers
    for name in ("servicevipsdefinedsetexternalpeerset", "podcidrdefinedsetexternalpeerset"):
        statement = by_name[name]
        assert statement.action is Action.ACCEPT
        assert statement.add_communities == ("64512:100", "no-export", "65535:65281")
        assert (statement.prepend_asn, statement.prepend_repeat) == (65100, 3)
        assert statement.next_hop_self is override


def test_import_reject_statements_carry_no_actions_but_reject() -> None:
    node = make_node("n1", "10.1.0.2", annotations=EXTERNAL_ANNOTATIONS)
    state = policies.policy_state(
        make_settings(node, "--override-nexthop"),
        ibgp_peer_ips=["10.1.0.2"],
        external_peer_ips=[],
        vips=[],
    )
    assert state.import_ is not None
    for statement in state.import_.statements:
        assert statement == StatementSpec(
            statement.name, statement.prefix_set, statement.neighbor_set, Action.REJECT
        )


_V4 = st.ip_addresses(v=4).map(str)
_V6 = st.ip_addresses(v=6).map(str).filter(lambda a: "." not in a)  # no IPv4-mapped


@settings(max_examples=60, deadline=None)
@given(
    flags=st.lists(
        st.sampled_from(
            ["--enable-ibgp=false", "--advertise-pod-cidr=false", "--override-nexthop"]
        ),
        unique=True,
    ),
    pods=st.lists(st.sampled_from(["10.244.1.0/24", "fd00:244:1::/64"]), unique=True),
    ibgp=st.lists(_V4 | _V6, max_size=3),
    external=st.lists(_V4 | _V6, max_size=3),
    vips=st.lists(_V4 | _V6, max_size=3),
    reject=st.lists(st.sampled_from(["10.0.0.0/8", "2001:db8::/32"]), unique=True),
)
def test_no_statement_ever_names_an_empty_set(
    flags: list[str],
    pods: list[str],
    ibgp: list[str],
    external: list[str],
    vips: list[str],
    reject: list[str],
) -> None:
    annotations = {"kube-router.io/node.bgp.customimportreject": ",".join(reject)}
    node = make_node("n1", "10.1.0.2", "fd00::2", annotations=annotations, pod_cidrs=pods)
    state = policies.policy_state(
        make_settings(node, "--enable-ipv6", *flags),
        ibgp_peer_ips=ibgp,
        external_peer_ips=external,
        vips=vips,
    )
    _assert_no_empty_references(state)
    assert state.export is not None
    names = [s.name for s in state.export.statements]
    assert len(names) == len(set(names))
    if "--advertise-pod-cidr=false" in flags:
        assert not any(n.startswith("podcidr") and "external" in n for n in names)
    if "--enable-ibgp=false" in flags:
        assert not any("iBGP" in n for n in names)

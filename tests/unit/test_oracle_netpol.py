"""The NetworkPolicy oracle against the Kubernetes documentation's own examples and statements.

Citations: "concepts" is https://kubernetes.io/docs/concepts/services-networking/network-policies/,
"API" is the networking.k8s.io/v1 NetworkPolicy reference, "labels" is
https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/ and "LabelSelector" is
the meta/v1 LabelSelector reference.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from kube_router.k8s.models import Namespace, NetworkPolicy, Pod
from oracle.netpol import OracleError, World, allowed, egress_allowed, ingress_allowed, pod_by_ip

Spec = dict[str, Any]

# Pod IPs (names in comments are namespace/name).
DB, DB6 = "10.1.0.10", "fd00::10"  # default/db role=db, ports redis 6379/TCP, dns 53/UDP
FRONT = "10.1.0.11"  # default/frontend role=frontend tier=web
CLIENT = "10.1.0.12"  # default/client role=client
NOLABEL = "10.1.0.13"  # default/nolabel, no labels
DUAL, DUAL6 = "10.1.0.20", "fd00::20"  # default/dual role=dual, dual-stack
HOST = "192.168.0.5"  # default/host role=frontend, hostNetwork
DONE, FAILED = "10.1.0.50", "10.1.0.51"  # default/done, default/failed role=frontend, finished
APP, MYFRONT = "10.1.1.10", "10.1.1.11"  # myproject/app role=app, myproject/frontend
OTHERFRONT = "10.1.2.11"  # other/frontend role=frontend
OUTSIDE = "8.8.8.8"


def _pod(
    ns: str,
    name: str,
    ips: list[str],
    labels: dict[str, str] | None = None,
    *,
    ports: list[dict[str, Any]] | None = None,
    host_network: bool = False,
    phase: str = "Running",
) -> Pod:
    container = {"name": "c", "ports": ports or []}
    body = {
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"hostNetwork": host_network, "containers": [container]},
        "status": {"phase": phase, "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]},
    }
    return msgspec.convert(body, Pod)


def _ns(name: str, labels: dict[str, str]) -> Namespace:
    return msgspec.convert({"metadata": {"name": name, "labels": labels}}, Namespace)


def _policy(spec: Spec, ns: str, name: str) -> NetworkPolicy:
    body = {"metadata": {"name": name, "namespace": ns}, "spec": spec}
    return msgspec.convert(body, NetworkPolicy)


REDIS = {"name": "redis", "containerPort": 6379, "protocol": "TCP"}
DNS = {"name": "dns", "containerPort": 53, "protocol": "UDP"}
FRONTEND = {"role": "frontend"}
PODS = [
    _pod("default", "db", [DB, DB6], {"role": "db"}, ports=[REDIS, DNS]),
    _pod("default", "frontend", [FRONT], {"role": "frontend", "tier": "web"}),
    _pod("default", "client", [CLIENT], {"role": "client"}),
    _pod("default", "nolabel", [NOLABEL]),
    _pod("default", "dual", [DUAL, DUAL6], {"role": "dual"}),
    _pod("default", "host", [HOST], FRONTEND, host_network=True),
    _pod("default", "done", [DONE], FRONTEND, phase="Succeeded"),
    _pod("default", "failed", [FAILED], FRONTEND, phase="Failed"),
    _pod("myproject", "app", [APP], {"role": "app"}),
    _pod("myproject", "frontend", [MYFRONT], FRONTEND),
    _pod("other", "frontend", [OTHERFRONT], FRONTEND),
]
NAME = "kubernetes.io/metadata.name"
NAMESPACES = [
    _ns("default", {NAME: "default"}),
    _ns("myproject", {NAME: "myproject", "project": "myproject"}),
    _ns("other", {NAME: "other", "project": "other"}),
]


def _world(*specs: Spec) -> World:
    policies = [_policy(spec, "default", f"p{i}") for i, spec in enumerate(specs)]
    return World(PODS, NAMESPACES, policies)


def _sel(**labels: str) -> Spec:
    return {"matchLabels": labels}


def _expr(key: str, operator: str, *values: str) -> Spec:
    return {"matchExpressions": [{"key": key, "operator": operator, "values": list(values)}]}


def _rule(peers_key: str, peers: list[Spec] | None, ports: list[Spec] | None) -> Spec:
    rule: Spec = {}
    if peers is not None:
        rule[peers_key] = peers
    if ports is not None:
        rule["ports"] = ports
    return rule


def _in(peers: list[Spec] | None = None, ports: list[Spec] | None = None) -> Spec:
    """Ingress-only policy on default/db with one rule."""
    rule = _rule("from", peers, ports)
    return {"podSelector": _sel(role="db"), "policyTypes": ["Ingress"], "ingress": [rule]}


def _out(role: str, peers: list[Spec] | None = None, ports: list[Spec] | None = None) -> Spec:
    """Egress-only policy on the role=<role> pods of default with one rule."""
    rule = _rule("to", peers, ports)
    return {"podSelector": _sel(role=role), "policyTypes": ["Egress"], "egress": [rule]}


def _pods(selector: Spec) -> Spec:
    """Ingress to db from the pods of default matching ``selector``."""
    return _in([{"podSelector": selector}])


def _block(cidr: str, *excepts: str) -> Spec:
    return {"ipBlock": {"cidr": cidr, "except": list(excepts)}}


# concepts "Default policies".
DENY_IN: Spec = {"podSelector": {}, "policyTypes": ["Ingress"]}
ALLOW_IN: Spec = {"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]}
DENY_OUT: Spec = {"podSelector": {}, "policyTypes": ["Egress"]}
ALLOW_OUT: Spec = {"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]}
DENY_ALL: Spec = {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}

# concepts "The NetworkPolicy resource": the example test-network-policy.
TNP: Spec = {
    "podSelector": _sel(role="db"),
    "policyTypes": ["Ingress", "Egress"],
    "ingress": [
        {
            "from": [
                _block("172.17.0.0/16", "172.17.1.0/24"),
                {"namespaceSelector": _sel(project="myproject")},
                {"podSelector": _sel(role="frontend")},
            ],
            "ports": [{"protocol": "TCP", "port": 6379}],
        }
    ],
    "egress": [{"to": [_block("10.0.0.0/24")], "ports": [{"protocol": "TCP", "port": 5978}]}],
}

# concepts "Behavior of to and from selectors": one peer with both selectors vs two peers.
MYPROJECT = {"namespaceSelector": _sel(project="myproject")}
AND_PEER = _in([{**MYPROJECT, "podSelector": _sel(role="frontend")}])
OR_PEERS = _in([MYPROJECT, {"podSelector": _sel(role="frontend")}])
ALL_NS_FRONT = _in([{"namespaceSelector": {}, "podSelector": _sel(role="frontend")}])
ALL_NS = _in([{"namespaceSelector": {}}])

# concepts "Targeting a range of ports": port 32000, endPort 32768.
RANGE = _out("db", [_block("10.0.0.0/24")], [{"protocol": "TCP", "port": 32000, "endPort": 32768}])

# API NetworkPolicyPort.port: "a numerical or named port on a pod".
NAMED = _in(None, [{"port": "redis"}])
NAMED_UDP = _in(None, [{"protocol": "UDP", "port": "redis"}])
NAMED_DNS = _in(None, [{"protocol": "UDP", "port": "dns"}])
NAMED_FRONT = {
    "podSelector": _sel(role="frontend"),
    "policyTypes": ["Ingress"],
    "ingress": [{"ports": [{"port": "redis"}]}],
}
NAMED_OUT = _out("client", None, [{"port": "redis"}])

# API NetworkPolicySpec.policyTypes defaulting.
NO_TYPES = {"podSelector": _sel(role="client"), "egress": [{"to": [_block("10.0.0.0/24")]}]}
IN_TYPE = {**NO_TYPES, "policyTypes": ["Ingress"]}

# Peers by IP block, port lists.
HOST_NET = _in([_block("192.168.0.0/24")])
DONE_IP = _in([_block("10.1.0.50/32")])
V6 = _in([_block("2001:db8::/32", "2001:db8:1::/48")])
V4_ALL = _in([_block("0.0.0.0/0")])
HOST_BITS = _in([_block("172.17.0.1/16")])
POD_NET = _in([_block("10.1.0.0/24")])
SCTP = _in(None, [{"protocol": "SCTP", "port": 7777}])
TCP_DEFAULT = _in(None, [{"port": 7777}])
ANY_UDP = _in(None, [{"protocol": "UDP"}])

# LabelSelector operators.
IN_ = _pods(_expr("role", "In", "frontend", "client"))
NOTIN = _pods(_expr("role", "NotIn", "frontend"))
EXISTS = _pods(_expr("tier", "Exists"))
DNE = _pods(_expr("tier", "DoesNotExist"))
AND_BAD = _pods({**_sel(role="frontend"), **_expr("tier", "In", "db")})
AND_OK = _pods({**_sel(role="frontend"), **_expr("tier", "In", "web")})
NS_NOTIN = _in([{"namespaceSelector": _expr("project", "NotIn", "myproject")}])
NS_NAME = _in([{"namespaceSelector": _sel(**{NAME: "other"})}])
FROM_FRONT, FROM_CLIENT = _pods(_sel(role="frontend")), _pods(_sel(role="client"))
FROM_ALL, FROM_DUAL = _pods({}), _pods(_sel(role="dual"))


def _c(
    case: str, specs: list[Spec], src: str, dst: str, port: int, ok: bool, proto: str = "TCP"
) -> Any:
    return pytest.param(specs, src, dst, port, proto, ok, id=case)


CASES = [
    # concepts "Default deny all ingress traffic": selected pods are isolated for ingress...
    _c("deny-in/pod", [DENY_IN], CLIENT, FRONT, 80, False),
    _c("deny-in/other-ns-src", [DENY_IN], APP, FRONT, 80, False),
    _c("deny-in/external-src", [DENY_IN], OUTSIDE, FRONT, 80, False),
    # ..."will not change the default egress isolation behavior".
    _c("deny-in/egress-free", [DENY_IN], FRONT, OUTSIDE, 80, True),
    _c("deny-in/other-ns-dst", [DENY_IN], FRONT, APP, 80, True),
    # concepts "Allow all ingress traffic": no additional policy can cause it to be denied.
    _c("allow-in/with-deny", [DENY_IN, ALLOW_IN], CLIENT, FRONT, 80, True),
    _c("allow-in/external", [ALLOW_IN], OUTSIDE, FRONT, 9, True, "UDP"),
    # concepts "Default deny all egress traffic".
    _c("deny-out/external", [DENY_OUT], CLIENT, OUTSIDE, 53, False, "UDP"),
    _c("deny-out/pod", [DENY_OUT], CLIENT, FRONT, 80, False),
    _c("deny-out/ingress-free", [DENY_OUT], APP, FRONT, 80, True),
    # concepts "Allow all egress traffic".
    _c("allow-out/with-deny", [DENY_OUT, ALLOW_OUT], CLIENT, OUTSIDE, 443, True),
    # concepts "Default deny all ingress and all egress traffic".
    _c("deny-all/in-ns", [DENY_ALL], CLIENT, FRONT, 80, False),
    _c("deny-all/from-outside-ns", [DENY_ALL], APP, FRONT, 80, False),
    _c("deny-all/to-outside-ns", [DENY_ALL], FRONT, APP, 80, False),
    _c("deny-all/unselected-ns", [DENY_ALL], APP, MYFRONT, 80, True),
    # concepts test-network-policy: ingress to role=db on TCP 6379 from role=frontend pods of
    # default, any pod of a project=myproject namespace, 172.17.0.0/16 except 172.17.1.0/24...
    _c("tnp/frontend", [TNP], FRONT, DB, 6379, True),
    _c("tnp/myproject-any-pod", [TNP], APP, DB, 6379, True),
    _c("tnp/frontend-other-ns", [TNP], OTHERFRONT, DB, 6379, False),
    _c("tnp/client", [TNP], CLIENT, DB, 6379, False),
    _c("tnp/block-low", [TNP], "172.17.0.5", DB, 6379, True),
    _c("tnp/block-except", [TNP], "172.17.1.5", DB, 6379, False),
    _c("tnp/block-high", [TNP], "172.17.255.254", DB, 6379, True),
    _c("tnp/outside-block", [TNP], "172.18.0.1", DB, 6379, False),
    _c("tnp/wrong-port", [TNP], FRONT, DB, 6380, False),
    _c("tnp/wrong-protocol", [TNP], FRONT, DB, 6379, False, "UDP"),
    # ...and egress from role=db to 10.0.0.0/24 on TCP 5978 only (db is isolated for egress).
    _c("tnp/egress-ok", [TNP], DB, "10.0.0.7", 5978, True),
    _c("tnp/egress-port", [TNP], DB, "10.0.0.7", 5979, False),
    _c("tnp/egress-cidr", [TNP], DB, "10.0.1.7", 5978, False),
    _c("tnp/egress-to-pod", [TNP], DB, FRONT, 80, False),
    _c("tnp/unselected-pods", [TNP], FRONT, CLIENT, 80, True),
    # concepts "Behavior of to and from selectors": one element = AND, two elements = OR.
    _c("and/both-match", [AND_PEER], MYFRONT, DB, 1, True),
    _c("and/ns-only", [AND_PEER], APP, DB, 1, False),
    _c("and/pod-only", [AND_PEER], FRONT, DB, 1, False),
    _c("or/ns", [OR_PEERS], APP, DB, 1, True),
    _c("or/pod-local", [OR_PEERS], FRONT, DB, 1, True),
    _c("or/neither", [OR_PEERS], OTHERFRONT, DB, 1, False),
    # API NetworkPolicyPeer: an empty namespaceSelector selects all namespaces (pods only).
    _c("all-ns/pod", [ALL_NS_FRONT], OTHERFRONT, DB, 1, True),
    _c("all-ns/not-pod", [ALL_NS], OUTSIDE, DB, 1, False),
    # concepts "Targeting a range of ports": 32000 through 32768 inclusive.
    _c("range/low", [RANGE], DB, "10.0.0.7", 32000, True),
    _c("range/high", [RANGE], DB, "10.0.0.7", 32768, True),
    _c("range/below", [RANGE], DB, "10.0.0.7", 31999, False),
    _c("range/above", [RANGE], DB, "10.0.0.7", 32769, False),
    _c("range/udp", [RANGE], DB, "10.0.0.7", 32500, False, "UDP"),
    # API NetworkPolicyPort.port: a named port is resolved on the destination pod.
    _c("named/match", [NAMED], FRONT, DB, 6379, True),
    _c("named/other-number", [NAMED], FRONT, DB, 6380, False),
    _c("named/protocol-mismatch", [NAMED_UDP], FRONT, DB, 6379, False, "UDP"),
    _c("named/udp", [NAMED_DNS], FRONT, DB, 53, True, "UDP"),
    _c("named/udp-as-tcp", [NAMED_DNS], FRONT, DB, 53, False),
    _c("named/other-pod-only", [NAMED_FRONT], CLIENT, FRONT, 6379, False),
    _c("named/egress-match", [NAMED_OUT], CLIENT, DB, 6379, True),
    _c("named/egress-other-pod", [NAMED_OUT], CLIENT, FRONT, 6379, False),
    _c("named/egress-not-pod", [NAMED_OUT], CLIENT, OUTSIDE, 6379, False),
    # API policyTypes: "Egress will be set if the NetworkPolicy has any egress rules"...
    _c("types/default-egress-enforced", [NO_TYPES], CLIENT, OUTSIDE, 80, False),
    _c("types/default-egress-allowed", [NO_TYPES], CLIENT, "10.0.0.7", 80, True),
    _c("types/default-ingress-always", [NO_TYPES], FRONT, CLIENT, 80, False),
    # ...while an explicit policyTypes [Ingress] leaves egress unenforced despite egress rules.
    _c("types/ingress-only-egress-free", [IN_TYPE], CLIENT, OUTSIDE, 80, True),
    _c("types/ingress-only-ingress-denied", [IN_TYPE], FRONT, CLIENT, 80, False),
    # concepts "NetworkPolicies and hostNetwork pods": the common implementation ignores
    # hostNetwork pods in selectors and treats their traffic like the node IP's.
    _c("host/not-isolated", [DENY_ALL], HOST, OUTSIDE, 80, True),
    _c("host/dst-not-isolated", [DENY_IN], CLIENT, HOST, 80, True),
    _c("host/not-selected", [FROM_ALL], HOST, DB, 80, False),
    _c("host/ipblock", [HOST_NET], HOST, DB, 80, True),
    # No docs statement; the brief's convention: a Succeeded/Failed pod is not a pod for policy.
    _c("done/not-isolated", [DENY_ALL], OUTSIDE, DONE, 80, True),
    _c("done/not-selected", [FROM_FRONT], DONE, DB, 80, False),
    _c("failed/not-selected", [FROM_ALL], FAILED, DB, 80, False),
    _c("done/ipblock", [DONE_IP], DONE, DB, 80, True),
    # concepts / API "IPv4/IPv6 dual-stack": a pod is selected whichever of its IPs is used.
    _c("dual/v6-selected", [FROM_DUAL], DUAL6, DB6, 6379, True),
    _c("dual/v4-selected", [FROM_DUAL], DUAL, DB, 6379, True),
    _c("dual/v6-isolated", [DENY_IN], DUAL6, DB6, 6379, False),
    _c("dual/v6-other-addr", [FROM_DUAL], "fd00::99", DB6, 1, False),
    # API IPBlock: "Valid examples are 192.168.1.0/24 or 2001:db8::/64" (both families; the
    # older "192.168.1.1/24" example has host bits set).
    _c("v6block/inside", [V6], "2001:db8::5", DB6, 1, True),
    _c("v6block/except", [V6], "2001:db8:1::5", DB6, 1, False),
    _c("v6block/v4-src", [V6], "10.0.0.1", DB, 1, False),
    _c("v4block/v6-src", [V4_ALL], "2001:db8::5", DB6, 1, False),
    _c("v4block/host-bits", [HOST_BITS], "172.17.9.9", DB, 1, True),
    _c("v4block/pod-ip", [POD_NET], FRONT, DB, 1, True),
    # API NetworkPolicyPort.protocol: "TCP, UDP, or SCTP ... defaults to TCP"; no port = all.
    _c("sctp/match", [SCTP], FRONT, DB, 7777, True, "SCTP"),
    _c("sctp/tcp", [SCTP], FRONT, DB, 7777, False),
    _c("default-tcp/tcp", [TCP_DEFAULT], FRONT, DB, 7777, True),
    _c("default-tcp/sctp", [TCP_DEFAULT], FRONT, DB, 7777, False, "SCTP"),
    _c("any-port/udp", [ANY_UDP], FRONT, DB, 12345, True, "UDP"),
    _c("any-port/tcp", [ANY_UDP], FRONT, DB, 12345, False),
    # labels "Set-based requirement" and LabelSelector: each operator; "notin" also selects
    # "all resources with no labels with the tier key".
    _c("in/match", [IN_], CLIENT, DB, 1, True),
    _c("in/no-match", [IN_], DUAL, DB, 1, False),
    _c("in/absent", [IN_], NOLABEL, DB, 1, False),
    _c("notin/match", [NOTIN], CLIENT, DB, 1, True),
    _c("notin/excluded", [NOTIN], FRONT, DB, 1, False),
    _c("notin/absent", [NOTIN], NOLABEL, DB, 1, True),
    _c("exists/match", [EXISTS], FRONT, DB, 1, True),
    _c("exists/absent", [EXISTS], CLIENT, DB, 1, False),
    _c("dne/match", [DNE], CLIENT, DB, 1, True),
    _c("dne/present", [DNE], FRONT, DB, 1, False),
    # LabelSelector: "The requirements are ANDed" (matchLabels together with matchExpressions).
    _c("and-req/fail", [AND_BAD], FRONT, DB, 1, False),
    _c("and-req/ok", [AND_OK], FRONT, DB, 1, True),
    _c("ns-expr/notin", [NS_NOTIN], OTHERFRONT, DB, 1, True),
    _c("ns-expr/notin-excluded", [NS_NOTIN], APP, DB, 1, False),
    # concepts "Targeting a Namespace by its name": the kubernetes.io/metadata.name label.
    _c("ns-by-name", [NS_NAME], OTHERFRONT, DB, 1, True),
    # concepts "Network policies do not conflict; they are additive".
    _c("union/first", [FROM_FRONT, FROM_CLIENT], FRONT, DB, 1, True),
    _c("union/second", [FROM_FRONT, FROM_CLIENT], CLIENT, DB, 1, True),
    _c("union/neither", [FROM_FRONT, FROM_CLIENT], DUAL, DB, 1, False),
    # concepts: "both the egress policy on the source pod and the ingress policy on the
    # destination pod need to allow the connection".
    _c("both/egress-blocks", [DENY_OUT, ALLOW_IN], CLIENT, FRONT, 80, False),
    _c("both/ingress-blocks", [ALLOW_OUT, DENY_IN], CLIENT, FRONT, 80, False),
    _c("both/ok", [ALLOW_OUT, ALLOW_IN, DENY_ALL], CLIENT, FRONT, 80, True),
]


@pytest.mark.parametrize(("specs", "src", "dst", "port", "protocol", "expected"), CASES)
def test_documented_verdicts(
    specs: list[Spec], src: str, dst: str, port: int, protocol: str, expected: bool
) -> None:
    assert allowed(_world(*specs), src, dst, port, protocol) is expected


# The smallest fail-open case: p0's empty egress list admits nothing and p1's only egress peer
# matches no pod, so z/a -> z/b is denied on every port (concepts: an isolated direction allows
# only what some rule of some applying policy allows).
FAIL_OPEN_P0 = {"podSelector": {}, "policyTypes": ["Egress"], "egress": []}
FAIL_OPEN_P1 = {
    "podSelector": {},
    "policyTypes": ["Ingress", "Egress"],
    "ingress": [{}],
    "egress": [{"to": [{"podSelector": _sel(app="none")}]}],
}


@pytest.mark.parametrize(("port", "proto"), [(80, "TCP"), (53, "UDP"), (1, "SCTP"), (65535, "TCP")])
def test_fail_open_namespace_z(port: int, proto: str) -> None:
    pods = [_pod("z", "a", ["10.9.0.1"]), _pod("z", "b", ["10.9.0.2"])]
    policies = [_policy(FAIL_OPEN_P0, "z", "p0"), _policy(FAIL_OPEN_P1, "z", "p1")]
    world = World(pods, [_ns("z", {})], policies)
    assert not allowed(world, "10.9.0.1", "10.9.0.2", port, proto)
    # p1's ingress [{}] admits it; the egress leg is the one that denies.
    assert ingress_allowed(world, pods[1], "10.9.0.1", port, proto)
    assert not egress_allowed(world, pods[0], "10.9.0.2", port, proto)


LOOKUPS = [
    ("fd00::20", "dual"),
    ("fd00:0:0::20", "dual"),  # compared as addresses, not strings
    (DUAL, "dual"),
    (DB6, "db"),
    (HOST, None),  # hostNetwork
    (DONE, None),  # Succeeded
    (FAILED, None),  # Failed
    (OUTSIDE, None),
]


@pytest.mark.parametrize(("ip", "name"), LOOKUPS)
def test_pod_by_ip(ip: str, name: str | None) -> None:
    pod = pod_by_ip(_world(), ip)
    assert (pod.metadata.name if pod else None) == name


def test_pod_without_ip_is_not_subject() -> None:
    ipless = msgspec.convert({"metadata": {"name": "x", "namespace": "default"}}, Pod)
    world = _world(DENY_ALL)
    assert egress_allowed(world, ipless, OUTSIDE, 80, "TCP")
    assert ingress_allowed(world, ipless, OUTSIDE, 80, "TCP")


def _bad_port(entry: Spec) -> Spec:
    return _in(None, [entry])


def _bad_block(cidr: str, *excepts: str) -> Spec:
    return _in([_block(cidr, *excepts)])


def _bad_sel(key: str, operator: str, *values: str) -> Spec:
    return _pods(_expr(key, operator, *values))


# API / LabelSelector / IPBlock validation: the API server rejects each of these.
INVALID = [
    pytest.param(_bad_sel("role", "Equals", "db"), id="unknown-operator"),
    pytest.param(_bad_sel("role", "In"), id="in-no-values"),
    pytest.param(_in([{"namespaceSelector": _expr("role", "NotIn")}]), id="notin-no-values"),
    pytest.param(_bad_sel("role", "Exists", "db"), id="exists-values"),
    pytest.param({"podSelector": _expr("r", "DoesNotExist", "x")}, id="dne-values-subject"),
    pytest.param(_bad_port({"port": 32768, "endPort": 32000}), id="endport-below-port"),
    pytest.param(_bad_port({"port": "redis", "endPort": 32000}), id="endport-named"),
    pytest.param(_bad_port({"endPort": 32000}), id="endport-no-port"),
    pytest.param(_bad_port({"port": 1, "endPort": 65536}), id="endport-too-big"),
    pytest.param(_bad_port({"port": 0}), id="port-zero"),
    pytest.param(_bad_port({"port": 65536}), id="port-too-big"),
    pytest.param(_bad_port({"port": "Redis"}), id="named-uppercase"),
    pytest.param(_bad_port({"port": "6379"}), id="named-digits"),
    pytest.param(_bad_port({"protocol": "ICMP", "port": 1}), id="protocol-icmp"),
    pytest.param(_bad_block("not-a-cidr"), id="cidr-garbage"),
    pytest.param(_bad_block("10.0.0.0/33"), id="cidr-prefix"),
    pytest.param(_bad_block("10.0.0.1"), id="cidr-no-prefix"),
    pytest.param(_bad_block("10.0.0.0/24", "10.0.1.0/25"), id="except-outside"),
    pytest.param(_bad_block("10.0.0.0/24", "10.0.0.0/16"), id="except-larger"),
    pytest.param(_bad_block("10.0.0.0/24", "fd00::/64"), id="except-family"),
    pytest.param(_bad_block("10.0.0.0/24", "x"), id="except-garbage"),
    pytest.param(_in([{**_block("10.0.0.0/8"), "podSelector": {}}]), id="ipblock-and-selector"),
    pytest.param(_out("db", [{}]), id="empty-peer"),
    pytest.param({"podSelector": {}, "policyTypes": ["Ingress", "Sideways"]}, id="policy-type"),
]


@pytest.mark.parametrize("spec", INVALID)
def test_invalid_policy_raises(spec: Spec) -> None:
    policies = [_policy(ALLOW_IN, "default", "fine"), _policy(spec, "other", "bad")]
    world = World(PODS, NAMESPACES, policies)
    # Raised even though the bad policy (namespace other) applies to neither pod.
    with pytest.raises(OracleError, match="other/bad"):
        allowed(world, CLIENT, FRONT, 80, "TCP")
    with pytest.raises(OracleError, match="other/bad"):
        ingress_allowed(world, PODS[1], CLIENT, 80, "TCP")


def test_twenty_pods_eight_policies_is_fast() -> None:
    def ip(i: int) -> str:
        return f"10.2.0.{i % 20 + 1}"

    labels = [{"role": f"r{i % 4}"} for i in range(20)]
    pods = [_pod("default", f"p{i}", [ip(i)], labels[i], ports=[REDIS]) for i in range(20)]
    specs = [TNP, AND_PEER, OR_PEERS, RANGE, NAMED, NAMED_OUT, NO_TYPES, DENY_IN]
    policies = [_policy(spec, "default", f"p{i}") for i, spec in enumerate(specs)]
    world = World(pods, NAMESPACES, policies)
    start = time.perf_counter()
    for i in range(200):
        allowed(world, ip(i), ip(i + 7), 6379, "TCP")
    assert time.perf_counter() - start < 1.0  # 5 ms per query at the very worst

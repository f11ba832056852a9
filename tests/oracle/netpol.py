"""Independent oracle for Kubernetes NetworkPolicy (networking.k8s.io/v1) semantics.

Written from the Kubernetes documentation only (the "Network Policies" concepts page, the
networking.k8s.io/v1 API reference for NetworkPolicy, and the meta/v1 LabelSelector reference),
never from the project's policy compiler. It answers one question by brute force: is a single
connection ``src_ip -> dst_ip:port/protocol`` allowed by the policies of a world?

The rules it implements:

* A policy applies to the pods of its own namespace that its ``podSelector`` selects.
* ``policyTypes`` defaults to ``Ingress`` plus ``Egress`` iff the policy has egress rules.
* A pod is isolated in a direction iff an applying policy has that type. A direction that is
  not isolated allows everything; an isolated one allows a connection iff some rule of some
  applying policy of that type admits it (policies are additive; order is irrelevant).
* A rule admits iff one of its peers matches (no peers: everything) and one of its ports
  matches (no ports: everything). A type with no rules admits nothing.
* Only pods with an IP, without ``hostNetwork`` and not in phase Succeeded/Failed count as
  pods, both as policy subjects and as peers matched by selectors. Any other address (a
  hostNetwork pod's, a finished pod's, an outside one) can only match an ``ipBlock``.
* Named ports are looked up on the destination pod (the policy subject for ingress, the pod
  owning the destination IP for egress) and never match a destination that is not a pod.

The slim models cannot tell an absent list from an empty one, so ``ingress: []`` and a missing
``ingress`` are the same here, and so are ``from: []`` and a missing ``from`` (all peers). A
policy the API server would reject makes every query raise :class:`OracleError`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kube_router.k8s.models import (
    IPBlock,
    LabelSelector,
    LabelSelectorRequirement,
    Namespace,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    Pod,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

INGRESS = "Ingress"
EGRESS = "Egress"
PROTOCOLS = frozenset({"TCP", "UDP", "SCTP"})
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
OPERATORS = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})
MAX_PORT = 65535
# IANA_SVC_NAME: at most 15 lowercase letters, digits and single inner hyphens, one letter.
_SVC_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_SVC_NAME_MAX = 15


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> IPAddress:
    """``ipaddress.ip_address``, remembered: a matrix asks for the same few addresses often."""
    return ipaddress.ip_address(text)


@functools.lru_cache(maxsize=4096)
def _network(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=False)


class OracleError(Exception):
    """A policy in the world is invalid per the API, so no answer exists."""


@dataclass(frozen=True)
class World:
    """Everything the verdict depends on."""

    pods: Sequence[Pod]
    namespaces: Sequence[Namespace]
    policies: Sequence[NetworkPolicy]


# --- validation (what the API server would reject) ----------------------------------------------


def _name(policy: NetworkPolicy) -> str:
    return f"NetworkPolicy {policy.metadata.namespace}/{policy.metadata.name}"


def _check_selector(where: str, selector: LabelSelector) -> None:
    for req in selector.match_expressions:
        if req.operator not in OPERATORS:
            raise OracleError(f"{where}: unknown selector operator {req.operator!r}")
        if req.operator in ("In", "NotIn") and not req.values:
            raise OracleError(f"{where}: operator {req.operator} needs values")
        if req.operator in ("Exists", "DoesNotExist") and req.values:
            raise OracleError(f"{where}: operator {req.operator} takes no values")


def _parse_cidr(where: str, text: str) -> IPNetwork:
    """A CIDR as the API accepts it: ``address/prefix``, host bits allowed (``10.0.0.1/24``)."""
    address, slash, prefix = text.partition("/")
    if not slash or not prefix.isdigit() or "%" in address:
        raise OracleError(f"{where}: invalid CIDR {text!r}")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise OracleError(f"{where}: invalid CIDR {text!r}") from exc


def _check_ip_block(where: str, block: IPBlock) -> None:
    cidr = _parse_cidr(where, block.cidr)
    for text in block.except_:
        excluded = _parse_cidr(where, text)
        if excluded.version != cidr.version or not excluded.subnet_of(cidr):  # type: ignore[arg-type]
            raise OracleError(f"{where}: except {text!r} is outside cidr {block.cidr!r}")


def _check_peer(where: str, peer: NetworkPolicyPeer) -> None:
    selectors = [s for s in (peer.pod_selector, peer.namespace_selector) if s is not None]
    if peer.ip_block is not None:
        if selectors:
            raise OracleError(f"{where}: ipBlock cannot be combined with selectors")
        _check_ip_block(where, peer.ip_block)
    elif not selectors:
        raise OracleError(f"{where}: a peer must set podSelector, namespaceSelector or ipBlock")
    for selector in selectors:
        _check_selector(where, selector)


def _check_port(where: str, entry: NetworkPolicyPort) -> None:
    if entry.protocol not in PROTOCOLS:
        raise OracleError(f"{where}: unsupported protocol {entry.protocol!r}")
    port = entry.port
    if isinstance(port, str):
        has_letter = any(char.isalpha() for char in port)
        if len(port) > _SVC_NAME_MAX or not _SVC_NAME.match(port) or not has_letter:
            raise OracleError(f"{where}: invalid named port {port!r}")
    elif port is not None and not 1 <= port <= MAX_PORT:
        raise OracleError(f"{where}: port {port} out of range")
    if entry.end_port is None:
        return
    if not isinstance(port, int):
        raise OracleError(f"{where}: endPort requires a numeric port")
    if not port <= entry.end_port <= MAX_PORT:
        raise OracleError(f"{where}: endPort {entry.end_port} must be in [{port}, {MAX_PORT}]")


def _check_rule(
    where: str, peers: Sequence[NetworkPolicyPeer], ports: Sequence[NetworkPolicyPort]
) -> None:
    for peer in peers:
        _check_peer(where, peer)
    for entry in ports:
        _check_port(where, entry)


def check_policy(policy: NetworkPolicy) -> None:
    """Raise :class:`OracleError` naming the policy if the API server would reject it."""
    where = _name(policy)
    spec = policy.spec
    for kind in spec.policy_types:
        if kind not in (INGRESS, EGRESS):
            raise OracleError(f"{where}: unknown policyType {kind!r}")
    _check_selector(where, spec.pod_selector)
    for ingress in spec.ingress:
        _check_rule(where, ingress.from_, ingress.ports)
    for egress in spec.egress:
        _check_rule(where, egress.to, egress.ports)


def check_world(world: World) -> None:
    """Validate every policy of the world, whether or not a query touches it."""
    for policy in world.policies:
        check_policy(policy)


# --- pods and selectors -------------------------------------------------------------------------


def pod_ips(pod: Pod) -> list[IPAddress]:
    """All IPs of a pod: ``status.podIPs`` and ``status.podIP`` (the same IP counts once)."""
    texts = [entry.ip for entry in pod.status.pod_ips] + [pod.status.pod_ip]
    found: list[IPAddress] = []
    for text in texts:
        address = _address(text) if text else None
        if address is not None and address not in found:
            found.append(address)
    return found


def is_policy_pod(pod: Pod) -> bool:
    """Whether NetworkPolicy sees this pod at all (as a subject or as a selected peer)."""
    if pod.spec.host_network or pod.status.phase in FINISHED_PHASES:
        return False
    return bool(pod_ips(pod))


def pod_by_ip(world: World, ip: str) -> Pod | None:
    """The policy-visible pod owning ``ip``, or None if that address is not such a pod's."""
    address = _address(ip)
    for pod in world.pods:
        if is_policy_pod(pod) and address in pod_ips(pod):
            return pod
    return None


def _requirement_matches(req: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    present = req.key in labels
    if req.operator == "In":
        return present and labels[req.key] in req.values
    if req.operator == "NotIn":
        return not present or labels[req.key] not in req.values
    if req.operator == "Exists":
        return present
    if req.operator == "DoesNotExist":
        return not present
    raise OracleError(f"unknown selector operator {req.operator!r}")


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """matchLabels AND every matchExpression; the empty selector matches everything."""
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    return all(_requirement_matches(req, labels) for req in selector.match_expressions)


def namespace_labels(world: World, name: str) -> Mapping[str, str]:
    """Labels of the named namespace, exactly as given (empty if the namespace is unknown)."""
    for namespace in world.namespaces:
        if namespace.metadata.name == name:
            return namespace.metadata.labels
    return {}


def policy_applies(policy: NetworkPolicy, pod: Pod) -> bool:
    """Same namespace, and the policy's podSelector selects the pod."""
    if policy.metadata.namespace != pod.metadata.namespace:
        return False
    return selector_matches(policy.spec.pod_selector, pod.metadata.labels)


def policy_types(policy: NetworkPolicy) -> frozenset[str]:
    """``policyTypes``, or its default: Ingress, plus Egress iff there are egress rules."""
    if policy.spec.policy_types:
        return frozenset(policy.spec.policy_types)
    return frozenset({INGRESS, EGRESS} if policy.spec.egress else {INGRESS})


# --- peers, ports, rules ------------------------------------------------------------------------


def ip_in_block(block: IPBlock, ip: IPAddress) -> bool:
    """Inside ``cidr`` and outside every ``except``; another address family never matches."""
    cidr = _network(block.cidr)
    if ip.version != cidr.version or ip not in cidr:
        return False
    return not any(ip in _network(text) for text in block.except_)


def _peer_matches(
    world: World, policy: NetworkPolicy, peer: NetworkPolicyPeer, ip: IPAddress, pod: Pod | None
) -> bool:
    if peer.ip_block is not None:
        return ip_in_block(peer.ip_block, ip)
    if pod is None:  # selectors only ever match pods
        return False
    if peer.namespace_selector is None:
        namespace_ok = pod.metadata.namespace == policy.metadata.namespace
    else:
        labels = namespace_labels(world, pod.metadata.namespace)
        namespace_ok = selector_matches(peer.namespace_selector, labels)
    if peer.pod_selector is None:
        return namespace_ok
    return namespace_ok and selector_matches(peer.pod_selector, pod.metadata.labels)


def _named_port_matches(dst: Pod | None, name: str, port: int, protocol: str) -> bool:
    if dst is None:
        return False
    return any(
        declared.name == name and declared.protocol == protocol and declared.container_port == port
        for container in dst.spec.containers
        for declared in container.ports
    )


def _port_matches(entry: NetworkPolicyPort, port: int, protocol: str, dst: Pod | None) -> bool:
    if entry.protocol != protocol:
        return False
    if entry.port is None:
        return True
    if isinstance(entry.port, str):
        return _named_port_matches(dst, entry.port, port, protocol)
    if entry.end_port is None:
        return port == entry.port
    return entry.port <= port <= entry.end_port


@dataclass(frozen=True)
class _Connection:
    """One direction's view: the far end (peer) and where the connection lands (dst)."""

    peer_ip: IPAddress
    peer_pod: Pod | None
    port: int
    protocol: str
    dst_pod: Pod | None


def _rule_admits(
    world: World,
    policy: NetworkPolicy,
    peers: Sequence[NetworkPolicyPeer],
    ports: Sequence[NetworkPolicyPort],
    conn: _Connection,
) -> bool:
    peers_ok = not peers or any(
        _peer_matches(world, policy, peer, conn.peer_ip, conn.peer_pod) for peer in peers
    )
    ports_ok = not ports or any(
        _port_matches(entry, conn.port, conn.protocol, conn.dst_pod) for entry in ports
    )
    return peers_ok and ports_ok


def _rules(
    policy: NetworkPolicy, direction: str
) -> list[tuple[Sequence[NetworkPolicyPeer], Sequence[NetworkPolicyPort]]]:
    if direction == INGRESS:
        return [(rule.from_, rule.ports) for rule in policy.spec.ingress]
    return [(rule.to, rule.ports) for rule in policy.spec.egress]


def _direction_allows(world: World, subject: Pod, direction: str, conn: _Connection) -> bool:
    isolated = False
    for policy in world.policies:
        if direction not in policy_types(policy) or not policy_applies(policy, subject):
            continue
        isolated = True
        for peers, ports in _rules(policy, direction):
            if _rule_admits(world, policy, peers, ports, conn):
                return True
    return not isolated


# --- public queries -----------------------------------------------------------------------------


def _check_query(port: int, protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, not {protocol!r}")
    if not 1 <= port <= MAX_PORT:
        raise ValueError(f"port {port} out of range")


def _egress_leg(
    world: World, src: Pod, dst_ip: str, dst_pod: Pod | None, port: int, protocol: str
) -> bool:
    if not is_policy_pod(src):
        return True
    conn = _Connection(_address(dst_ip), dst_pod, port, protocol, dst_pod)
    return _direction_allows(world, src, EGRESS, conn)


def _ingress_leg(
    world: World, dst: Pod, src_ip: str, src_pod: Pod | None, port: int, protocol: str
) -> bool:
    if not is_policy_pod(dst):
        return True
    conn = _Connection(_address(src_ip), src_pod, port, protocol, dst)
    return _direction_allows(world, dst, INGRESS, conn)


def egress_allowed(world: World, src: Pod, dst_ip: str, port: int, protocol: str) -> bool:
    """Whether the policies let pod ``src`` send to ``dst_ip:port/protocol`` (egress leg)."""
    check_world(world)
    _check_query(port, protocol)
    return _egress_leg(world, src, dst_ip, pod_by_ip(world, dst_ip), port, protocol)


def ingress_allowed(world: World, dst: Pod, src_ip: str, port: int, protocol: str) -> bool:
    """Whether the policies let pod ``dst`` receive from ``src_ip`` on ``port/protocol``."""
    check_world(world)
    _check_query(port, protocol)
    return _ingress_leg(world, dst, src_ip, pod_by_ip(world, src_ip), port, protocol)


def allowed(world: World, src_ip: str, dst_ip: str, port: int, protocol: str) -> bool:
    """Both legs: the sender's egress (if it is a pod) and the receiver's ingress (if a pod)."""
    check_world(world)
    _check_query(port, protocol)
    src = pod_by_ip(world, src_ip)
    dst = pod_by_ip(world, dst_ip)
    if src is not None and not _egress_leg(world, src, dst_ip, dst, port, protocol):
        return False
    return dst is None or _ingress_leg(world, dst, src_ip, src, port, protocol)

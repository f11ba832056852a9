"""Resolve a NetworkPolicy against the pods and namespaces: who it targets, what each rule allows.

This is the family-independent half of policy compilation. Bad input (an invalid selector,
CIDR, protocol or port) raises :class:`PolicyError`, which the compiler turns into an error
result.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from kube_router.controllers.netpol import selectors
from kube_router.controllers.netpol.names import IPV4, IPV6, Family
from kube_router.controllers.netpol.pieces import NOMATCH, ip_family, is_actionable, pod_ips
from kube_router.k8s.models import (
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    NetworkPolicyEgressRule,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    Pod,
)

PROTOCOLS: Final = ("TCP", "UDP", "SCTP")
MAX_PORT: Final = 65535
POLICY_TYPES: Final = ("Ingress", "Egress")
# What a /0 ipBlock becomes in a hash:net set (ipset refuses /0). Upstream splits ::/0 into
# 2000::/3 + fd00::/8, which misses most of the space (a bug); both halves cover all of it.
SPLIT_ANY: Final[Mapping[Family, tuple[str, str]]] = {
    IPV4: ("0.0.0.0/1", "128.0.0.0/1"),
    IPV6: ("::/1", "8000::/1"),
}


PodsByNs = Mapping[str, Sequence[Pod]]  # namespace -> its pods (a PodIndex, or a plain dict)


class PodIndex(PodsByNs):
    """The actionable pods by namespace, kept up to date pod by pod, with selections remembered.

    ``select(ns, selector)`` remembers its answer until a pod of ``ns`` changes, so compiling a
    policy whose namespaceSelector spans many namespaces re-selects only the namespaces that
    changed. Also counts how many pods hold each IP.
    """

    def __init__(self, pods: Iterable[Pod] = ()) -> None:
        self._by_ns: dict[str, dict[str, Pod]] = {}
        self._lists: dict[str, list[Pod]] = {}
        self._memo: dict[str, dict[bytes, list[Pod]]] = {}
        self._ips_memo: dict[str, dict[bytes, tuple[str, ...]]] = {}
        self.ip_owners: dict[str, int] = {}
        for pod in pods:
            self.put(pod)

    def put(self, pod: Pod) -> None:
        """Index ``pod`` (replacing the pod of the same key); pods that are not actionable are
        only removed."""
        ns, name = pod.metadata.namespace, pod.metadata.name
        self.remove(ns, name)
        if not is_actionable(pod):
            return
        self._by_ns.setdefault(ns, {})[name] = pod
        self._changed(ns)
        for ip in pod_ips(pod):
            self.ip_owners[ip] = self.ip_owners.get(ip, 0) + 1

    def remove(self, namespace: str, name: str) -> None:
        pods = self._by_ns.get(namespace)
        old = pods.pop(name, None) if pods is not None else None
        if old is None:
            return
        self._changed(namespace)
        for ip in pod_ips(old):
            left = self.ip_owners[ip] - 1
            if left:
                self.ip_owners[ip] = left
            else:
                del self.ip_owners[ip]

    def _changed(self, namespace: str) -> None:
        self._lists.pop(namespace, None)
        self._memo.pop(namespace, None)
        self._ips_memo.pop(namespace, None)

    def __getitem__(self, namespace: str) -> Sequence[Pod]:
        pods = self._lists.get(namespace)
        if pods is None:
            if namespace not in self._by_ns:
                raise KeyError(namespace)
            pods = self._lists[namespace] = list(self._by_ns[namespace].values())
        return pods

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_ns)

    def __len__(self) -> int:
        return len(self._by_ns)

    def select(self, namespace: str, selector: LabelSelector) -> list[Pod]:
        """The pods of ``namespace`` that the (valid) selector matches, remembered."""
        memo = self._memo.setdefault(namespace, {})
        key = _ENCODE(selector)
        found = memo.get(key)
        if found is None:
            found = memo[key] = select_pods(self.get(namespace, ()), selector)
        return found

    def select_ips(self, namespace: str, selector: LabelSelector) -> tuple[str, ...]:
        """Every IP of the pods ``select`` gives, remembered alike."""
        memo = self._ips_memo.setdefault(namespace, {})
        key = _ENCODE(selector)
        found = memo.get(key)
        if found is None:
            pods = self.select(namespace, selector)
            found = memo[key] = tuple(ip for pod in pods for ip in pod_ips(pod))
        return found


_ENCODE = msgspec.json.Encoder().encode


def select_ips_in(pods_index: PodsByNs, namespace: str, selector: LabelSelector) -> Sequence[str]:
    """The IPs of ``select_in``'s pods, through the index's memo when it has one."""
    if isinstance(pods_index, PodIndex):
        return pods_index.select_ips(namespace, selector)
    return [
        ip for pod in select_pods(pods_index.get(namespace, ()), selector) for ip in pod_ips(pod)
    ]


def select_in(pods_index: PodsByNs, namespace: str, selector: LabelSelector) -> list[Pod]:
    """``select_pods`` over one namespace, through the index's memo when it has one."""
    if isinstance(pods_index, PodIndex):
        return pods_index.select(namespace, selector)
    return select_pods(pods_index.get(namespace, ()), selector)


class PolicyError(ValueError):
    """The policy cannot be compiled; the message says why."""


@dataclass(frozen=True)
class PortMatch:
    """``-p <protocol> [--dport <port>]``; port is "", "80" or "80:90"."""

    protocol: str
    port: str = ""


@dataclass(frozen=True)
class NamedEndpoint:
    """A named port resolved to one number, with the pod IPs that expose it under that name."""

    protocol: str
    port: int
    ips: tuple[str, ...]


@dataclass
class RuleInfo:
    """One ingress or egress rule, resolved."""

    match_all_peers: bool  # empty from/to
    selects_pods: bool  # some peer has a pod or namespace selector
    peer_pods: list[Pod] = field(default_factory=list)
    peer_ips: list[str] = field(default_factory=list)  # of peer_pods (repeats allowed)
    ipblocks: dict[Family, list[str]] = field(default_factory=dict)  # hash:net entries
    match_all_ports: bool = True  # empty ports
    ports: list[PortMatch] = field(default_factory=list)
    named: list[NamedEndpoint] = field(default_factory=list)  # on the peer pods (or targets)
    # Egress towards any destination or an ipBlock: named ports resolved on every pod of the
    # cluster, since the destination pod, wherever it is, gives the name its number.
    named_any: list[NamedEndpoint] = field(default_factory=list)


def policy_types(policy: NetworkPolicy) -> tuple[bool, bool]:
    """(ingress, egress): spec.policyTypes, or Ingress plus Egress when there are egress rules."""
    types = policy.spec.policy_types
    if not types:
        return True, bool(policy.spec.egress)
    for kind in types:
        if kind not in POLICY_TYPES:
            raise PolicyError(f"unknown policy type {kind!r}")
    return "Ingress" in types, "Egress" in types


def _check_selector(selector: LabelSelector, where: str) -> None:
    reason = selectors.selector_error(selector)
    if reason is not None:
        raise PolicyError(f"{where}: {reason}")


def select_pods(pods: Iterable[Pod], selector: LabelSelector) -> list[Pod]:
    """Actionable pods whose labels match the (valid) selector."""
    return [p for p in pods if is_actionable(p) and selectors.matches(selector, p.metadata.labels)]


def target_pods(policy: NetworkPolicy, pods_index: PodsByNs) -> list[Pod]:
    """The actionable pods of the policy's namespace that its podSelector selects."""
    _check_selector(policy.spec.pod_selector, "spec.podSelector")
    return select_in(pods_index, policy.metadata.namespace, policy.spec.pod_selector)


def peer_pods(
    policy: NetworkPolicy,
    peer: NetworkPolicyPeer,
    pods_index: PodsByNs,
    namespaces: Iterable[Namespace],
    where: str,
) -> tuple[list[Pod], list[str]]:
    """Pods a peer selects (namespaceSelector AND podSelector, or podSelector in the policy's
    namespace), and their IPs."""
    pod_selector = peer.pod_selector if peer.pod_selector is not None else LabelSelector()
    _check_selector(pod_selector, f"{where}.podSelector")
    if peer.namespace_selector is not None:
        _check_selector(peer.namespace_selector, f"{where}.namespaceSelector")
        chosen = [
            ns.metadata.name
            for ns in namespaces
            if selectors.matches(peer.namespace_selector, ns.metadata.labels)
        ]
    elif peer.pod_selector is not None:
        chosen = [policy.metadata.namespace]
    else:
        return [], []
    found: list[Pod] = []
    ips: list[str] = []
    for name in sorted(chosen):
        found.extend(select_in(pods_index, name, pod_selector))
        ips.extend(select_ips_in(pods_index, name, pod_selector))
    return found, ips


def _network(text: str, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise PolicyError(f"{where}: invalid CIDR {text!r}") from None


def _block_entries(net: ipaddress.IPv4Network | ipaddress.IPv6Network, suffix: str) -> list[str]:
    family: Family = IPV4 if net.version == 4 else IPV6
    texts = SPLIT_ANY[family] if net.prefixlen == 0 else (str(net),)
    return [f"{text} {suffix}" if suffix else text for text in texts]


def ipblock_entries(block: IPBlock, where: str) -> tuple[Family, list[str]]:
    """The hash:net entries of an ipBlock: its CIDR, then each except CIDR with ``nomatch``."""
    net = _network(block.cidr, f"{where}.ipBlock.cidr")
    family: Family = IPV4 if net.version == 4 else IPV6
    entries = _block_entries(net, "")
    for text in block.except_:
        excluded = _network(text, f"{where}.ipBlock.except")
        if excluded.version != net.version:
            raise PolicyError(f"{where}.ipBlock.except: {text!r} is not of the family of {net}")
        entries.extend(_block_entries(excluded, NOMATCH))
    return family, entries


def excepts_cross(blocks: Sequence[IPBlock]) -> bool:
    """Whether one block's except overlaps another block (all valid, one family): only then does
    the one-set layout of :func:`ipblock_entries` (every CIDR, every except ``nomatch``) match
    other than the union of the blocks, so only then is :func:`union_entries` needed."""
    nets = [(_network(b.cidr, "cidr"), [_network(e, "except") for e in b.except_]) for b in blocks]
    return any(
        cut.overlaps(other)
        for i, (_, cuts) in enumerate(nets)
        for cut in cuts
        for j, (other, _) in enumerate(nets)
        if i != j
    )


def union_entries(blocks: Sequence[IPBlock], where: str) -> list[str]:
    """hash:net entries matching exactly the addresses of any of ``blocks`` (one family, each
    valid): the union of each CIDR less its excepts, as CIDRs without ``nomatch``.

    One set cannot hold several blocks the way :func:`ipblock_entries` lays one out: the longest
    matching prefix decides, so one block's except would hide another block's addresses (and a
    CIDR that is one block and another's except cannot be both a match and a ``nomatch``).
    """
    kept: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for block in blocks:
        parts = [_network(block.cidr, f"{where}.ipBlock.cidr")]
        for text in block.except_:
            parts = _without(parts, _network(text, f"{where}.ipBlock.except"))
        kept.extend(parts)
    nets = ipaddress.collapse_addresses(kept)  # type: ignore[type-var]
    return [text for net in nets for text in _block_entries(net, "")]


def _without(
    parts: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    cut: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for part in parts:
        if part.subnet_of(cut):  # type: ignore[arg-type]
            continue
        if cut.subnet_of(part):  # type: ignore[arg-type]
            out.extend(part.address_exclude(cut))  # type: ignore[arg-type]
        else:
            out.append(part)
    return out


def _protocol(port: NetworkPolicyPort, where: str) -> str:
    protocol = port.protocol or "TCP"
    if protocol not in PROTOCOLS:
        raise PolicyError(f"{where}.protocol: unknown protocol {protocol!r}")
    return protocol


def _numeric_port(port: NetworkPolicyPort, number: int, where: str) -> str:
    if not 1 <= number <= MAX_PORT:
        raise PolicyError(f"{where}.port: {number} is not a port number")
    end = port.end_port
    if end is None or end < number:  # upstream ignores an endPort below port
        return str(number)
    if end > MAX_PORT:
        raise PolicyError(f"{where}.endPort: {end} is not a port number")
    return f"{number}:{end}"


def named_endpoints(name: str, protocol: str, pods: Iterable[Pod]) -> list[NamedEndpoint]:
    """The numbers a port name stands for among ``pods`` (same protocol), in port order."""
    ips_by_port: dict[int, list[str]] = {}
    for pod in pods:
        numbers = {
            cp.container_port
            for container in pod.spec.containers
            for cp in container.ports
            if cp.name == name and (cp.protocol or "TCP") == protocol
        }
        for number in numbers:
            ips_by_port.setdefault(number, []).extend(pod_ips(pod))
    return [
        NamedEndpoint(protocol.lower(), number, tuple(sorted(ips)))
        for number, ips in sorted(ips_by_port.items())
    ]


def resolve_ports(
    ports: Sequence[NetworkPolicyPort], owners: Sequence[Pod], where: str
) -> tuple[list[PortMatch], list[NamedEndpoint]]:
    """Numeric ports as matches; named ports resolved against the pods that own them."""
    numeric: list[PortMatch] = []
    named: list[NamedEndpoint] = []
    for i, port in enumerate(ports):
        at = f"{where}.ports[{i}]"
        protocol = _protocol(port, at)
        if port.port is None:
            numeric.append(PortMatch(protocol.lower()))
        elif isinstance(port.port, int):
            numeric.append(PortMatch(protocol.lower(), _numeric_port(port, port.port, at)))
        else:
            named.extend(named_endpoints(port.port, protocol, owners))
    return numeric, named


def has_named_port(ports: Sequence[NetworkPolicyPort]) -> bool:
    return any(isinstance(port.port, str) for port in ports)


def named_ports_anywhere(rule: NetworkPolicyEgressRule) -> bool:
    """Whether the rule's named ports reach destinations that no selector names (no ``to``, or an
    ipBlock): they resolve on every pod of the cluster."""
    return has_named_port(rule.ports) and (
        not rule.to or any(peer.ip_block is not None for peer in rule.to)
    )


def resolves_named_ports_anywhere(policy: NetworkPolicy) -> bool:
    """Whether an egress rule resolves named ports on every pod, so any pod can move them."""
    return any(named_ports_anywhere(rule) for rule in policy.spec.egress)


def all_pods(pods_index: PodsByNs) -> list[Pod]:
    """The actionable pods of every namespace."""
    return [pod for ns in pods_index for pod in pods_index[ns] if is_actionable(pod)]


def family_ips(ips: Iterable[str], family: Family) -> tuple[str, ...]:
    """The addresses of ``family``, sorted and without duplicates."""
    return tuple(sorted({ip for ip in ips if ip_family(ip) == family}))

"""Plain data the network policy compilers produce, and the pod predicates they share."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Final

from kube_router.config import Config
from kube_router.controllers.netpol.names import IPV4, IPV6, Family, direction_chains
from kube_router.k8s.models import Pod

HASH_IP: Final = "hash:ip"
HASH_NET: Final = "hash:net"
LIST_SET: Final = "list:set"  # the kernel form of policy sets: see pools.py
NOMATCH: Final = "nomatch"
FINISHED_PHASES: Final = frozenset({"Succeeded", "Failed", "Completed"})

Chains = dict[str, list[str]]  # chain name -> rules, in order


@dataclass(frozen=True)
class IPSetSpec:
    """One ipset: kernel name (``inet6:`` prefixed for IPv6), type, family and sorted entries.

    An entry is an address or CIDR, followed by `` nomatch`` for ipBlock ``except`` CIDRs (the
    ``ipset add`` syntax). Upstream creates every one of these sets with ``timeout 0``.
    """

    name: str
    kind: str
    family: Family
    entries: tuple[str, ...] = ()
    # How these entries came from earlier ones by a peer-set delta: (the earlier entries tuple,
    # removed, added). A plan whose last-applied set holds that very tuple uses it as the diff.
    edit: SetEdit | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SetEdit:
    base: tuple[str, ...]
    removed: frozenset[str]
    added: frozenset[str]


@dataclass(frozen=True)
class PolicyFamily:
    """A policy's chains and the sets their rules match, for one family.

    ``chains`` maps each enforced direction (``ingress``, ``egress``) to its chain's name and
    rules: a direction's rules never share a chain with the other direction's.
    """

    chains: Mapping[str, tuple[str, tuple[str, ...]]]
    sets: tuple[IPSetSpec, ...]


@dataclass(frozen=True)
class PolicyPiece:
    """The compiled form of one NetworkPolicy.

    ``target_pods`` holds the ``namespace/name`` keys of the pods the policy applies to. When
    ``error`` is set the policy could not be compiled: ``families`` is empty and the pods in
    ``target_pods`` must fail closed in the directions ``ingress``/``egress`` say (compile_pod
    does that: it counts the policy but jumps to no chain).
    """

    namespace: str
    name: str
    ingress: bool
    egress: bool
    target_pods: frozenset[str]
    families: Mapping[Family, PolicyFamily] = field(default_factory=dict)
    error: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def chains(self, family: Family) -> dict[str, str]:
        """Direction -> the chain a target pod's leg in that direction jumps to."""
        return direction_chains(self.namespace, self.name, family, self.ingress, self.egress)


@dataclass(frozen=True)
class PodFamily:
    """A local pod's firewall chain rules and the rules jumping into it, for one family."""

    ip: str
    rules: tuple[str, ...]
    jumps: Mapping[str, tuple[str, ...]]  # KUBE-ROUTER-* chain -> its rules for this pod


@dataclass(frozen=True)
class PodPiece:
    """The compiled form of one local pod: its chain name and per-family contents."""

    namespace: str
    name: str
    chain: str
    families: Mapping[Family, PodFamily] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def enabled_families(cfg: Config) -> tuple[Family, ...]:
    """The families the node runs, IPv4 first."""
    return tuple(f for f, on in ((IPV4, cfg.enable_ipv4), (IPV6, cfg.enable_ipv6)) if on)


# Every compile asks for the family of every peer IP; parsing with ipaddress each time was 60-70 %
# of compile at scale (bench/netpol.py). Pod IPs repeat across syncs, so remember the answers.
IP_FAMILY_CACHE_SIZE: Final = 1 << 17


@functools.lru_cache(maxsize=IP_FAMILY_CACHE_SIZE)
def ip_family(text: str) -> Family | None:
    """The family of an address, or None when it is not one."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return IPV4 if address.version == 4 else IPV6


def pod_ips(pod: Pod) -> list[str]:
    """``status.podIPs``, or ``status.podIP`` when the list is empty."""
    ips = [entry.ip for entry in pod.status.pod_ips if entry.ip]
    if not ips and pod.status.pod_ip:
        ips = [pod.status.pod_ip]
    return ips


def pod_ip(pod: Pod, family: Family) -> str | None:
    """The pod's first address of ``family``, if any."""
    for ip in pod_ips(pod):
        if ip_family(ip) == family:
            return ip
    return None


def is_finished(pod: Pod) -> bool:
    return pod.status.phase in FINISHED_PHASES


def is_actionable(pod: Pod) -> bool:
    """Counts for policy sets (any node): has an IP, not hostNetwork, not finished."""
    return bool(pod.status.pod_ip) and not pod.spec.host_network and not is_finished(pod)


def is_local(pod: Pod, node_ips: Collection[str]) -> bool:
    """Gets a pod firewall chain on this node: actionable and ``status.hostIP`` is a node IP."""
    return is_actionable(pod) and pod.status.host_ip in node_ips


def pod_key(pod: Pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"

"""Names of the network policy chains and ipsets, with upstream kube-router's hash inputs.

Every hashed name is a prefix plus the first 16 characters of the standard (padded, upper-case)
base32 encoding of the SHA-256 digest of a plain concatenation of its inputs. The family strings
are Kubernetes' ``IPv4`` and ``IPv6``; IPv6 ipset names carry ipset's ``inet6:`` prefix.

The ipset names are byte-identical to upstream's. The pod and policy chain names differ on
purpose: upstream appends its per-sync version (a UnixNano timestamp) to the hash input, so every
sync creates new chains; ours leave the version out and stay the same from one sync to the next.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from typing import Final, Literal

Family = Literal["IPv4", "IPv6"]
IPV4: Final[Family] = "IPv4"
IPV6: Final[Family] = "IPv6"
FAMILIES: Final[tuple[Family, ...]] = (IPV4, IPV6)

POD_FW_CHAIN_PREFIX: Final = "KUBE-POD-FW-"
POLICY_CHAIN_PREFIX: Final = "KUBE-NWPLCY-"
# Ours, not upstream's: the egress rules of a policy enforcing both directions (see
# policy_egress_chain). It begins with upstream's prefix, so what owns KUBE-NWPLCY-* owns it too.
POLICY_EGRESS_CHAIN_PREFIX: Final = "KUBE-NWPLCY-EG-"
MAX_CHAIN_NAME: Final = 28  # iptables' limit (XT_EXTENSION_MAXNAMELEN less the NUL)
SRC_SET_PREFIX: Final = "KUBE-SRC-"
DST_SET_PREFIX: Final = "KUBE-DST-"
IPV6_SET_PREFIX: Final = "inet6:"

INPUT_CHAIN: Final = "KUBE-ROUTER-INPUT"
FORWARD_CHAIN: Final = "KUBE-ROUTER-FORWARD"
OUTPUT_CHAIN: Final = "KUBE-ROUTER-OUTPUT"
DEFAULT_CHAIN: Final = "KUBE-NWPLCY-DEFAULT"
COMMON_CHAIN: Final = "KUBE-NWPLCY-COMMON"
TAIL_CHAIN: Final = "KUBE-NWPLCY-TAIL"
ROUTER_CHAINS: Final = (INPUT_CHAIN, FORWARD_CHAIN, OUTPUT_CHAIN)
STATIC_CHAINS: Final = (*ROUTER_CHAINS, DEFAULT_CHAIN, COMMON_CHAIN, TAIL_CHAIN)
# Built-in filter chain -> our chain it jumps to (at position 1).
BUILTIN_JUMPS: Final = {"INPUT": INPUT_CHAIN, "FORWARD": FORWARD_CHAIN, "OUTPUT": OUTPUT_CHAIN}

LOCAL_PODS_SET: Final = "kube-router-local-pods"

_HASH_LEN: Final = 16
_HASH_CACHE_SIZE: Final = 1 << 17


@functools.lru_cache(maxsize=_HASH_CACHE_SIZE)
def hash16(text: str) -> str:
    """First 16 characters of base32(sha256(text)), the suffix of every hashed name (each
    sync names the same chains and sets again, so the digests are remembered)."""
    digest = hashlib.sha256(text.encode()).digest()
    return base64.b32encode(digest).decode("ascii")[:_HASH_LEN]


def ipset_name(name: str, family: Family) -> str:
    """The name as created in the kernel: ``inet6:`` before IPv6 sets (never twice)."""
    if family == IPV6 and not name.startswith(IPV6_SET_PREFIX):
        return IPV6_SET_PREFIX + name
    return name


def pod_fw_chain(namespace: str, name: str) -> str:
    """``KUBE-POD-FW-`` + hash(ns + name); upstream adds the sync version after the name."""
    return POD_FW_CHAIN_PREFIX + hash16(namespace + name)


def policy_chain(namespace: str, name: str, family: Family) -> str:
    """``KUBE-NWPLCY-`` + hash(ns + name + family); upstream puts the version before family."""
    return POLICY_CHAIN_PREFIX + hash16(namespace + name + family)


def policy_egress_chain(namespace: str, name: str, family: Family) -> str:
    """The egress chain of a policy whose types hold both Ingress and Egress (ours).

    ``KUBE-NWPLCY-EG-`` + the first 13 characters of the policy chain's digest, so the two chains
    of one policy share a visible stem. Upstream keeps both directions in one chain, which a pod's
    chain jumps to with no direction match: a target pod's egress leg then meets the policy's
    ingress rules (the destination is a target too) and is allowed by them. Here the ingress rules
    stay in :func:`policy_chain`, jumped to only with ``-d podIP``, and the egress rules live in
    this chain, jumped to only with ``-s podIP``. A policy enforcing one direction keeps
    upstream's single chain.
    """
    digest = hash16(namespace + name + family)
    return (POLICY_EGRESS_CHAIN_PREFIX + digest)[:MAX_CHAIN_NAME]


def direction_chains(
    namespace: str, name: str, family: Family, ingress: bool, egress: bool
) -> dict[str, str]:
    """The chain of each direction a policy enforces: ``{"ingress": ..., "egress": ...}``.

    One direction: upstream's :func:`policy_chain`. Both: the ingress rules there, the egress
    rules in :func:`policy_egress_chain`.
    """
    out: dict[str, str] = {}
    if ingress:
        out["ingress"] = policy_chain(namespace, name, family)
    if egress:
        out["egress"] = (policy_egress_chain if ingress else policy_chain)(namespace, name, family)
    return out


def target_dst_set(namespace: str, name: str, family: Family) -> str:
    """Pods a policy selects, matched as destination (ingress): hash(ns + name + family)."""
    return ipset_name(DST_SET_PREFIX + hash16(namespace + name + family), family)


def target_src_set(namespace: str, name: str, family: Family) -> str:
    """Pods a policy selects, matched as source (egress); same digest as the DST set."""
    return ipset_name(SRC_SET_PREFIX + hash16(namespace + name + family), family)


def _rule_hash(namespace: str, name: str, direction: str, rule: int, tail: str) -> str:
    return hash16(f"{namespace}{name}{direction}rule{rule}{tail}")


def ingress_pods_set(namespace: str, name: str, rule: int, family: Family) -> str:
    """Peer pods of ingress rule ``rule``: hash(ns+name+"ingressrule"+idx+family+"pod")."""
    digest = _rule_hash(namespace, name, "ingress", rule, family + "pod")
    return ipset_name(SRC_SET_PREFIX + digest, family)


def egress_pods_set(namespace: str, name: str, rule: int, family: Family) -> str:
    """Peer pods of egress rule ``rule``: hash(ns + name + "egressrule" + idx + family + "pod")."""
    digest = _rule_hash(namespace, name, "egress", rule, family + "pod")
    return ipset_name(DST_SET_PREFIX + digest, family)


def ingress_ipblock_set(namespace: str, name: str, rule: int, family: Family) -> str:
    """ipBlocks of ingress rule ``rule``: hash(... "ingressrule" + idx + family + "ipblock")."""
    digest = _rule_hash(namespace, name, "ingress", rule, family + "ipblock")
    return ipset_name(SRC_SET_PREFIX + digest, family)


def egress_ipblock_set(namespace: str, name: str, rule: int, family: Family) -> str:
    """ipBlocks of egress rule ``rule``: hash(... "egressrule" + idx + family + "ipblock")."""
    digest = _rule_hash(namespace, name, "egress", rule, family + "ipblock")
    return ipset_name(DST_SET_PREFIX + digest, family)


def ingress_named_port_set(
    namespace: str, name: str, rule: int, port_index: int, family: Family
) -> str:
    """Target pods with named port ``port_index`` of ingress rule ``rule`` (a KUBE-DST set).

    hash(ns + name + "ingressrule" + idx + npIdx + family + "namedport").
    """
    digest = _rule_hash(namespace, name, "ingress", rule, f"{port_index}{family}namedport")
    return ipset_name(DST_SET_PREFIX + digest, family)


def egress_named_port_set(
    namespace: str, name: str, rule: int, port_index: int, family: Family
) -> str:
    """Peer pods with named port ``port_index`` of egress rule ``rule`` (a KUBE-DST set).

    hash(ns + name + "egressrule" + idx + npIdx + family + "namedport").
    """
    digest = _rule_hash(namespace, name, "egress", rule, f"{port_index}{family}namedport")
    return ipset_name(DST_SET_PREFIX + digest, family)


def egress_any_named_port_set(
    namespace: str, name: str, rule: int, port_index: int, family: Family
) -> str:
    """Pods of the whole cluster with named port ``port_index`` of egress rule ``rule``, for its
    ``to``-less or ipBlock peers (ours: upstream resolves no named port towards those).

    hash(ns + name + "egressrule" + idx + npIdx + family + "namedportany").
    """
    digest = _rule_hash(namespace, name, "egress", rule, f"{port_index}{family}namedportany")
    return ipset_name(DST_SET_PREFIX + digest, family)


def local_pods_set(family: Family) -> str:
    """``kube-router-local-pods`` (``inet6:`` prefixed for IPv6), used with default deny."""
    return ipset_name(LOCAL_PODS_SET, family)

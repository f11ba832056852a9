"""The routing controller's ipsets and iptables rules (reference §4.2 steps 2, 4, 7 and Cleanup).

What is ours, per enabled family (IPv6 set names carry ``inet6:``):

- ipset ``kube-router-pod-subnets`` (hash:net): the pod CIDRs of **all** nodes, each node's from
  the ``kube-router.io/pod-cidr`` annotation, else ``kube-router.io/pod-cidrs``, else
  ``spec.podCIDRs`` (upstream's precedence for these sets);
- ipset ``kube-router-node-ips`` (hash:ip): every InternalIP and ExternalIP of every node;
- filter ``FORWARD`` accepts, inserted at position 1 when missing (so on a fresh node they are
  the first rules, in upstream's order), recognised by their comments::

      -o <node iface> -m comment --comment "allow outbound node port traffic on node interface
         with which node ip is associated" -j ACCEPT
      -o kube-bridge -m comment --comment "allow inbound traffic to pods" -j ACCEPT
      -i kube-bridge -m comment --comment "allow outbound traffic from pods" -j ACCEPT

- nat ``POSTROUTING`` pod egress masquerade, appended when missing and ``pod_egress``::

      -m set --match-set kube-router-pod-subnets src -m set ! --match-set kube-router-pod-subnets
      dst -m set ! --match-set kube-router-node-ips dst -j MASQUERADE [--random-fully]

  Older shapes (without the node-ips match, or without ``--random-fully`` when it is used) are
  deleted, as upstream's deleteBadPodEgressRules does; all shapes go when pod egress is off.

``NodeFirewall.apply(spec)`` reads the kernel (one ``ipset save``, ``iptables-save`` of filter and
nat per family) and writes only what differs: one ``ipset restore`` (a set whose members differ is
refilled through a temporary set and ``swap``, never seen empty), then one ``iptables-restore
--noflush`` per table and family. Nothing is written when all is in place, so it is cheap to call
every routing loop. Existing rules are never moved: the policy controller keeps its jump at
position 1 of FORWARD, as with upstream. The sets exist once the first apply returns: the
controller sets the ``cni_firewall_setup`` barrier after it.

``NodeFirewall.cleanup()`` removes our FORWARD accepts, our masquerade rules (every shape) and our
two sets per family, and nothing else. Upstream's cleanup destroys **every** ipset of the host
(``ipset save`` then destroy all); we do not.

Two more differences from upstream: a node without pod CIDRs still has its addresses in
``kube-router-node-ips`` (upstream skips the whole node, so pod traffic to it is masqueraded);
the temporary set of a swap is named after the set (upstream's is shared by every set of the
same type, which two controllers refilling sets at once could trip over).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from kube_router.controllers.shared.pod_cidrs import node_pod_cidrs
from kube_router.dataplane import ipset
from kube_router.dataplane import iptables_parse as ipt
from kube_router.dataplane.ipset_entry import HASH_IP, HASH_NET
from kube_router.dataplane.iptables import IPTables
from kube_router.k8s import models
from kube_router.node import all_ips

log = logging.getLogger(__name__)

POD_SUBNETS_SET: Final = "kube-router-pod-subnets"
NODE_IPS_SET: Final = "kube-router-node-ips"
SET_TYPES: Final = {POD_SUBNETS_SET: HASH_NET, NODE_IPS_SET: HASH_IP}
KUBE_BRIDGE: Final = "kube-bridge"
FORWARD: Final = "FORWARD"
POSTROUTING: Final = "POSTROUTING"
FROM_PODS_COMMENT: Final = "allow outbound traffic from pods"
TO_PODS_COMMENT: Final = "allow inbound traffic to pods"
NODE_IFACE_COMMENT: Final = (
    "allow outbound node port traffic on node interface with which node ip is associated"
)
OUR_COMMENTS: Final = (FROM_PODS_COMMENT, TO_PODS_COMMENT, NODE_IFACE_COMMENT)
RANDOM_FULLY: Final = "--random-fully"
TMP_HASH_BYTES: Final = 10
RANDOM_FULLY_SINCE: Final = (1, 6, 2)
_VERSION: Final = re.compile(r"v(\d+)\.(\d+)\.(\d+)")
FAMILIES: Final[tuple[ipt.Family, ipt.Family]] = ("ipv4", "ipv6")

__all__ = [
    "NODE_IPS_SET",
    "POD_SUBNETS_SET",
    "IPSetPort",
    "NodeFirewall",
    "NodeFirewallError",
    "NodeFirewallSpec",
    "build_spec",
    "forward_rules",
    "masquerade_rule",
    "node_pod_cidrs",
    "random_fully_supported",
    "set_name",
]


class NodeFirewallError(Exception):
    """Reading or writing the routing controller's ipsets or iptables rules failed."""


class IPSetPort(Protocol):
    """What this module needs of the ipset port (RealIPSets, FakeIPSets)."""

    async def save(self, prefixes: Sequence[str] | None = None) -> dict[str, ipset.SetState]: ...

    async def restore(self, tx: ipset.Transaction) -> None: ...


# --- desired state (pure) ----------------------------------------------------------------------


def set_name(base: str, family: ipt.Family) -> str:
    """``kube-router-pod-subnets`` or ``inet6:kube-router-pod-subnets``."""
    return ipset.family_name(base, ipset.INET6 if family == "ipv6" else ipset.INET)


def set_spec(base: str, family: ipt.Family) -> ipset.SetSpec:
    kind = ipset.INET6 if family == "ipv6" else ipset.INET
    return ipset.SetSpec(set_name(base, family), SET_TYPES[base], kind)


@dataclass(frozen=True)
class NodeFirewallSpec:
    """What the routing controller wants: per family, the members of its two sets, and the
    rules' settings."""

    families: tuple[ipt.Family, ...]
    node_interface: str
    pod_subnets: Mapping[ipt.Family, frozenset[str]]
    node_ips: Mapping[ipt.Family, frozenset[str]]
    pod_egress: bool = True
    random_fully: bool = True


def random_fully_supported(version_output: str) -> bool:
    """Whether the iptables of ``iptables --version`` (``iptables v1.8.9 (nf_tables)``) takes
    ``--random-fully``: 1.6.2 and later, as upstream's go-iptables decides."""
    found = _VERSION.search(version_output)
    if found is None:
        return False
    return tuple(int(n) for n in found.groups()) >= RANDOM_FULLY_SINCE


def _family(address: str) -> ipt.Family:
    return "ipv6" if ":" in address else "ipv4"


def build_spec(
    nodes: Iterable[models.Node],
    families: Sequence[ipt.Family],
    node_interface: str,
    pod_egress: bool = True,
    random_fully: bool = True,
) -> NodeFirewallSpec:
    """The spec for all ``nodes`` (every node of the cluster, this one included)."""
    subnets: dict[ipt.Family, set[str]] = {f: set() for f in families}
    ips: dict[ipt.Family, set[str]] = {f: set() for f in families}
    for node in nodes:
        cidrs, problems = node_pod_cidrs(node)
        for problem in problems:
            log.warning("%s; ignored", problem)
        if not cidrs:
            log.warning(
                "node %s: no pod CIDR found; it is not in %s", node.metadata.name, POD_SUBNETS_SET
            )
        for cidr in cidrs:
            subnets.get(_family(cidr), set()).add(cidr)
        for ip in all_ips(node):
            ips.get(_family(str(ip)), set()).add(str(ip))
    return NodeFirewallSpec(
        families=tuple(families),
        node_interface=node_interface,
        pod_subnets={f: frozenset(s) for f, s in subnets.items()},
        node_ips={f: frozenset(s) for f, s in ips.items()},
        pod_egress=pod_egress,
        random_fully=random_fully,
    )


def forward_rules(node_interface: str) -> tuple[str, ...]:
    """Our FORWARD accepts as iptables-save prints them, first rule first (upstream inserts
    the last of these first)."""
    rules = [
        f'-o {node_interface} -m comment --comment "{NODE_IFACE_COMMENT}" -j ACCEPT',
        f'-o {KUBE_BRIDGE} -m comment --comment "{TO_PODS_COMMENT}" -j ACCEPT',
        f'-i {KUBE_BRIDGE} -m comment --comment "{FROM_PODS_COMMENT}" -j ACCEPT',
    ]
    return tuple(rules[1:]) if not node_interface else tuple(rules)


def masquerade_rule(family: ipt.Family, random_fully: bool, node_ips: bool = True) -> str:
    """The pod egress rule as iptables-save prints it; ``node_ips=False`` gives the old shape."""
    pods, nodes = set_name(POD_SUBNETS_SET, family), set_name(NODE_IPS_SET, family)
    rule = f"-m set --match-set {pods} src -m set ! --match-set {pods} dst"
    if node_ips:
        rule += f" -m set ! --match-set {nodes} dst"
    rule += " -j MASQUERADE"
    return f"{rule} {RANDOM_FULLY}" if random_fully else rule


def masquerade_shapes(family: ipt.Family) -> frozenset[str]:
    """Every shape of our masquerade rule, current and old."""
    return frozenset(
        masquerade_rule(family, rf, nips) for rf in (True, False) for nips in (True, False)
    )


def _comment_of(rule: ipt.Rule) -> str | None:
    words = rule.words
    for i, word in enumerate(words[:-1]):
        if word == "--comment":
            return words[i + 1]
    return None


def _is_our_forward(rule: ipt.Rule) -> bool:
    return _comment_of(rule) in OUR_COMMENTS and rule.words[-2:] == ("-j", "ACCEPT")


def _rules(table: ipt.Table | None, chain: str) -> list[ipt.Rule]:
    found = table.chains.get(chain) if table is not None else None
    return list(found.rules) if found is not None else []


def plan_forward(tx: ipt.Transaction, want: Sequence[str], filter_table: ipt.Table | None) -> None:
    """Delete our stale or doubled FORWARD accepts; insert missing ones at position 1."""
    held = Counter(r.spec for r in _rules(filter_table, FORWARD) if _is_our_forward(r))
    for spec, count in sorted(held.items()):
        for _ in range(count - (1 if spec in want else 0)):
            tx.delete(FORWARD, spec)
    for spec in reversed(want):
        if spec not in held:
            tx.insert(FORWARD, spec, 1)


def plan_masquerade(
    tx: ipt.Transaction, family: ipt.Family, want: str | None, nat_table: ipt.Table | None
) -> None:
    """Delete every other shape of our rule (and doubles); append ``want`` if missing."""
    shapes = masquerade_shapes(family)
    held = Counter(r.spec for r in _rules(nat_table, POSTROUTING) if r.spec in shapes)
    for spec, count in sorted(held.items()):
        for _ in range(count - (1 if spec == want else 0)):
            tx.delete(POSTROUTING, spec)
    if want is not None and want not in held:
        tx.append(POSTROUTING, want)


def tmp_set_name(spec: ipset.SetSpec) -> str:
    """The temporary set refilling ``spec``: ``TMP-`` + 16 base32 characters of its name's
    hash, so no other controller's swap shares it."""
    digest = hashlib.sha1(f"routing:{spec.name}:{spec.options()}".encode(), usedforsecurity=False)
    return ipset.TMP_PREFIX + base64.b32encode(digest.digest()[:TMP_HASH_BYTES]).decode()


def plan_sets(
    tx: ipset.Transaction, want: Mapping[str, ipset.SetState], have: Mapping[str, ipset.SetState]
) -> None:
    """Refill (through a swap) each set whose members differ; create missing ones."""
    for name, state in want.items():
        spec, current = state.spec, have.get(name)
        if current is None:
            tx.fill(spec, state.entries)
            continue
        if (current.spec.type, current.spec.family) != (spec.type, spec.family):
            tx.destroy(name).fill(spec, state.entries)  # damage from outside; swap cannot fix it
        elif current.entries != state.entries:
            tmp = spec.renamed(tmp_set_name(spec))
            tx.create(tmp).flush(tmp.name)
            for entry in sorted(state.entries):
                tx.add(tmp, entry)
            tx.swap(tmp.name, name).destroy(tmp.name)


def desired_sets(spec: NodeFirewallSpec) -> dict[str, ipset.SetState]:
    out: dict[str, ipset.SetState] = {}
    for family in spec.families:
        for base, members in ((POD_SUBNETS_SET, spec.pod_subnets), (NODE_IPS_SET, spec.node_ips)):
            s = set_spec(base, family)
            canonical = frozenset(
                ipset.normalize_entry(s.type, s.family, m) for m in members.get(family, ())
            )
            out[s.name] = ipset.SetState(s, canonical)
    return out


# --- applying ----------------------------------------------------------------------------------


class NodeFirewall:
    """Keeps the routing controller's sets and rules in the kernel; see the module docstring."""

    def __init__(self, iptables: Mapping[ipt.Family, IPTables], ipsets: IPSetPort) -> None:
        self.iptables = dict(iptables)
        self.ipsets = ipsets

    async def apply(self, spec: NodeFirewallSpec) -> bool:
        """Make the kernel hold ``spec``; True when anything was written."""
        missing = sorted(set(spec.families) - set(self.iptables))
        if missing:
            raise NodeFirewallError(f"no iptables port for family {', '.join(missing)}")
        try:
            sets = ipset.Transaction()
            plan_sets(sets, desired_sets(spec), await self._our_sets())
            if sets.lines:
                await self.ipsets.restore(sets)
            wrote = bool(sets.lines)
            for family in spec.families:
                egress = masquerade_rule(family, spec.random_fully) if spec.pod_egress else None
                wrote |= await self._rules(family, forward_rules(spec.node_interface), egress)
        except Exception as err:
            raise NodeFirewallError(f"routing firewall apply failed: {err}") from err
        if wrote:
            log.info("routing firewall: ipsets and rules brought in line")
        return wrote

    async def cleanup(self) -> None:
        """Remove our FORWARD accepts, masquerade rules and sets (every family); nothing else."""
        try:
            for family in self.iptables:
                await self._rules(family, (), None)
            names = sorted(await self._our_sets(with_tmp=True))
            if names:
                await self.ipsets.restore(ipset.destroy_transaction(names))
        except Exception as err:
            raise NodeFirewallError(f"routing firewall cleanup failed: {err}") from err

    async def _our_sets(self, with_tmp: bool = False) -> dict[str, ipset.SetState]:
        """Our sets as the kernel holds them (and, ``with_tmp``, temporary ones a crash left)."""
        specs = [set_spec(b, f) for b in SET_TYPES for f in FAMILIES]
        ours = {s.name for s in specs} | ({tmp_set_name(s) for s in specs} if with_tmp else set())
        found = await self.ipsets.save((*SET_TYPES, ipset.TMP_PREFIX))
        return {n: s for n, s in found.items() if n in ours}

    async def _rules(self, family: ipt.Family, forward: Sequence[str], egress: str | None) -> bool:
        """Bring FORWARD and POSTROUTING of one family in line; True when written."""
        port = self.iptables[family]
        filt, nat = ipt.Transaction("filter"), ipt.Transaction("nat")
        plan_forward(filt, forward, ipt.parse_save(await port.save("filter")).get("filter"))
        plan_masquerade(nat, family, egress, ipt.parse_save(await port.save("nat")).get("nat"))
        for tx in (filt, nat):
            if len(tx):
                log.debug("routing firewall: %d lines to %s %s", len(tx), family, tx.table)
                await port.restore(tx)
        return bool(len(filt) or len(nat))

"""Random NetworkPolicy worlds and churn, for the differential tests against ``oracle.netpol``.

One generator serves two tiers: under hypothesis (a :class:`DrawChooser`, so a failing case
shrinks to a small one) and from a plain seed (a :class:`SeededChooser`, for the real-packet
tier where a case costs seconds). It writes Kubernetes JSON objects, so the same world can be
sent to the lab API server or decoded into the slim models for the oracle.

The pod layout (which pods exist, their node and addresses) is the tier's; the generator picks
labels, named ports, which pods exist at a step, namespace labels, and the policies.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgspec
from hypothesis import strategies as st

from kube_router.k8s.models import Namespace, NetworkPolicy, Pod
from oracle.netpol import World, egress_allowed, ingress_allowed, pod_by_ip

T = TypeVar("T")
Obj = dict[str, Any]

NAMESPACES = ("x", "y", "z")
PORTS = (80, 81)
# The protocols a connection can have; which of them a tier probes is its own choice.
PROTOCOLS = ("TCP", "UDP", "SCTP")
MAX_POLICIES = 4
MAX_RULES = 2
MAX_PEERS = 2
MAX_PORTS = 2


class Chooser(Protocol):
    def pick(self, options: Sequence[T]) -> T: ...

    def chance(self) -> bool: ...

    def count(self, low: int, high: int) -> int: ...


class DrawChooser:
    """Choices drawn by hypothesis (``st.data()``): they shrink towards the first option."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self._draw = draw

    def pick(self, options: Sequence[T]) -> T:
        value: T = self._draw(st.sampled_from(list(options)))
        return value

    def chance(self) -> bool:
        return bool(self._draw(st.booleans()))

    def count(self, low: int, high: int) -> int:
        return int(self._draw(st.integers(low, high)))


class SeededChooser:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def pick(self, options: Sequence[T]) -> T:
        return self._rng.choice(list(options))

    def chance(self) -> bool:
        return self._rng.random() < 0.5

    def count(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)


@dataclass(frozen=True)
class Slot:
    """A pod the tier can run: its place and addresses (one per family)."""

    namespace: str
    name: str
    node: str  # "local" or "remote"
    host_ip: str
    ips: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# Container port layouts (name, port, protocol); the same name on two pods may mean two ports.
PORT_LAYOUTS: tuple[tuple[tuple[str, int, str], ...], ...] = (
    (("web", 80, "TCP"), ("alt", 81, "TCP"), ("dns", 80, "UDP")),
    (),
    (("web", 81, "TCP"), ("dns", 81, "UDP")),
    (("alt", 80, "TCP"), ("web", 81, "UDP"), ("sct", 80, "SCTP")),
)
TIERS = ("web", "db")
TEAMS = ("red", "blue")


def pod_labels(c: Chooser, slot: Slot) -> dict[str, str]:
    labels = {"app": slot.name}
    if c.chance():
        labels["tier"] = c.pick(TIERS)
    if c.chance():
        labels["env"] = c.pick(("prod", "dev"))
    return labels


def pod_object(slot: Slot, labels: dict[str, str], layout: int, phase: str = "Running") -> Obj:
    ports = [
        {"name": n, "containerPort": p, "protocol": proto} for n, p, proto in PORT_LAYOUTS[layout]
    ]
    return {
        "metadata": {"name": slot.name, "namespace": slot.namespace, "labels": labels},
        "spec": {
            "nodeName": "n1" if slot.node == "local" else "n2",
            "containers": [{"name": "c", "ports": ports}],
        },
        "status": {
            "phase": phase,
            "hostIP": slot.host_ip,
            "podIP": slot.ips[0],
            "podIPs": [{"ip": ip} for ip in slot.ips],
        },
    }


def namespace_object(c: Chooser, name: str) -> Obj:
    labels = {"ns": name}
    if c.chance():
        labels["team"] = c.pick(TEAMS)
    return {"metadata": {"name": name, "labels": labels}}


def _expression(c: Chooser, key: str, values: Sequence[str]) -> Obj:
    op = c.pick(("In", "NotIn", "Exists", "DoesNotExist"))
    expr: Obj = {"key": key, "operator": op}
    if op in ("In", "NotIn"):
        expr["values"] = sorted({c.pick(values) for _ in range(c.count(1, 2))})
    return expr


def pod_selector(c: Chooser) -> Obj:
    kind = c.pick(("all", "app", "tier", "expr", "both"))
    if kind == "all":
        return {}
    if kind == "app":
        return {"matchLabels": {"app": c.pick(("a", "b", "c", "none"))}}
    if kind == "tier":
        return {"matchLabels": {"tier": c.pick(TIERS)}}
    expr = _expression(c, c.pick(("tier", "env")), (*TIERS, "prod", "dev"))
    if kind == "expr":
        return {"matchExpressions": [expr]}
    return {"matchLabels": {"app": c.pick(("a", "b"))}, "matchExpressions": [expr]}


def namespace_selector(c: Chooser) -> Obj:
    kind = c.pick(("all", "ns", "team", "expr"))
    if kind == "all":
        return {}
    if kind == "ns":
        return {"matchLabels": {"ns": c.pick(NAMESPACES)}}
    if kind == "team":
        return {"matchLabels": {"team": c.pick(TEAMS)}}
    return {"matchExpressions": [_expression(c, "team", TEAMS)]}


def peer(c: Chooser, blocks: Sequence[Obj]) -> Obj:
    kind = c.pick(("pod", "ns", "both", "block"))
    if kind == "pod":
        return {"podSelector": pod_selector(c)}
    if kind == "ns":
        return {"namespaceSelector": namespace_selector(c)}
    if kind == "both":
        return {"podSelector": pod_selector(c), "namespaceSelector": namespace_selector(c)}
    return {"ipBlock": copy.deepcopy(c.pick(blocks))}


def port(c: Chooser, protocols: Sequence[str]) -> Obj:
    kind = c.pick(("number", "any", "range", "named"))
    proto = c.pick(protocols)
    if kind == "number":
        return {"protocol": proto, "port": c.pick(PORTS)}
    if kind == "any":
        return {"protocol": proto}
    if kind == "range":
        return {"protocol": proto, "port": PORTS[0], "endPort": PORTS[-1]}
    return {"protocol": proto, "port": c.pick(("web", "alt", "dns", "sct"))}


def rule(c: Chooser, side: str, blocks: Sequence[Obj], protocols: Sequence[str]) -> Obj:
    out: Obj = {}
    if c.chance():
        out[side] = [peer(c, blocks) for _ in range(c.count(1, MAX_PEERS))]
    if c.chance():
        out["ports"] = [port(c, protocols) for _ in range(c.count(1, MAX_PORTS))]
    return out


def policy_object(
    c: Chooser, name: str, blocks: Sequence[Obj], protocols: Sequence[str] = PROTOCOLS
) -> Obj:
    spec: Obj = {"podSelector": pod_selector(c)}
    types = c.pick(((), ("Ingress",), ("Egress",), ("Ingress", "Egress")))
    if types:
        spec["policyTypes"] = list(types)
    if not types or "Ingress" in types or c.chance():
        spec["ingress"] = [rule(c, "from", blocks, protocols) for _ in range(c.count(0, MAX_RULES))]
    if not types or "Egress" in types or c.chance():
        spec["egress"] = [rule(c, "to", blocks, protocols) for _ in range(c.count(0, MAX_RULES))]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": c.pick(NAMESPACES)},
        "spec": spec,
    }


@dataclass
class Scenario:
    """A world as API objects, keyed as the API server keys them."""

    slots: tuple[Slot, ...]
    blocks: tuple[Obj, ...]
    protocols: tuple[str, ...] = PROTOCOLS
    namespaces: dict[str, Obj] = field(default_factory=dict)
    pods: dict[str, Obj] = field(default_factory=dict)
    policies: dict[str, Obj] = field(default_factory=dict)
    # Pods policy must not see: hostNetwork (the address is a node's) and finished ones (their
    # address may be a live pod's again). Not churned.
    extras: dict[str, Obj] = field(default_factory=dict)
    serial: int = 0

    def world(self) -> World:
        pods = [*self.pods.values(), *self.extras.values()]
        return World(
            pods=[msgspec.convert(p, Pod) for p in pods],
            namespaces=[msgspec.convert(n, Namespace) for n in self.namespaces.values()],
            policies=[msgspec.convert(p, NetworkPolicy) for p in self.policies.values()],
        )

    def new_policy(self, c: Chooser) -> Obj:
        self.serial += 1
        return policy_object(c, f"p{self.serial}", self.blocks)

    def new_pod(self, c: Chooser, slot: Slot) -> Obj:
        return pod_object(slot, pod_labels(c, slot), c.count(0, len(PORT_LAYOUTS) - 1))


def scenario(
    c: Chooser, slots: Sequence[Slot], blocks: Sequence[Obj], protocols: Sequence[str] = PROTOCOLS
) -> Scenario:
    """A random world: every namespace, most pods, 1 to 4 policies. Policies may name any
    protocol; the world's ``protocols`` (what a tier probes) are ``protocols`` when there are two
    or fewer, else TCP and one or both others."""
    probed = c.pick(((0, 1), (0, 2), (0, 1, 2))) if len(protocols) > 2 else range(len(protocols))
    probing = tuple(protocols[i] for i in probed)
    world = Scenario(tuple(slots), tuple(blocks), probing)
    for name in NAMESPACES:
        world.namespaces[name] = namespace_object(c, name)
    for slot in slots:
        if c.count(0, 5) > 0:  # mostly present; an absent pod's address is a non-pod endpoint
            world.pods[slot.key] = world.new_pod(c, slot)
    for _ in range(c.count(1, MAX_POLICIES)):
        obj = world.new_policy(c)
        world.policies[key_of(obj)] = obj
    _add_extras(c, world)
    return world


def _add_extras(c: Chooser, world: Scenario) -> None:
    """Maybe a hostNetwork pod on the remote node and a finished pod holding a slot's address,
    both labelled like the others (so selectors reach them)."""
    remote = [s for s in world.slots if s.node == "remote"]
    if remote and c.chance():
        base = remote[0]
        ips = (base.host_ip,)
        slot = Slot(c.pick(NAMESPACES), "hostnet", "remote", base.host_ip, ips)
        obj = pod_object(slot, pod_labels(c, slot), 0)
        obj["spec"]["hostNetwork"] = True
        world.extras[slot.key] = obj
    if c.chance():
        base = c.pick(world.slots)
        slot = Slot(c.pick(NAMESPACES), "done", base.node, base.host_ip, base.ips)
        phase = c.pick(("Succeeded", "Failed"))
        world.extras[slot.key] = pod_object(slot, pod_labels(c, slot), 0, phase)


def key_of(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


# --- churn ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One change: with ``obj``, written to ``resource`` (create or replace); else deleted."""

    what: str
    resource: str
    key: str
    obj: Obj | None


def churn(c: Chooser, world: Scenario) -> Step:
    """A random change, applied to ``world``; returns it for the tier to apply too."""
    kinds = ["policy-add", "policy-replace", "policy-delete", "pod-relabel", "pod-add"]
    kinds += ["pod-remove", "ns-relabel"]
    kind = c.pick(kinds)
    if kind == "policy-add" or (kind.startswith("policy") and not world.policies):
        obj = world.new_policy(c)
        return _put(world.policies, "policy-add", "networkpolicies", obj)
    if kind == "policy-replace":
        key = c.pick(sorted(world.policies))
        obj = world.new_policy(c)
        obj["metadata"] = copy.deepcopy(world.policies[key]["metadata"])
        return _put(world.policies, kind, "networkpolicies", obj)
    if kind == "policy-delete":
        key = c.pick(sorted(world.policies))
        del world.policies[key]
        return Step(kind, "networkpolicies", key, None)
    if kind == "ns-relabel":
        obj = namespace_object(c, c.pick(NAMESPACES))
        return _put(world.namespaces, kind, "namespaces", obj)
    return _pod_step(c, world, kind)


def _pod_step(c: Chooser, world: Scenario, kind: str) -> Step:
    absent = [s for s in world.slots if s.key not in world.pods]
    if (kind == "pod-add" and absent) or not world.pods:
        slot = c.pick(absent)
        return _put(world.pods, "pod-add", "pods", world.new_pod(c, slot))
    key = c.pick(sorted(world.pods))
    if kind == "pod-remove":
        del world.pods[key]
        return Step(kind, "pods", key, None)
    obj = copy.deepcopy(world.pods[key])
    slot = next(s for s in world.slots if s.key == key)
    obj["metadata"]["labels"] = pod_labels(c, slot)
    return _put(world.pods, "pod-relabel", "pods", obj)


def _put(into: dict[str, Obj], what: str, resource: str, obj: Obj) -> Step:
    key = key_of(obj)
    into[key] = obj
    return Step(what, resource, key, copy.deepcopy(obj))


# --- what one node decides -----------------------------------------------------------------------


def local_pods(world: World, addresses: Iterable[str], node_ips: Collection[str]) -> dict[str, Pod]:
    """The policy pod behind each address that runs on the node with ``node_ips``."""
    out = {}
    for address in addresses:
        pod = pod_by_ip(world, address)
        if pod is not None and pod.status.host_ip in node_ips:
            out[address] = pod
    return out


def node_allows(
    world: World, local: Mapping[str, Pod], src: str, dst: str, protocol: str, port: int
) -> bool:
    """What the node must decide: the egress leg of a local source pod and the ingress leg of a
    local destination pod (``local`` from :func:`local_pods`; a leg on another node is that
    node's business)."""
    if src in local and not egress_allowed(world, local[src], dst, port, protocol):
        return False
    return dst not in local or ingress_allowed(world, local[dst], src, port, protocol)

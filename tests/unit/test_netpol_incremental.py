"""The incremental compiler always equals a compile from scratch, over random change sequences."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from kube_router.config import parse
from kube_router.controllers.netpol.desired import (
    Changes,
    FamilyState,
    IncrementalCompiler,
    build_desired,
)
from kube_router.controllers.netpol.names import IPV4
from kube_router.controllers.netpol.plan import KernelView, plan_full, plan_incremental
from kube_router.controllers.netpol.pools import Pools
from kube_router.controllers.sync import ChangeTracker
from kube_router.dataplane.ipset_fake import FakeIPSets
from kube_router.dataplane.iptables_parse import Table
from kube_router.k8s import models

NODE_IP = "192.168.1.1"
NAMESPACES = ("x", "y", "z")
LABELS = ({"app": "a"}, {"app": "b"}, {"app": "a", "tier": "web"}, {})


def _pod(i: int, rnd: random.Random) -> models.Pod:
    local = rnd.random() < 0.6
    return msgspec.convert(
        {
            "metadata": {
                "name": f"p{i}",
                "namespace": rnd.choice(NAMESPACES),
                "labels": rnd.choice(LABELS),
            },
            "spec": {
                "containers": [{"ports": [{"name": "http", "containerPort": 80 + i % 3}]}],
                "hostNetwork": rnd.random() < 0.05,
            },
            "status": {
                "phase": rnd.choice(["Running", "Running", "Running", "Succeeded"]),
                "hostIP": NODE_IP if local else "192.168.1.2",
                "podIP": f"10.0.{i // 200}.{i % 200 + 2}",
                "podIPs": [{"ip": f"10.0.{i // 200}.{i % 200 + 2}"}],
            },
        },
        models.Pod,
    )


def _peer(rnd: random.Random) -> dict[str, Any]:
    kind = rnd.choice(["pod", "ns", "both", "block"])
    if kind == "block":
        return {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}}
    peer: dict[str, Any] = {}
    if kind in ("pod", "both"):
        peer["podSelector"] = {"matchLabels": rnd.choice(LABELS)}
    if kind in ("ns", "both"):
        peer["namespaceSelector"] = {
            "matchLabels": rnd.choice([{"team": "t1"}, {"team": "t2"}, {}])
        }
    return peer


def _policy(i: int, rnd: random.Random) -> models.NetworkPolicy:
    ports = rnd.choice([[], [{"port": 80}], [{"port": "http"}], [{"protocol": "UDP"}]])
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": rnd.choice(LABELS)},
        "ingress": [{"from": [_peer(rnd)], "ports": ports}],
    }
    if rnd.random() < 0.4:
        spec["egress"] = [{"to": rnd.choice([[], [_peer(rnd)]]), "ports": ports}]
        spec["policyTypes"] = ["Ingress", "Egress"]
    return msgspec.convert(
        {"metadata": {"name": f"pol{i}", "namespace": rnd.choice(NAMESPACES)}, "spec": spec},
        models.NetworkPolicy,
    )


def _ns(name: str, rnd: random.Random) -> models.Namespace:
    return msgspec.convert(
        {"metadata": {"name": name, "labels": rnd.choice([{"team": "t1"}, {"team": "t2"}, {}])}},
        models.Namespace,
    )


def _through_pools(kernel: FakeIPSets) -> dict[str, set[str]]:
    """Each policy set's members as a packet sees them (a list:set's through its pool)."""
    state = kernel.state()
    out = {}
    for name, have in state.items():
        if name.startswith("KUBE-POOL-"):
            continue
        if have.spec.type == "list:set":
            if not have.entries:
                continue  # emptied, waiting to be destroyed
            (pool,) = have.entries
            out[name] = set(state[pool].entries)
        else:
            out[name] = set(have.entries)
    return out


@pytest.mark.parametrize("seed", range(12))
def test_incremental_equals_scratch(seed: int) -> None:
    rnd = random.Random(seed)
    cfg = parse([], {})
    pods = {f"p{i}": _pod(i, rnd) for i in range(25)}
    pols = {f"pol{i}": _policy(i, rnd) for i in range(8)}
    nss = {n: _ns(n, rnd) for n in NAMESPACES}
    inc = IncrementalCompiler()
    first = inc.build(cfg, pods.values(), list(nss.values()), pols.values(), {NODE_IP}, [], None)
    kernel, last = FakeIPSets(), first.families[IPV4]
    kernel.apply(plan_full(last, KernelView(Table("filter"), {})).sets_before.render())
    # The same sets through pools, as the controller applies them.
    pools, pooled = Pools(IPV4), FakeIPSets()
    pooled_last = FamilyState(last.chains, pools.realize(last.sets))
    pooled.apply(plan_full(pooled_last, KernelView(Table("filter"), {})).sets_before.render())
    next_id = 100
    for _step in range(40):
        changes = Changes()
        pod_changes: ChangeTracker[str, models.Pod] = ChangeTracker()
        ns_changes: ChangeTracker[str, models.Namespace] = ChangeTracker()
        for _ in range(rnd.randint(1, 3)):
            what = rnd.random()
            if what < 0.5:  # pod add / change / delete
                key = rnd.choice([*pods, f"p{next_id}"])
                next_id += 1
                old = pods.get(key)
                new = None if old is not None and rnd.random() < 0.3 else _pod(int(key[1:]), rnd)
                if new is None:
                    del pods[key]
                else:
                    pods[key] = new
                # As the informer reports it: one update when the key stays, else a delete and
                # an add (a pod "moving" namespaces is another object).
                same = (
                    old is not None
                    and new is not None
                    and old.metadata.namespace == new.metadata.namespace
                )
                if old is not None and not same:
                    pod_changes.record(f"{old.metadata.namespace}/{key}", old, None)
                if new is not None:
                    pod_changes.record(
                        f"{new.metadata.namespace}/{key}", old if same else None, new
                    )
            elif what < 0.8:  # policy add / change / delete
                key = rnd.choice([*pols, f"pol{next_id}"])
                next_id += 1
                old_pol = pols.get(key)
                if old_pol is not None and rnd.random() < 0.3:
                    del pols[key]
                else:
                    pols[key] = _policy(int(key[3:]), rnd)
                for p in (old_pol, pols.get(key)):
                    if p is not None:
                        changes.policies.add(f"{p.metadata.namespace}/{p.metadata.name}")
            else:  # namespace relabel
                name = rnd.choice(NAMESPACES)
                old_ns, nss[name] = nss[name], _ns(name, rnd)
                ns_changes.record(name, old_ns, nss[name])
        changes.pods, changes.namespaces = pod_changes.drain(), ns_changes.drain()
        got = inc.build(
            cfg, pods.values(), list(nss.values()), pols.values(), {NODE_IP}, [], changes
        )
        want = build_desired(cfg, pods.values(), list(nss.values()), pols.values(), {NODE_IP}, [])
        assert got.families == want.families, f"seed {seed} step {_step}"
        assert got.errors == want.errors
        # The set edits the plan makes (from peer-set deltas or a diff) give the wanted members.
        plan = plan_incremental(got.families[IPV4], last)
        kernel.apply(plan.sets_before.render())
        kernel.apply(plan.sets_after.render())
        last = got.families[IPV4]
        members = {n: set(s.entries) for n, s in kernel.state().items()}
        assert members == {n: set(s.entries) for n, s in want.families[IPV4].sets.items()}
        applied = FamilyState(got.families[IPV4].chains, pools.realize(got.families[IPV4].sets))
        plan = plan_incremental(applied, pooled_last)
        pooled.apply(plan.sets_before.render())
        pooled.apply(plan.sets_after.render())
        pooled_last = applied
        assert _through_pools(pooled) == members
    assert inc.recompiled_policies < 8 + 40 * 3 * 8  # it did not recompile everything each step
    assert inc.deltas > 0  # the peer-set delta path ran, and matched the scratch compile

"""Table-driven compile tests from Kubernetes YAML under tests/testdata/netpol.

Each fixture holds namespaces, pods and policies, an optional ``config`` override, and
``expect``: per policy its error, directions, target pods, warnings count and per family the
exact rules (``rules``, or ``allow``: matches each expanded into upstream's MARK/RETURN pair) and
the exact sets; per local pod per family the full ``rules``, the ``policy_jumps``, which
directions take the ``default`` chain, and the ``jumps`` into the pod chain (``null`` family: the
pod has no chain in that family).

Hashed names are written as aliases, resolved for the policy (and family) being checked:
``<TDST>`` ``<TSRC>`` target sets, ``<ISRC0>``/``<EDST0>`` rule 0 peer pods,
``<IBLK0>``/``<EBLK0>`` rule 0 ipBlocks, ``<INP0.1>``/``<ENP0.1>`` rule 0 named port 1,
``<CHAIN ns/name>`` a policy chain, ``<POD>`` the pod's chain.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from kube_router.config import Config, parse
from kube_router.controllers.netpol import names
from kube_router.controllers.netpol.compile import (
    PolicyPiece,
    compile_pod,
    compile_policy,
    is_local,
    pod_key,
)
from kube_router.controllers.netpol.names import Family
from kube_router.k8s.models import Namespace, NetworkPolicy, Pod

FIXTURES = sorted((Path(__file__).parent.parent / "testdata" / "netpol").glob("*.yaml"))
NODE_IPS = ("10.0.0.1", "fd00::1")
ALIAS = re.compile(r"<([A-Z]+)([0-9.]*)(?: ([^>]+))?>")
ALLOWED = "0x10000/0x10000"


def resolve(text: str, family: Family, policy: str = "", pod: str = "") -> str:
    def one(m: re.Match[str]) -> str:
        kind, idx, arg = m[1], m[2], m[3]
        if kind == "POD":
            return names.pod_fw_chain(*pod.split("/"))
        ns, name = (arg or policy).split("/")
        rule, _, port = idx.partition(".")
        simple = {
            "TDST": lambda: names.target_dst_set(ns, name, family),
            "TSRC": lambda: names.target_src_set(ns, name, family),
            "CHAIN": lambda: names.policy_chain(ns, name, family),
            "ECHAIN": lambda: names.policy_egress_chain(ns, name, family),
            "ISRC": lambda: names.ingress_pods_set(ns, name, int(rule), family),
            "EDST": lambda: names.egress_pods_set(ns, name, int(rule), family),
            "IBLK": lambda: names.ingress_ipblock_set(ns, name, int(rule), family),
            "EBLK": lambda: names.egress_ipblock_set(ns, name, int(rule), family),
            "INP": lambda: names.ingress_named_port_set(ns, name, int(rule), int(port), family),
            "ENP": lambda: names.egress_named_port_set(ns, name, int(rule), int(port), family),
        }
        return simple[kind]()

    return ALIAS.sub(one, text)


def load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = yaml.safe_load(path.read_text())
    return case


def config(overrides: dict[str, Any]) -> Config:
    return dataclasses.replace(parse([], {}), **overrides)


COMMENT = re.compile(r'^-m comment --comment "[^"]*"')


def expand_allow(matches: list[str]) -> list[str]:
    """Each match: MARK on the whole match, then RETURN on its comment and the mark."""
    rules = []
    for match in matches:
        comment = COMMENT.match(match)
        assert comment is not None, f"an allow match starts with its comment: {match}"
        rules.append(f"{match} -j MARK --set-xmark {ALLOWED}")
        rules.append(f"{comment[0]} -m mark --mark {ALLOWED} -j RETURN")
    return rules


def check_policy(piece: PolicyPiece, expect: dict[str, Any], families: tuple[Family, ...]) -> None:
    assert piece.error == expect.get("error"), piece.error
    for field in ("ingress", "egress"):
        if field in expect:
            assert getattr(piece, field) is expect[field], field
    if "target_pods" in expect:
        assert sorted(piece.target_pods) == expect["target_pods"]
    assert len(piece.warnings) == expect.get("warnings", 0), piece.warnings
    if piece.error is not None:
        assert not piece.families
        return
    assert set(piece.families) == set(families)
    for family in families:
        want = expect.get(family)
        if want is None:
            continue
        got = piece.families[family]
        chains = names.direction_chains(
            piece.namespace, piece.name, family, piece.ingress, piece.egress
        )
        assert {d: c for d, (c, _) in got.chains.items()} == chains
        # The fixture lists the ingress chain's rules, then the egress chain's.
        rules = want["rules"] if "rules" in want else expand_allow(want["allow"])
        flat = [rule for d in ("ingress", "egress") if d in got.chains for rule in got.chains[d][1]]
        assert flat == [resolve(r, family, piece.key) for r in rules]
        sets = {s.name: {"type": s.kind, "entries": list(s.entries)} for s in got.sets}
        assert all(s.family == family for s in got.sets)
        wanted = {resolve(k, family, piece.key): v for k, v in want["sets"].items()}
        assert sets == wanted


def check_pod(pod: Pod, policies: list[PolicyPiece], expect: dict[str, Any], cfg: Config) -> None:
    key = pod_key(pod)
    assert is_local(pod, NODE_IPS)
    selecting = [p for p in policies if key in p.target_pods]
    piece = compile_pod(pod, selecting, cfg)
    assert piece.chain == names.pod_fw_chain(pod.metadata.namespace, pod.metadata.name)
    for family_name, want in expect.items():
        family: Family = "IPv6" if family_name == "IPv6" else "IPv4"
        if want is None:
            assert family not in piece.families
            continue
        got = piece.families[family]
        rules = list(got.rules)
        if "rules" in want:
            assert rules == [resolve(r, family, pod=key) for r in want["rules"]]
        if "policy_jumps" in want:
            jumps = [r for r in rules if re.search(r' policy" -j ', r)]
            assert jumps == [resolve(r, family, pod=key) for r in want["policy_jumps"]]
        if "default" in want:
            directions = [d for d in ("ingress", "egress") if f'"default {d}"' in " ".join(rules)]
            assert directions == want["default"]
        if "jumps" in want:
            wanted = {
                c: [resolve(r, family, pod=key) for r in rs] for c, rs in want["jumps"].items()
            }
            assert {c: list(rs) for c, rs in got.jumps.items()} == wanted


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture(path: Path) -> None:
    case = load(path)
    cfg = config(case.get("config", {}))
    families: tuple[Family, ...] = ("IPv4", "IPv6") if cfg.enable_ipv6 else ("IPv4",)
    pods = [msgspec.convert(obj, Pod) for obj in case.get("pods", [])]
    namespaces = [msgspec.convert(obj, Namespace) for obj in case.get("namespaces", [])]
    policies = [msgspec.convert(obj, NetworkPolicy) for obj in case["policies"]]
    index: dict[str, list[Pod]] = defaultdict(list)
    for pod in pods:
        index[pod.metadata.namespace].append(pod)
    pieces = {
        f"{p.metadata.namespace}/{p.metadata.name}": compile_policy(p, index, namespaces, cfg)
        for p in policies
    }
    expect = case["expect"]
    if "local" in expect:
        assert [pod_key(p) for p in pods if is_local(p, NODE_IPS)] == expect["local"]
    for key, want in expect.get("policies", {}).items():
        check_policy(pieces[key], want, families)
    by_key = {pod_key(p): p for p in pods}
    for key, want in expect.get("pods", {}).items():
        check_pod(by_key[key], list(pieces.values()), want, cfg)

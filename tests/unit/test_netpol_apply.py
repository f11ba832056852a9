"""Partial syncs patch long chains in place; the result must equal a rewrite, rule for rule."""

from __future__ import annotations

import random

import pytest

from kube_router.controllers.netpol.apply import PATCH_MIN_RULES, plan_incremental
from kube_router.controllers.netpol.desired import FamilyState
from kube_router.dataplane.iptables_fake import FakeIPTables

CHAIN = "KUBE-ROUTER-FORWARD"


def _rule(i: int) -> str:
    return f'-d 10.0.{i // 250}.{i % 250 + 1}/32 -m comment --comment "pod {i}" -j KUBE-POD-FW-{i}'


def _state(ids: list[int]) -> FamilyState:
    chains = {CHAIN: [_rule(i) for i in ids], **{f"KUBE-POD-FW-{i}": [] for i in ids}}
    return FamilyState(chains, {})


def _fresh(state: FamilyState) -> FakeIPTables:
    fake = FakeIPTables("ipv4")
    text = "*filter\n" + "".join(f":{c} - [0:0]\n" for c in state.chains)
    text += "".join(f"-A {c} {r}\n" for c, rules in state.chains.items() for r in rules)
    fake.apply(text + "COMMIT\n")
    return fake


@pytest.mark.parametrize("seed", range(30))
def test_patched_chain_equals_rewrite(seed: int) -> None:
    rnd = random.Random(seed)
    ids = list(range(PATCH_MIN_RULES + rnd.randint(0, 60)))
    fake = _fresh(_state(ids))
    last = _state(ids)
    next_id = 1000
    for _ in range(10):
        new_ids = list(ids)
        for _ in range(rnd.randint(1, 4)):
            if rnd.random() < 0.5 and len(new_ids) > PATCH_MIN_RULES + 4:
                new_ids.pop(rnd.randrange(len(new_ids)))
            else:
                new_ids.insert(rnd.randrange(len(new_ids) + 1), next_id)
                next_id += 1
        desired = _state(new_ids)
        plan = plan_incremental(desired, last)
        fake.apply(plan.rules.render())
        assert [r.text for r in fake.rules(CHAIN)] == [r.text for r in _fresh(desired).rules(CHAIN)]
        ids, last = new_ids, desired


def test_small_change_to_a_long_chain_is_patched_not_rewritten() -> None:
    ids = list(range(500))
    plan = plan_incremental(_state([*ids[:250], 9999, *ids[250:]]), _state(ids))
    text = plan.rules.render()
    assert f":{CHAIN} " not in text  # not redeclared (which would flush and rewrite it)
    assert f"-I {CHAIN} 251 " in text
    assert plan.rule_lines == 2  # the new pod chain's declaration, and one insert

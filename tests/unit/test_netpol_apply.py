"""Planning: partial syncs patch long chains in place (equal to a rewrite, rule for rule); full
syncs touch only what differs from the kernel."""

from __future__ import annotations

import random

import pytest

from kube_router.controllers.netpol.compile import IPSetSpec
from kube_router.controllers.netpol.desired import FamilyState
from kube_router.controllers.netpol.names import IPV4
from kube_router.controllers.netpol.plan import (
    PATCH_MIN_RULES,
    KernelView,
    plan_full,
    plan_incremental,
)
from kube_router.dataplane import ipset
from kube_router.dataplane.ipset_fake import FakeIPSets
from kube_router.dataplane.iptables_fake import FakeIPTables
from kube_router.dataplane.iptables_parse import parse_save

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


# --- full sync: against what the kernel holds -------------------------------------------------

SRC, NET = "KUBE-SRC-AAAAAAAAAAAAAAAA", "KUBE-SRC-BBBBBBBBBBBBBBBB"


def _kernel(
    chains: dict[str, list[str]], sets: dict[str, tuple[str, frozenset[str]]]
) -> KernelView:
    table = parse_save(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        + "".join(f":{c} - [0:0]\n" for c in chains)
        + "".join(f"-A {c} {r}\n" for c, rules in chains.items() for r in rules)
        + "COMMIT\n"
    )["filter"]
    states = {
        n: ipset.SetState(ipset.SetSpec(n, kind), entries) for n, (kind, entries) in sets.items()
    }
    return KernelView(table, states)


def _desired(sets: dict[str, tuple[str, tuple[str, ...]]]) -> FamilyState:
    chains = {CHAIN: [_rule(i) for i in range(3)], **{f"KUBE-POD-FW-{i}": [] for i in range(3)}}
    specs = {n: IPSetSpec(n, kind, IPV4, entries) for n, (kind, entries) in sets.items()}
    return FamilyState(chains, specs)


def test_full_sync_of_a_kernel_that_is_right_changes_nothing() -> None:
    desired = _desired({SRC: ("hash:ip", ("10.0.0.1", "10.0.0.2"))})
    kernel = _kernel(desired.chains, {SRC: ("hash:ip", frozenset({"10.0.0.1", "10.0.0.2"}))})
    plan = plan_full(desired, kernel)
    assert (plan.rule_lines, plan.sets_before.lines, plan.sets_after.lines) == (0, [], [])


@pytest.mark.parametrize(
    ("have", "want", "lines"),
    [
        (  # a member gone and one too many: only those two
            ("hash:ip", {"10.0.0.1", "10.0.0.9"}),
            ("hash:ip", ("10.0.0.1", "10.0.0.2")),
            [f"del {SRC} 10.0.0.9", f"add {SRC} 10.0.0.2"],
        ),
        (  # a except CIDR that lost its nomatch flag
            ("hash:net", {"10.0.0.0/8", "10.1.0.0/16"}),
            ("hash:net", ("10.0.0.0/8", "10.1.0.0/16 nomatch")),
            [f"del {SRC} 10.1.0.0/16", f"add {SRC} 10.1.0.0/16 nomatch"],
        ),
        (  # the desired text is not canonical, the member is the same: nothing to do
            ("hash:net", {"10.0.0.0/8"}),
            ("hash:net", ("10.0.0.1/8",)),
            [],
        ),
    ],
)
def test_full_sync_repairs_only_the_members_that_differ(
    have: tuple[str, set[str]], want: tuple[str, tuple[str, ...]], lines: list[str]
) -> None:
    desired = _desired({SRC: want})
    plan = plan_full(desired, _kernel(desired.chains, {SRC: (have[0], frozenset(have[1]))}))
    assert plan.sets_before.lines == lines


def test_full_sync_creates_missing_sets_largest_first_and_recreates_wrong_types() -> None:
    small, big = "KUBE-DST-AAAAAAAAAAAAAAAA", "KUBE-DST-BBBBBBBBBBBBBBBB"
    desired = _desired(
        {
            small: ("hash:ip", ("10.0.0.1",)),
            big: ("hash:ip", ("10.0.0.1", "10.0.0.2", "10.0.0.3")),
            NET: ("hash:net", ("10.0.0.0/8",)),
        }
    )
    plan = plan_full(desired, _kernel(desired.chains, {NET: ("hash:ip", frozenset())}))
    creates = [line.split()[1] for line in plan.sets_before.lines if line.startswith("create")]
    assert creates[:2] == [big, small]  # new sets, the largest first
    assert f"destroy {NET}" in plan.sets_before.lines  # of the wrong type: recreated
    fake = FakeIPSets()
    fake.apply("create KUBE-SRC-BBBBBBBBBBBBBBBB hash:ip timeout 0\n")
    fake.apply(plan.sets_before.render())
    state = fake.state()
    assert {n: set(state[n].entries) for n in (small, big, NET)} == {
        small: {"10.0.0.1"},
        big: {"10.0.0.1", "10.0.0.2", "10.0.0.3"},
        NET: {"10.0.0.0/8"},
    }
    assert state[NET].spec.type == "hash:net"


def test_full_sync_rewrites_only_the_chains_that_differ() -> None:
    desired = _desired({})
    damaged = dict(desired.chains)
    damaged[CHAIN] = damaged[CHAIN][:1]  # two rules deleted from outside
    damaged["KUBE-POD-FW-STALE"] = ["-j ACCEPT"]
    plan = plan_full(desired, _kernel(damaged, {}))
    text = plan.rules.render()
    assert f":{CHAIN} - [0:0]" in text and ":KUBE-POD-FW-0 " not in text
    assert "-X KUBE-POD-FW-STALE" in text

"""Pools: policy sets stored as list:sets of shared pool sets (pure; kernel tests elsewhere)."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from kube_router.controllers.netpol.names import IPV4, IPV6
from kube_router.controllers.netpol.pieces import HASH_IP, HASH_NET, LIST_SET, IPSetSpec
from kube_router.controllers.netpol.pools import (
    DESTROYS_PER_SYNC,
    KernelSet,
    Pools,
    is_pool,
    is_pooled,
)

IPS = tuple(f"10.0.0.{i}" for i in range(1, 9))


def spec(name: str, *entries: str, kind: str = HASH_IP) -> IPSetSpec:
    return IPSetSpec(name, kind, IPV4, tuple(sorted(entries)))


def members(out: Mapping[str, IPSetSpec], name: str) -> frozenset[str]:
    """What a packet sees in ``name``: through its pool when it is a list:set."""
    got = out[name]
    if got.kind != LIST_SET:
        return frozenset(got.entries)
    assert len(got.entries) == 1
    pool = out[got.entries[0]]
    assert pool.kind == HASH_IP and is_pool(pool.name)
    return frozenset(pool.entries)


def check(out: Mapping[str, IPSetSpec], desired: Mapping[str, IPSetSpec]) -> None:
    """Every desired set matches what it should, every pool is used, no two pools agree."""
    for name, want in desired.items():
        assert members(out, name) == frozenset(want.entries), name
        assert (out[name].kind == LIST_SET) == is_pooled(want)
    pools = {n: s for n, s in out.items() if is_pool(n)}
    used = {out[n].entries[0] for n in desired if out[n].kind == LIST_SET}
    assert set(pools) == used
    contents = [frozenset(s.entries) for s in pools.values()]
    assert len(contents) == len(set(contents))
    for name in set(out) - set(desired) - set(pools):  # emptied lists waiting to be destroyed
        assert out[name].kind == LIST_SET and out[name].entries == (), name


@pytest.mark.parametrize(
    ("name", "kind", "pooled"),
    [
        ("KUBE-SRC-ABC", HASH_IP, True),
        ("KUBE-DST-ABC", HASH_IP, True),
        ("inet6:KUBE-DST-ABC", HASH_IP, True),
        ("KUBE-SRC-ABC", HASH_NET, False),  # ipBlocks keep their own hash:net set
        ("kube-router-local-pods", HASH_IP, False),
    ],
)
def test_what_is_pooled(name: str, kind: str, pooled: bool) -> None:
    assert is_pooled(IPSetSpec(name, kind, IPV4)) is pooled


def test_identical_members_share_one_pool() -> None:
    desired = {
        "KUBE-SRC-A": spec("KUBE-SRC-A", *IPS[:3]),
        "KUBE-SRC-B": spec("KUBE-SRC-B", *IPS[:3]),
        "KUBE-DST-C": spec("KUBE-DST-C", *IPS[2:4]),
        "KUBE-SRC-N": spec("KUBE-SRC-N", "10.1.0.0/16", kind=HASH_NET),
    }
    out = Pools(IPV4).realize(desired)
    check(out, desired)
    assert out["KUBE-SRC-A"].entries == out["KUBE-SRC-B"].entries
    assert sum(is_pool(n) for n in out) == 2
    assert out["KUBE-SRC-N"] is desired["KUBE-SRC-N"]


def test_ipv6_pools_carry_the_prefix_and_fit_ipset_names() -> None:
    desired = {"inet6:KUBE-SRC-A": IPSetSpec("inet6:KUBE-SRC-A", HASH_IP, IPV6, ("fd00::1",))}
    out = Pools(IPV6).realize(desired)
    (pool,) = (n for n in out if is_pool(n))
    assert pool.startswith("inet6:KUBE-POOL-") and len(pool) == 31


def test_a_group_moving_together_edits_its_pool_in_place() -> None:
    pools = Pools(IPV4)
    first = {n: spec(n, *IPS[:3]) for n in ("KUBE-SRC-A", "KUBE-SRC-B")}
    out1 = pools.realize(first)
    second = {n: spec(n, *IPS[:4]) for n in first}
    out2 = pools.realize(second)
    check(out2, second)
    assert out2["KUBE-SRC-A"] is out1["KUBE-SRC-A"]  # the list:set is untouched
    assert out2["KUBE-SRC-A"].entries == out1["KUBE-SRC-A"].entries


def test_a_diverging_set_moves_and_the_rest_keep_the_pool() -> None:
    pools = Pools(IPV4)
    names = ("KUBE-SRC-A", "KUBE-SRC-B", "KUBE-SRC-C")
    out1 = pools.realize({n: spec(n, *IPS[:3]) for n in names})
    second = {n: spec(n, *IPS[:3]) for n in names[:2]} | {"KUBE-SRC-C": spec("KUBE-SRC-C", IPS[0])}
    second["KUBE-SRC-A"] = spec("KUBE-SRC-A", *IPS[:3])  # a new object with the same members
    out2 = pools.realize(second)
    check(out2, second)
    assert out2["KUBE-SRC-A"].entries == out1["KUBE-SRC-A"].entries
    assert out2["KUBE-SRC-C"].entries != out1["KUBE-SRC-C"].entries


def test_sets_meeting_on_the_same_members_merge_and_the_spare_pool_goes() -> None:
    pools = Pools(IPV4)
    first = {"KUBE-SRC-A": spec("KUBE-SRC-A", IPS[0]), "KUBE-SRC-B": spec("KUBE-SRC-B")}
    out1 = pools.realize(first)
    assert sum(is_pool(n) for n in out1) == 2
    second = {"KUBE-SRC-A": spec("KUBE-SRC-A", IPS[0]), "KUBE-SRC-B": spec("KUBE-SRC-B", IPS[0])}
    out2 = pools.realize(second)
    check(out2, second)
    assert sum(is_pool(n) for n in out2) == 1


def test_unchanged_sets_are_the_same_objects_from_sync_to_sync() -> None:
    pools = Pools(IPV4)
    desired = {n: spec(n, *IPS[:2]) for n in ("KUBE-SRC-A", "KUBE-DST-B")}
    out1 = pools.realize(desired)
    out2 = pools.realize(dict(desired))
    assert all(out2[n] is out1[n] for n in out1)


def test_seeding_from_the_kernel_keeps_its_assignment() -> None:
    pools = Pools(IPV4)
    desired = {n: spec(n, *IPS[:2]) for n in ("KUBE-SRC-A", "KUBE-DST-B")} | {
        "KUBE-SRC-C": spec("KUBE-SRC-C", IPS[5])
    }
    out1 = pools.realize(desired)
    kernel = {n: KernelSet(s.kind, frozenset(s.entries)) for n, s in out1.items()}
    again = Pools(IPV4)
    again.seed(kernel)
    out2 = again.realize(desired)
    assert {n: (s.kind, s.entries) for n, s in out2.items()} == {
        n: (s.kind, s.entries) for n, s in out1.items()
    }


def test_seeding_ignores_what_it_cannot_use() -> None:
    kernel = {
        "KUBE-SRC-A": KernelSet(LIST_SET, frozenset({"KUBE-POOL-GONE"})),  # pool destroyed
        "KUBE-SRC-B": KernelSet(HASH_IP, frozenset({IPS[0]})),  # upstream's layout
        "KUBE-SRC-C": KernelSet(LIST_SET, frozenset()),  # flushed from outside
    }
    pools = Pools(IPV4)
    pools.seed(kernel)
    desired = {n: spec(n, IPS[0]) for n in kernel}
    out = pools.realize(desired)
    check(out, desired)
    assert "KUBE-POOL-GONE" not in out


@pytest.mark.parametrize("seed", range(20))
def test_random_histories_always_realize_the_desired_members(seed: int) -> None:
    """Sets appear, vanish, change and meet; after each sync (and a re-seed now and then) the
    realized sets hold exactly the desired members with no pool wasted or duplicated."""
    rng = random.Random(seed)
    pools = Pools(IPV4)
    desired: dict[str, IPSetSpec] = {}
    names = [f"KUBE-{'SRC' if i % 2 else 'DST'}-{i}" for i in range(12)]
    lists = [tuple(rng.sample(IPS, rng.randint(0, 3))) for _ in range(4)]
    out: dict[str, IPSetSpec] = {}
    for _ in range(40):
        for name in rng.sample(names, rng.randint(1, 4)):
            if name in desired and rng.random() < 0.2:
                del desired[name]
            else:
                desired[name] = spec(name, *rng.choice(lists))
        if rng.random() < 0.15:
            pools.seed({n: KernelSet(s.kind, frozenset(s.entries)) for n, s in out.items()})
        out = pools.realize(desired)
        check(out, desired)


def test_lists_no_longer_wanted_are_emptied_at_once_and_destroyed_a_few_a_sync() -> None:
    pools = Pools(IPV4)
    many = {f"KUBE-SRC-{i}": spec(f"KUBE-SRC-{i}", IPS[i % 3]) for i in range(20)}
    pools.realize(many)
    keep = {"KUBE-SRC-0": many["KUBE-SRC-0"]}
    out = pools.realize(keep)
    check(out, keep)
    left = [n for n in out if n.startswith("KUBE-SRC-") and n not in keep]
    assert len(left) == 19 - DESTROYS_PER_SYNC
    assert pools.garbage == len(left)
    assert sum(is_pool(n) for n in out) == 1  # the emptied lists hold no pool
    # Wanted again while waiting: refilled, not destroyed.
    back = keep | {left[0]: spec(left[0], IPS[1])}
    out = pools.realize(back)
    check(out, back)
    while pools.garbage:
        out = pools.realize(back)
    assert {n for n in out if not is_pool(n)} == set(back)


def test_seeded_lists_that_are_not_wanted_become_garbage() -> None:
    kernel = {f"KUBE-SRC-{i}": KernelSet(LIST_SET, frozenset()) for i in range(3)}
    pools = Pools(IPV4)
    pools.seed(kernel)
    out = pools.realize({})
    assert out == {}  # three lists: all destroyed in this sync (fewer than the limit)

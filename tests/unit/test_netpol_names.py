"""Chain and ipset names against upstream kube-router's formula.

Formula (upstream pkg/controllers/netpol/policy.go and pod.go)::

    suffix = base32.StdEncoding(sha256(concatenation of the inputs))[:16]

with the family spelled ``IPv4``/``IPv6`` and ``inet6:`` before IPv6 ipset names. The expected
values below were computed by hand with ``base64.b32encode(hashlib.sha256(s).digest())[:16]``
on the concatenations shown next to them (the inputs of upstream's policy_test.go: "foo", "bar",
rule 1, named port 1).
"""

from __future__ import annotations

import pytest

from kube_router.controllers.netpol import names

# Upstream's TestNetworkPolicyBuilder expects these policy chain names for namespace nsA, sync
# version "1" and IPv4: hash(ns + name + version + family).
UPSTREAM_CHAIN_VECTORS = [
    ("simple-egress", "C23KD7UE4TAT3Y5M"),
    ("simple-ingress-egress", "IDIX352DRLNY3D23"),
    ("simple-egress-pr", "2UTXQIFBI5TAPUCL"),
    ("sctp-egress", "HHGHJNRMJN6UUDNA"),
    ("sctp-ingress", "BHQGYKZ6X5RBPUOB"),
    ("invalid-endport", "N5DQE4SCQ56JEMH7"),
]


@pytest.mark.parametrize(("policy", "suffix"), UPSTREAM_CHAIN_VECTORS)
def test_hash_matches_upstream_chain_vectors(policy: str, suffix: str) -> None:
    assert names.hash16("nsA" + policy + "1" + "IPv4") == suffix


def test_target_sets_share_one_digest() -> None:
    # "foo" + "bar" + "IPv4" / "IPv6"
    assert names.target_dst_set("foo", "bar", "IPv4") == "KUBE-DST-6I73UNIQX3LYGOJM"
    assert names.target_src_set("foo", "bar", "IPv4") == "KUBE-SRC-6I73UNIQX3LYGOJM"
    assert names.target_dst_set("foo", "bar", "IPv6") == "inet6:KUBE-DST-S3ICQP3ZGMDOPL5E"
    assert names.target_src_set("foo", "bar", "IPv6") == "inet6:KUBE-SRC-S3ICQP3ZGMDOPL5E"


def test_rule_pod_sets() -> None:
    # "foo" + "bar" + "ingressrule" + "1" + family + "pod"
    assert names.ingress_pods_set("foo", "bar", 1, "IPv4") == "KUBE-SRC-TIMNOR44YKWVGGI2"
    assert names.ingress_pods_set("foo", "bar", 1, "IPv6") == "inet6:KUBE-SRC-FPOGCRZ63CCLK4QI"
    # "foo" + "bar" + "egressrule" + "1" + "IPv4" + "pod"
    assert names.egress_pods_set("foo", "bar", 1, "IPv4") == "KUBE-DST-FNC3S5VQOYDPLATW"


def test_ipblock_sets() -> None:
    # "foo" + "bar" + "ingressrule" + "1" + "IPv4" + "ipblock"
    assert names.ingress_ipblock_set("foo", "bar", 1, "IPv4") == "KUBE-SRC-RWNT7XZ7L3TTLNWV"
    # "foo" + "bar" + "egressrule" + "1" + "IPv6" + "ipblock"
    expected = "inet6:KUBE-DST-XRGM2W6GF4DIXLU2"
    assert names.egress_ipblock_set("foo", "bar", 1, "IPv6") == expected


def test_named_port_sets_are_destination_sets() -> None:
    # "foo" + "bar" + "ingressrule" + "1" + "1" + "IPv4" + "namedport"
    assert names.ingress_named_port_set("foo", "bar", 1, 1, "IPv4") == "KUBE-DST-CQKV7ATUCFLD7C65"
    # "foo" + "bar" + "egressrule" + "1" + "1" + "IPv6" + "namedport"
    expected = "inet6:KUBE-DST-PMOSOOIQBRSBAQMR"
    assert names.egress_named_port_set("foo", "bar", 1, 1, "IPv6") == expected


def test_chains_leave_out_the_sync_version() -> None:
    # Pod chain: "foo" + "bar" (upstream: + version). Policy chain: "foo" + "bar" + family
    # (upstream: version before the family), so the same digest as the target sets.
    assert names.pod_fw_chain("foo", "bar") == "KUBE-POD-FW-YOVY74JXEDUK3ECH"
    assert names.policy_chain("foo", "bar", "IPv4") == "KUBE-NWPLCY-6I73UNIQX3LYGOJM"
    assert names.policy_chain("foo", "bar", "IPv6") == "KUBE-NWPLCY-S3ICQP3ZGMDOPL5E"
    assert names.pod_fw_chain("default", "web-0") == "KUBE-POD-FW-ADP45DXKP4DNEUMF"


@pytest.mark.parametrize(
    ("ingress", "egress", "expected"),
    [
        (True, False, {"ingress": "KUBE-NWPLCY-6I73UNIQX3LYGOJM"}),
        (False, True, {"egress": "KUBE-NWPLCY-6I73UNIQX3LYGOJM"}),
        (
            True,
            True,
            {"ingress": "KUBE-NWPLCY-6I73UNIQX3LYGOJM", "egress": "KUBE-NWPLCY-EG-6I73UNIQX3LYG"},
        ),
    ],
)
def test_a_direction_never_shares_a_chain_with_the_other(
    ingress: bool, egress: bool, expected: dict[str, str]
) -> None:
    # One direction keeps upstream's chain; both put egress in KUBE-NWPLCY-EG- + the same stem.
    assert names.direction_chains("foo", "bar", "IPv4", ingress, egress) == expected


def test_names_fit_the_kernel_limits() -> None:
    # iptables chain names: at most 28 characters; ipset names: at most 31.
    assert len(names.pod_fw_chain("x" * 63, "y" * 253)) <= 28
    assert len(names.policy_chain("x", "y", "IPv6")) <= 28
    assert len(names.policy_egress_chain("x" * 63, "y" * 253, "IPv6")) == 28
    assert len(names.egress_named_port_set("x", "y", 99, 99, "IPv6")) <= 31


def test_inet6_prefix_is_added_once() -> None:
    assert names.ipset_name("KUBE-SRC-A", "IPv6") == "inet6:KUBE-SRC-A"
    assert names.ipset_name("inet6:KUBE-SRC-A", "IPv6") == "inet6:KUBE-SRC-A"
    assert names.ipset_name("KUBE-SRC-A", "IPv4") == "KUBE-SRC-A"
    assert names.local_pods_set("IPv6") == "inet6:kube-router-local-pods"
    assert names.local_pods_set("IPv4") == "kube-router-local-pods"

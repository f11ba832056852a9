"""A node's pod CIDRs, with one precedence order for every controller.

``kube-router.io/pod-cidrs`` (a comma list), else ``spec.podCIDRs``, else ``spec.podCIDR``,
else the deprecated ``kube-router.io/pod-cidr``. A source whose entries are all bad is passed
over; each bad entry is a message (the caller logs it once with the node's name).

Upstream reads them in three orders (kube-router.md §2): the ipsets of all nodes put
``pod-cidr`` first, the local node's CNI and BGP paths ignore it, and the legacy path reads
only ``pod-cidr`` and ``spec.podCIDR``. The order here is the local node's, with the two
single-CIDR fields as fallbacks, so the deprecated annotation never overrides the list.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from kube_router.k8s.models import Node

POD_CIDRS_ANNOTATION: Final = "kube-router.io/pod-cidrs"
POD_CIDR_ANNOTATION: Final = "kube-router.io/pod-cidr"


def pod_cidr_sources(node: Node) -> list[tuple[str, list[str]]]:
    """(source name, its raw entries), in precedence order."""
    ann, spec = node.metadata.annotations, node.spec
    return [
        (POD_CIDRS_ANNOTATION, ann.get(POD_CIDRS_ANNOTATION, "").split(",")),
        ("spec.podCIDRs", list(spec.pod_cidrs)),
        ("spec.podCIDR", [spec.pod_cidr]),
        (POD_CIDR_ANNOTATION, [ann.get(POD_CIDR_ANNOTATION, "")]),
    ]


def node_pod_cidrs(node: Node | None) -> tuple[tuple[str, ...], list[str]]:
    """The node's pod CIDRs (normalised, host bits cleared, no duplicates) and the messages
    about bad entries of the source they came from or of sources before it."""
    if node is None:
        return (), []
    problems: list[str] = []
    for source, entries in pod_cidr_sources(node):
        good: dict[str, None] = {}
        for raw in (e.strip() for e in entries):
            if not raw:
                continue
            try:
                good[str(ipaddress.ip_network(raw, strict=False))] = None
            except ValueError:
                problems.append(f"node {node.metadata.name}: bad pod CIDR {raw!r} in {source}")
        if good:
            return tuple(good), problems
    return (), problems

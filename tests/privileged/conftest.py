"""Privileged tier: real kernel objects, each test in network namespaces it creates and removes."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kube_router.dataplane.exec import Executor


def _missing_tools() -> list[str]:
    tools = ["ip", "iptables-nft-restore", "iptables-legacy-restore", "ipset"]
    return [t for t in tools if shutil.which(t) is None]


BRIDGE_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"
# Tests whose pods sit on a bridge need br_netfilter for bridged traffic to meet iptables.
BRIDGED_TESTS = ("test_podnet", "test_netpol_")


def _bridge_netfilter_missing() -> bool:
    if not os.path.exists(BRIDGE_NF):
        subprocess.run(["modprobe", "br_netfilter"], check=False, capture_output=True)
    return not os.path.exists(BRIDGE_NF)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = ""
    if os.geteuid() != 0:
        reason = "needs root for network namespaces"
    elif _missing_tools():
        reason = f"missing tools: {', '.join(_missing_tools())} (run make setup)"
    no_br_nf = not reason and _bridge_netfilter_missing()
    for item in items:
        if "tests/privileged" not in str(item.fspath):
            continue
        item.add_marker(pytest.mark.privileged)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
        elif no_br_nf and Path(str(item.fspath)).name.startswith(BRIDGED_TESTS):
            item.add_marker(pytest.mark.skip(reason="kernel lacks br_netfilter (bridged pods)"))


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with lo up, removed afterwards (with its ipsets and rules)."""
    name = f"krt-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(
            ["ip", "netns", "exec", name, "ipset", "destroy"], check=False, capture_output=True
        )
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def ns_exec(netns: str) -> Executor:
    """An Executor whose commands run inside the test's namespace."""
    return Executor.in_netns(netns)

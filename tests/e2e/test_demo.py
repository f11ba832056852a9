"""`make demo` as a user runs it: nodes in network namespaces, real agents, then teardown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kube_router.lab import netns

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

PREFIX = "kre2e"
SUBNET = "10.249.0.0/24"
NODE_IPS = ("10.249.0.11", "10.249.0.12")


def _start(tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kube_router.lab.demo",
            "up",
            "--nodes",
            "2",
            "--prefix",
            PREFIX,
            "--dir",
            str(tmp_path),
            "--subnet",
            SUBNET,
            "--pod-supernet",
            "10.248.0.0/16",
            "--api-port",
            "16443",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_up(proc: subprocess.Popen[str], timeout: float = 90) -> str:
    assert proc.stdout is not None
    out = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        out.append(line)
        if "demo is up" in line or time.monotonic() > deadline:
            break
    text = "".join(out)
    assert "demo is up" in text, text
    return text


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


def _gone() -> bool:
    return not any(n.startswith(f"{PREFIX}-") for n in netns.list_netns()) and not (
        netns.link_exists(f"{PREFIX}br0")
    )


def test_demo_up_serves_and_tears_down(tmp_path: Path) -> None:
    from kubernetes import client, config

    proc = _start(tmp_path)
    try:
        _wait_up(proc)
        for ip in NODE_IPS:
            assert _get(f"http://{ip}:20244/healthz") == (200, "OK\n")
            status, text = _get(f"http://{ip}:8080/metrics")
            assert status == 200 and "kube_router_build_info" in text
        api = client.CoreV1Api(config.new_client_from_config(str(tmp_path / "kubeconfig")))
        nodes = {n.metadata.name: n for n in api.list_node().items}
        assert sorted(nodes) == ["node1", "node2"]
        assert nodes["node1"].spec.pod_cidr == "10.248.1.0/24"
        # The policy controller runs for real in each node's namespace.
        saved = subprocess.run(
            ["ip", "netns", "exec", f"{PREFIX}-node1", "iptables-nft-save", "-t", "filter"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert ":KUBE-ROUTER-FORWARD" in saved.stdout and "-j KUBE-ROUTER-FORWARD" in saved.stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _gone()
    log = (tmp_path / "node1.log").read_text()
    assert "NetworkRoutesController: not implemented yet" in log
    assert "iptables backend" in log and "Traceback" not in log


def test_demo_down_cleans_after_a_killed_demo(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    try:
        _wait_up(proc)
        proc.kill()
        proc.wait()
        assert not _gone()
    finally:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "kube_router.lab.demo",
                "down",
                "--prefix",
                PREFIX,
                "--dir",
                str(tmp_path),
            ],
            check=True,
            capture_output=True,
        )
    assert _gone()

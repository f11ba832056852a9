"""`make demo` as a user runs it: a 3-node cluster that routes pods over BGP, then teardown."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kube_router_lab import underlay

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

PREFIX = "kre2d"
UP_TIMEOUT_S = 100.0
STOP_TIMEOUT_S = 40.0
NODES = 3
PODS_PER_NODE = 2


class Demo:
    """``python -m kube_router_lab.demo up`` with its output read by a thread."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.dir = tmp_path
        argv = [sys.executable, "-m", "kube_router_lab.demo", "up", "--prefix", PREFIX]
        self.proc = subprocess.Popen(
            [*argv, "--dir", str(tmp_path), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, marker: str, timeout: float) -> str:
        """The output so far once a line has ``marker`` (or the output ended)."""
        deadline = time.monotonic() + timeout
        while not any(marker in line for line in self.seen):
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
        text = "".join(self.seen)
        assert marker in text, text
        return text

    def finish(self) -> int:
        """Kill it if still running; its exit status."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(STOP_TIMEOUT_S)


def demo_down(tmp_path: Path) -> str:
    argv = [sys.executable, "-m", "kube_router_lab.demo", "down", "--prefix", PREFIX]
    done = subprocess.run(
        [*argv, "--dir", str(tmp_path)], capture_output=True, text=True, check=True
    )
    return done.stdout


def section(text: str, title: str) -> str:
    """The indented lines under a heading of the demo's output."""
    match = re.search(rf"^{re.escape(title)}.*\n((?:  .*\n)+)", text, re.MULTILINE)
    assert match, (title, text)
    return match.group(1)


def test_demo_shows_a_working_cluster_and_tears_down_on_ctrl_c(tmp_path: Path) -> None:
    demo = Demo(tmp_path)
    try:
        text = demo.until("demo is up", UP_TIMEOUT_S)
        # The policy controller runs for real in each node's namespace.
        saved = subprocess.run(
            ["ip", "netns", "exec", f"{PREFIX}-node1", "iptables-nft-save", "-t", "filter"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "-j KUBE-ROUTER-FORWARD" in saved.stdout
        demo.proc.send_signal(signal.SIGINT)
        text = demo.until("demo: torn down", STOP_TIMEOUT_S)
        assert demo.proc.wait(STOP_TIMEOUT_S) == 0, text
    finally:
        demo.finish()
        demo_down(tmp_path)
    # Every node has an established session with each other node ...
    sessions = section(text, "BGP sessions")
    assert len(re.findall(r"^\s+10\.77\.0\.\d+ +64512 .*Establ", sessions, re.M)) == NODES * 2
    # ... learned every other node's pod CIDR ...
    routes = section(text, "Routes learned over BGP")
    for i in range(1, NODES + 1):
        assert routes.count(f"10.244.{i}.0/24 via 10.77.0.{10 + i} dev eth0") == NODES - 1
    # ... and every pod reached every other one.
    matrix = section(text, "Pod-to-pod traffic")
    pods = NODES * PODS_PER_NODE
    assert matrix.count(" ok") == pods * (pods - 1) and "FAIL" not in matrix, matrix
    assert "Service demo/web  ClusterIP 10.96.0.10:80/TCP" in text
    assert not underlay.owned_netns(PREFIX)
    for n in range(1, NODES + 1):
        log = (tmp_path / f"node{n}" / "agent.log").read_text()
        assert "stopped" in log and "Traceback" not in log


@pytest.mark.parametrize("killed", [True, False], ids=["after-a-crash", "while-running"])
def test_demo_down_removes_what_a_demo_left(tmp_path: Path, killed: bool) -> None:
    demo = Demo(tmp_path, "--nodes", "1", "--pods-per-node", "1")
    try:
        demo.until("demo is up", UP_TIMEOUT_S)
        if killed:  # the agents and pods outlive it in their namespaces
            demo.proc.kill()
            demo.proc.wait()
            assert underlay.owned_netns(PREFIX)
        out = demo_down(tmp_path)
        if not killed:  # `down` asked the running demo to stop, and it tore down itself
            assert "stopping the demo running as pid" in out
            assert demo.proc.wait(STOP_TIMEOUT_S) == 0
            assert "demo: torn down" in demo.until("demo: torn down", STOP_TIMEOUT_S)
    finally:
        demo.finish()
        demo_down(tmp_path)
    assert not underlay.owned_netns(PREFIX)

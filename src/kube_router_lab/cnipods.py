"""Pods wired by the real CNI plugins, as a container runtime does it, and their probe agents.

The plugins (Debian's ``containernetworking-plugins``: bridge, host-local, loopback, portmap in
``/usr/lib/cni``) run inside the node's network namespace with the CNI environment
(``CNI_COMMAND``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_CONTAINERID``, ``CNI_PATH``) and the
network configuration on stdin. For a ``.conflist`` every plugin gets the list's ``name`` and
``cniVersion`` and, from the second one on, the previous plugin's result as ``prevResult``; DEL
runs the list backwards. A host-local IPAM section gets ``dataDir`` set to the node's own
directory so that nodes never share allocations.

Each pod runs :mod:`kube_router_lab.podagent` in its namespace; :func:`ask` and :func:`reaches`
send it probe requests over its unix control socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kube_router_lab import podagent

CNI_PATH = "/usr/lib/cni"
CNI_TIMEOUT_S = 30.0
CONF_POLL_S = 0.1
AGENT_START_TIMEOUT_S = 30.0
AGENT_POLL_S = 0.05
PREV_RESULT_FROM = (0, 4, 0)  # DEL gets prevResult from this CNI version on
DEFAULT_PORTS = (80, 81)
BRIDGE = "kube-bridge"


class CniError(Exception):
    """A CNI plugin failed, or its configuration is unusable."""


class CniConfTimeout(CniError):
    """The node's CNI configuration did not appear (with pod CIDRs) in time."""


@dataclass
class CniPod:
    """A pod: its namespace, addresses from the plugin's result and its probe agent."""

    namespace: str
    name: str
    node: str
    netns: str
    container_id: str
    ips: tuple[str, ...]
    control: Path
    conf: dict[str, Any] = field(repr=False, default_factory=dict)  # what ADD used, for DEL
    result: dict[str, Any] = field(repr=False, default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(repr=False, default=None)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ip(self) -> str:
        """The first IPv4 address (the first address when there is none)."""
        return next((a for a in self.ips if ":" not in a), self.ips[0])

    @property
    def ip6(self) -> str | None:
        return next((a for a in self.ips if ":" in a), None)

    def address(self, family: str = "ipv4") -> str:
        found = self.ip6 if family == "ipv6" else next((a for a in self.ips if ":" not in a), None)
        if found is None:
            raise CniError(f"pod {self.key} has no {family} address")
        return found


def pod_object(
    pod: CniPod, host_ips: Sequence[str], labels: Mapping[str, str], ports: Sequence[int]
) -> dict[str, Any]:
    """The Pod as the kubelet reports it once running: node, host and pod IPs, Ready."""
    container_ports = [
        {"name": f"{proto.lower()}-{p}", "containerPort": p, "protocol": proto}
        for p in ports
        for proto in ("TCP", "UDP")
    ]
    container = {"name": "podagent", "image": "kube-router-lab/podagent", "ports": container_ports}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": dict(labels)},
        "spec": {"nodeName": pod.node, "containers": [container]},
        "status": {
            "phase": "Running",
            "hostIP": host_ips[0],
            "hostIPs": [{"ip": a} for a in host_ips],
            "podIP": pod.ips[0],
            "podIPs": [{"ip": a} for a in pod.ips],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def default_conflist(pod_cidrs: Sequence[str] = (), mtu: int | None = None) -> dict[str, Any]:
    """Upstream's example DaemonSet conflist; ``pod_cidrs`` as host-local ranges (what the agent
    inserts), none for the template an init container writes."""
    bridge: dict[str, Any] = {
        "name": "kubernetes",
        "type": "bridge",
        "bridge": BRIDGE,
        "isDefaultGateway": True,
        "hairpinMode": True,
        "ipam": {"type": "host-local"},
    }
    if pod_cidrs:
        bridge["ipam"]["ranges"] = [[{"subnet": cidr}] for cidr in pod_cidrs]
    if mtu is not None:
        bridge["mtu"] = mtu
    portmap = {"type": "portmap", "capabilities": {"snat": True, "portMappings": True}}
    return {"cniVersion": "0.3.0", "name": "mynet", "plugins": [bridge, portmap]}


def plugin_confs(conf: dict[str, Any]) -> list[dict[str, Any]]:
    """The plugin configurations of a ``.conf`` (itself) or a ``.conflist`` (each plugin with
    the list's name and cniVersion)."""
    if "plugins" not in conf:
        return [conf]
    plugins = conf["plugins"]
    if not isinstance(plugins, list) or not plugins:
        raise CniError("the conflist has no plugins")
    common = {"name": conf.get("name", ""), "cniVersion": conf.get("cniVersion", "0.3.0")}
    return [{**plugin, **common} for plugin in plugins]


def has_ranges(conf: dict[str, Any]) -> bool:
    """Whether the bridge plugin's host-local IPAM knows a pod subnet (the agent wrote it)."""
    for plugin in plugin_confs(conf):
        ipam = plugin.get("ipam") or {}
        if plugin.get("type") == "bridge" and (ipam.get("ranges") or ipam.get("subnet")):
            return True
    return False


async def wait_conf(path: Path, timeout: float) -> dict[str, Any]:
    """The configuration at ``path`` once it exists, parses and has pod ranges."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = "does not exist"
    while True:
        with contextlib.suppress(FileNotFoundError):
            try:
                conf = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                state = f"is not valid JSON yet ({err})"
            else:
                if isinstance(conf, dict) and has_ranges(conf):
                    return conf
                state = "has no pod CIDR in the bridge plugin's ipam ranges"
        if loop.time() >= deadline:
            raise CniConfTimeout(f"CNI configuration {path} {state} after {timeout:g} s")
        await asyncio.sleep(CONF_POLL_S)


def with_data_dir(plugin: dict[str, Any], ipam_dir: Path) -> dict[str, Any]:
    """``plugin`` with its host-local IPAM state kept in ``ipam_dir`` (unless it names one)."""
    ipam = plugin.get("ipam")
    if not isinstance(ipam, dict) or ipam.get("type") != "host-local" or "dataDir" in ipam:
        return plugin
    return {**plugin, "ipam": {**ipam, "dataDir": str(ipam_dir)}}


def _version(conf: dict[str, Any]) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(conf.get("cniVersion", "0.3.0")).split("."))
    except ValueError as err:
        raise CniError(f"bad cniVersion {conf.get('cniVersion')!r}") from err


async def invoke(
    node_netns: str, plugin: dict[str, Any], env: dict[str, str], cni_path: str
) -> dict[str, Any]:
    """Run one plugin in ``node_netns``; its JSON result (empty for DEL)."""
    kind = str(plugin.get("type", ""))
    binary = os.path.join(cni_path, kind)
    if not kind or not os.access(binary, os.X_OK):
        raise CniError(f"no CNI plugin {kind!r} in {cni_path}")
    proc = await asyncio.create_subprocess_exec(
        *("ip", "netns", "exec", node_netns, binary),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "CNI_PATH": cni_path, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(json.dumps(plugin).encode()), CNI_TIMEOUT_S
        )
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise CniError(f"CNI {kind} {env['CNI_COMMAND']} timed out in {node_netns}") from exc
    if proc.returncode != 0:
        raise CniError(f"CNI {kind} {env['CNI_COMMAND']} in {node_netns}: {_error(out, err)}")
    if not out.strip():
        return {}
    try:
        result = json.loads(out)
    except json.JSONDecodeError as exc:
        raise CniError(f"CNI {kind} printed no JSON result: {out[:200]!r}") from exc
    return result if isinstance(result, dict) else {}


def _error(out: bytes, err: bytes) -> str:
    with contextlib.suppress(json.JSONDecodeError, AttributeError):
        body = json.loads(out)
        return f"{body.get('msg', '')} {body.get('details', '')}".strip()
    return (out + err).decode(errors="replace").strip()


def cni_env(command: str, pod_netns: str, container_id: str, ifname: str) -> dict[str, str]:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": f"/run/netns/{pod_netns}",
        "CNI_IFNAME": ifname,
    }


async def cni_add(
    node_netns: str,
    conf: dict[str, Any],
    pod_netns: str,
    container_id: str,
    ipam_dir: Path,
    *,
    ifname: str = "eth0",
    cni_path: str = CNI_PATH,
) -> dict[str, Any]:
    """ADD through every plugin of ``conf``; the last result."""
    env = cni_env("ADD", pod_netns, container_id, ifname)
    result: dict[str, Any] = {}
    for i, raw in enumerate(plugin_confs(conf)):
        plugin = with_data_dir(raw, ipam_dir)
        if i:
            plugin = {**plugin, "prevResult": result}
        result = await invoke(node_netns, plugin, env, cni_path) or result
    return result


async def cni_del(
    node_netns: str,
    conf: dict[str, Any],
    pod_netns: str,
    container_id: str,
    ipam_dir: Path,
    *,
    result: dict[str, Any] | None = None,
    ifname: str = "eth0",
    cni_path: str = CNI_PATH,
) -> None:
    """DEL through the plugins of ``conf`` in reverse order (with ADD's result as
    ``prevResult`` from CNI 0.4.0 on)."""
    env = cni_env("DEL", pod_netns, container_id, ifname)
    for raw in reversed(plugin_confs(conf)):
        plugin = with_data_dir(raw, ipam_dir)
        if result and _version(plugin) >= PREV_RESULT_FROM:
            plugin = {**plugin, "prevResult": result}
        await invoke(node_netns, plugin, env, cni_path)


def result_ips(result: dict[str, Any]) -> tuple[str, ...]:
    """The addresses (without prefix length) a CNI result gives the pod, IPv4 first."""
    ips = [str(entry["address"]).split("/")[0] for entry in result.get("ips", [])]
    if not ips:
        raise CniError(f"the CNI result has no IP addresses: {json.dumps(result)[:300]}")
    return tuple(sorted(ips, key=lambda a: ":" in a))


def start_podagent(pod: CniPod, ports: Sequence[int] = DEFAULT_PORTS) -> None:
    """Start the probe agent in the pod's namespace (see :func:`wait_podagent`)."""
    argv = [
        *("ip", "netns", "exec", pod.netns, sys.executable, "-m", "kube_router_lab.podagent"),
        *("--name", pod.key, "--control", str(pod.control), "--ports"),
        ",".join(str(p) for p in ports),
        *(["--ipv6"] if pod.ip6 else []),
    ]
    pod.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_podagent(pod: CniPod, timeout: float = AGENT_START_TIMEOUT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if pod.proc is not None and pod.proc.poll() is not None:
            raise CniError(f"pod agent of {pod.key} exited with {pod.proc.returncode}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_unix_connection(str(pod.control))
            writer.close()
            return
        await asyncio.sleep(AGENT_POLL_S)
    raise CniError(f"pod agent of {pod.key} did not start in {timeout:g} s")


def stop_podagent(pod: CniPod) -> None:
    if pod.proc is not None and pod.proc.poll() is None:
        pod.proc.kill()
        pod.proc.wait()
    pod.control.unlink(missing_ok=True)


async def ask(
    src: CniPod, dst: str, proto: str, port: int, timeout: float = 1.0, sport: int = 0
) -> str | None:
    """Which pod answers ``src`` on ``dst`` (any address: a pod, a VIP); None: nobody."""
    return await podagent.ask_control(str(src.control), dst, proto, port, timeout, sport)


async def reaches(
    src: CniPod,
    dst: CniPod,
    proto: str = "tcp",
    port: int = DEFAULT_PORTS[0],
    family: str = "ipv4",
    timeout: float = 1.0,
) -> bool:
    """Whether ``src`` reaches ``dst`` at its ``family`` address and ``dst`` answered."""
    return await ask(src, dst.address(family), proto, port, timeout) == dst.key

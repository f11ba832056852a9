"""The service proxy's sysctls, as upstream sets them when the proxy starts.

Every path is relative to a root (``/proc/sys`` on a node, a temporary directory in unit tests).
A sysctl the kernel does not have (an old kernel, ip_vs not loaded yet) is logged as a warning
and skipped, as upstream does; any other failure raises :class:`SysctlError` naming the path.
``net/ipv4/vs/*`` and ``net/ipv4/conf/*`` belong to the network namespace of the process that
opens them.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

PROC_SYS: Final = Path("/proc/sys")

IPVS_CONNTRACK: Final = "net/ipv4/vs/conntrack"
IPVS_EXPIRE_NODEST_CONN: Final = "net/ipv4/vs/expire_nodest_conn"
IPVS_EXPIRE_QUIESCENT_TEMPLATE: Final = "net/ipv4/vs/expire_quiescent_template"
IPVS_CONN_REUSE_MODE: Final = "net/ipv4/vs/conn_reuse_mode"
IPVS_SLOPPY_TCP: Final = "net/ipv4/vs/sloppy_tcp"
ARP_IGNORE_ALL: Final = "net/ipv4/conf/all/arp_ignore"
ARP_ANNOUNCE_ALL: Final = "net/ipv4/conf/all/arp_announce"
RP_FILTER_TEMPLATE: Final = "net/ipv4/conf/{}/rp_filter"

ENABLED: Final = 1
DISABLED: Final = 0
# conn_reuse_mode=0: no special handling of reused ports (kubernetes/kubernetes#71114).
CONN_REUSE_NO_SPECIAL_HANDLING: Final = 0
# arp_ignore=1: answer ARP only for addresses on the asking interface (not the VIPs on
# kube-dummy-if); arp_announce=2: always use the best local address (kubernetes#70530).
ARP_IGNORE_TARGET_ON_INTERFACE: Final = 1
ARP_ANNOUNCE_BEST_LOCAL: Final = 2
RP_FILTER_STRICT: Final = 1
RP_FILTER_LOOSE: Final = 2

PROXY_SYSCTLS: Final[tuple[tuple[str, int], ...]] = (
    (IPVS_CONNTRACK, ENABLED),
    (IPVS_EXPIRE_NODEST_CONN, ENABLED),
    (IPVS_EXPIRE_QUIESCENT_TEMPLATE, ENABLED),
    (IPVS_CONN_REUSE_MODE, CONN_REUSE_NO_SPECIAL_HANDLING),
    (ARP_IGNORE_ALL, ARP_IGNORE_TARGET_ON_INTERFACE),
    (ARP_ANNOUNCE_ALL, ARP_ANNOUNCE_BEST_LOCAL),
)
# rp_filter is loosened (1 -> 2) on these and on the node's interface; 0 and 2 are left alone.
RP_FILTER_INTERFACES: Final = ("all", "kube-bridge", "kube-dummy-if")


class SysctlError(Exception):
    """A sysctl exists but could not be read or written."""


@dataclass
class SysctlReport:
    """What a setup pass did: the paths written and the ones the kernel lacks."""

    written: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _missing(err: OSError) -> bool:
    return err.errno in (errno.ENOENT, errno.ENOTDIR)


class Sysctls:
    """Reads and writes sysctls under ``root``."""

    def __init__(self, root: Path | str = PROC_SYS) -> None:
        self.root = Path(root)

    def read(self, path: str) -> str | None:
        """The value (stripped), or None when the kernel has no such sysctl."""
        try:
            return (self.root / path).read_text().strip()
        except OSError as err:
            if _missing(err):
                return None
            raise SysctlError(f"reading sysctl {path}: {err.strerror}") from err

    def write(self, path: str, value: int) -> bool:
        """Write ``value``; False (and a warning) when the kernel has no such sysctl."""
        target = self.root / path
        if not target.exists():
            log.warning("sysctl %s=%d: not found; does this kernel support it?", path, value)
            return False
        try:
            target.write_text(str(value))
        except OSError as err:
            if _missing(err):
                log.warning("sysctl %s=%d: not found; does this kernel support it?", path, value)
                return False
            raise SysctlError(f"setting sysctl {path}={value}: {err.strerror}") from err
        log.debug("sysctl %s=%d", path, value)
        return True


def rp_filter_interfaces(node_interface: str | None) -> list[str]:
    """The interfaces whose rp_filter the proxy loosens, without repeats."""
    names = [*RP_FILTER_INTERFACES, *([node_interface] if node_interface else [])]
    return list(dict.fromkeys(names))


def loosen_rp_filter(sysctls: Sysctls, interfaces: Iterable[str], report: SysctlReport) -> None:
    """rp_filter 1 (strict) becomes 2 (loose) for DSR; 0 and 2 are left alone (upstream)."""
    for name in interfaces:
        path = RP_FILTER_TEMPLATE.format(name)
        value = sysctls.read(path)
        if value is None:
            log.warning("sysctl %s: not found; is interface %s missing?", path, name)
            report.missing.append(path)
        elif value == str(RP_FILTER_STRICT) and sysctls.write(path, RP_FILTER_LOOSE):
            report.written.append(path)


def setup_proxy_sysctls(
    node_interface: str | None,
    ipv4: bool = True,
    sysctls: Sysctls | None = None,
) -> SysctlReport:
    """Set the sysctls the service proxy needs at start (upstream's order and values).

    rp_filter is only touched when the node does IPv4 (``ipv4``), as upstream.
    """
    sysctls = sysctls or Sysctls()
    report = SysctlReport()
    for path, value in PROXY_SYSCTLS:
        if sysctls.write(path, value):
            report.written.append(path)
        else:
            report.missing.append(path)
    if ipv4:
        loosen_rp_filter(sysctls, rp_filter_interfaces(node_interface), report)
    return report


class SloppyTcp:
    """``net/ipv4/vs/sloppy_tcp``, written only when the wanted value changes (upstream caches
    the value it read at start and compares with that)."""

    def __init__(self, sysctls: Sysctls | None = None) -> None:
        self.sysctls = sysctls or Sysctls()
        current = self.sysctls.read(IPVS_SLOPPY_TCP)
        self.cached: bool | None = None if current is None else current == str(ENABLED)

    def set(self, enabled: bool) -> bool:
        """Make it ``enabled``; True when a write happened."""
        if self.cached == enabled:
            return False
        if not self.sysctls.write(IPVS_SLOPPY_TCP, ENABLED if enabled else DISABLED):
            return False
        self.cached = enabled
        log.info("IPVS sloppy TCP set to %d", int(enabled))
        return True

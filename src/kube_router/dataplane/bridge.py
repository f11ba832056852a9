"""The bridge port: find, create, bring up and size a Linux bridge (``kube-bridge``).

:class:`BridgeLinks` is what the routing controller asks of the kernel; :class:`NetlinkBridges`
does it through pyroute2 (a handful of messages at start, so pyroute2's cost does not matter),
inside a named network namespace when given (tests); :class:`FakeBridges` keeps links in memory
with the kernel's refusals that matter here: an MTU outside ``[min_mtu, max_mtu]`` is EINVAL, a
name in use is EEXIST, a missing link is ENODEV.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol, TypeVar

from kube_router.dataplane.netlink import in_netns

BRIDGE_KIND: Final = "bridge"
ETH_MIN_MTU: Final = 68
BRIDGE_MAX_MTU: Final = 65535  # a bridge's max_mtu (IP_MAX_MTU is 65535 too)
DEFAULT_MTU: Final = 1500

T = TypeVar("T")

__all__ = [
    "BridgeError",
    "BridgeLinks",
    "FakeBridges",
    "LinkState",
    "NetlinkBridges",
]


class BridgeError(OSError):
    """The kernel refused a link operation; ``errno`` says why."""


@dataclass(frozen=True)
class LinkState:
    """A link as the kernel reports it."""

    name: str
    index: int
    kind: str
    mtu: int
    up: bool


class BridgeLinks(Protocol):
    """The port."""

    async def get(self, name: str) -> LinkState | None:
        """The link, or None when there is none of that name."""
        ...

    async def add_bridge(self, name: str) -> None:
        """Create a bridge; BridgeError(EEXIST) when the name is taken."""
        ...

    async def set_up(self, name: str) -> None: ...

    async def set_mtu(self, name: str, mtu: int) -> None:
        """BridgeError (EINVAL, ...) when the kernel refuses the MTU."""
        ...


def _error(err: int, what: str) -> BridgeError:
    return BridgeError(err, f"{what}: {os.strerror(err)}")


class FakeBridges:
    """Links in memory; ``max_mtu`` lowers the limit (a bridge whose ports cannot go higher)."""

    def __init__(self, max_mtu: int = BRIDGE_MAX_MTU) -> None:
        self.links: dict[str, LinkState] = {}
        self.max_mtu = max_mtu
        self._next_index = 2

    def _link(self, name: str) -> LinkState:
        link = self.links.get(name)
        if link is None:
            raise _error(errno.ENODEV, f"link {name}")
        return link

    async def get(self, name: str) -> LinkState | None:
        return self.links.get(name)

    async def add_bridge(self, name: str) -> None:
        if name in self.links:
            raise _error(errno.EEXIST, f"adding bridge {name}")
        self.links[name] = LinkState(name, self._next_index, BRIDGE_KIND, DEFAULT_MTU, False)
        self._next_index += 1

    async def set_up(self, name: str) -> None:
        self.links[name] = replace(self._link(name), up=True)

    async def set_mtu(self, name: str, mtu: int) -> None:
        link = self._link(name)
        if not ETH_MIN_MTU <= mtu <= self.max_mtu:
            raise _error(errno.EINVAL, f"setting MTU {mtu} on {name}")
        self.links[name] = replace(link, mtu=mtu)


class NetlinkBridges:
    """The kernel's links through pyroute2, in network namespace ``netns`` when given."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    async def _call(self, what: str, work: Callable[[Any], T]) -> T:
        def run() -> T:
            from pyroute2 import IPRoute  # noqa: PLC0415  (netlink only on a real node)
            from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

            with IPRoute() as ipr:
                try:
                    return work(ipr)
                except NetlinkError as err:
                    raise _error(err.code, what) from err

        return await asyncio.to_thread(in_netns, self.netns, run)

    async def get(self, name: str) -> LinkState | None:
        def work(ipr: Any) -> LinkState | None:
            found = ipr.link_lookup(ifname=name)
            if not found:
                return None
            link = ipr.get_links(found[0])[0]
            info = link.get("IFLA_LINKINFO")
            kind = info.get("IFLA_INFO_KIND") if info is not None else None
            return LinkState(
                name=str(link.get("IFLA_IFNAME")),
                index=int(link["index"]),
                kind=str(kind or ""),
                mtu=int(link.get("IFLA_MTU")),
                up=bool(link["flags"] & 1),  # IFF_UP
            )

        return await self._call(f"reading link {name}", work)

    async def add_bridge(self, name: str) -> None:
        await self._call(
            f"adding bridge {name}", lambda ipr: ipr.link("add", ifname=name, kind=BRIDGE_KIND)
        )

    async def set_up(self, name: str) -> None:
        await self._call(f"setting {name} up", lambda ipr: ipr.link("set", ifname=name, state="up"))

    async def set_mtu(self, name: str, mtu: int) -> None:
        await self._call(
            f"setting MTU {mtu} on {name}", lambda ipr: ipr.link("set", ifname=name, mtu=mtu)
        )

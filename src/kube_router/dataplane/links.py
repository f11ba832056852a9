"""The node's link, read from the kernel over netlink (the one I/O ``kube_router.node`` needs)."""

from __future__ import annotations

from kube_router.node import IPAddress, LinkInfo, NodeIdentityError


def link_for_ip(ip: IPAddress) -> LinkInfo:
    """The local link holding ``ip`` (via netlink), with its MTU."""
    from pyroute2 import IPRoute  # noqa: PLC0415  (netlink is only needed on a real node)

    with IPRoute() as ipr:
        for addr in ipr.get_addr():
            if addr.get("IFA_ADDRESS") == str(ip):
                link = ipr.get_links(addr["index"])[0]
                return LinkInfo(
                    str(link.get("IFLA_IFNAME")), int(addr["index"]), int(link.get("IFLA_MTU"))
                )
    raise NodeIdentityError(f"no local interface holds the node IP {ip}")

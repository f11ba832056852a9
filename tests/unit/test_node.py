"""Node identity: primary IP, best IP per family, link and MTU."""

from __future__ import annotations

import ipaddress

import pytest

from kube_router import node
from kube_router.dataplane.links import link_for_ip
from kube_router.k8s import models


def _node(*addrs: tuple[str, str]) -> models.Node:
    return models.Node(
        metadata=models.ObjectMeta(name="n1"),
        status=models.NodeStatus(
            addresses=[models.NodeAddress(type=t, address=a) for t, a in addrs]
        ),
    )


@pytest.mark.parametrize(
    ("addrs", "primary", "v4", "v6"),
    [
        (
            [("Hostname", "n1"), ("InternalIP", "10.0.0.1"), ("ExternalIP", "1.2.3.4")],
            "10.0.0.1",
            "10.0.0.1",
            None,
        ),
        ([("ExternalIP", "1.2.3.4")], "1.2.3.4", "1.2.3.4", None),
        ([("InternalIP", "fd00::1"), ("InternalIP", "10.0.0.1")], "fd00::1", "10.0.0.1", "fd00::1"),
        (
            [("InternalIP", "10.0.0.1"), ("ExternalIP", "2001:db8::1")],
            "10.0.0.1",
            "10.0.0.1",
            "2001:db8::1",
        ),
        ([("InternalIP", "bogus"), ("InternalIP", "10.0.0.2")], "10.0.0.2", "10.0.0.2", None),
    ],
)
def test_primary_and_best(
    addrs: list[tuple[str, str]], primary: str, v4: str | None, v6: str | None
) -> None:
    n = _node(*addrs)
    assert node.primary_ip(n) == ipaddress.ip_address(primary)
    assert node.best_ip(n, 4) == (ipaddress.ip_address(v4) if v4 else None)
    assert node.best_ip(n, 6) == (ipaddress.ip_address(v6) if v6 else None)


def test_no_address_is_an_error() -> None:
    with pytest.raises(node.NodeIdentityError, match="no InternalIP"):
        node.primary_ip(_node(("Hostname", "n1")))
    assert node.best_ip(_node(), 4) is None


@pytest.mark.parametrize(
    ("v4", "v6", "error"),
    [(True, False, None), (True, True, "no IPv6"), (False, True, "no IPv6")],
)
def test_enabled_families_need_addresses(v4: bool, v6: bool, error: str | None) -> None:
    n = _node(("InternalIP", "10.0.0.1"))
    if error:
        with pytest.raises(node.NodeIdentityError, match=error):
            node.identify(n, v4, v6)
    else:
        ident = node.identify(n, v4, v6)
        assert ident.ipv4 == ipaddress.ip_address("10.0.0.1") and ident.ipv6 is None


def test_link_for_loopback() -> None:
    link = link_for_ip(ipaddress.ip_address("127.0.0.1"))
    assert link.name == "lo" and link.mtu >= 1500


def test_link_for_unknown_ip() -> None:
    with pytest.raises(node.NodeIdentityError, match="no local interface"):
        link_for_ip(ipaddress.ip_address("192.0.2.77"))


@pytest.mark.parametrize(
    ("override", "env", "expected"),
    [("o", {"NODE_NAME": "e"}, "o"), ("", {"NODE_NAME": "e"}, "e")],
)
def test_node_name_precedence(override: str, env: dict[str, str], expected: str) -> None:
    assert node.node_name(override, env) == expected


def test_node_name_falls_back_to_hostname() -> None:
    import socket

    assert node.node_name("", {}) == socket.gethostname()

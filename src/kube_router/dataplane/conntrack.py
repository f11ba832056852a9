"""Flushing a UDP service's conntrack entries when one of its real servers goes away.

Upstream (``flushConntrackUDP`` in ``pkg/controllers/proxy/network_service_graceful.go``) runs
``conntrack -D --orig-dst <VIP> -p udp --dport <port>`` after every real-server removal from a
UDP service, so that clients stop sending to the removed server through a stale entry. The
tool takes the family from the address, so the same command serves IPv6. It exits non-zero
when nothing matched ("0 flow entries have been deleted"), which is success here.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from kube_router.dataplane.exec import CommandError, Executor
from kube_router.dataplane.ipvs import canonical_ip

log = logging.getLogger(__name__)

CONNTRACK: Final = "conntrack"
# Preceded by white space, as upstream's pattern: "10 flow entries" is not "0 flow entries".
NOTHING_DELETED: Final = re.compile(r"\s0 flow entries have been deleted\.")
PORT_MAX: Final = 65535


class ConntrackError(Exception):
    """conntrack failed for a reason other than finding nothing to delete."""


def flush_udp_argv(vip: str, port: int) -> list[str]:
    """The command deleting every UDP entry whose original destination is ``vip:port``."""
    if not 0 < port <= PORT_MAX:
        raise ValueError(f"not a port: {port}")
    return [CONNTRACK, "-D", "--orig-dst", canonical_ip(vip), "-p", "udp", "--dport", str(port)]


async def flush_udp(executor: Executor, vip: str, port: int) -> None:
    """Delete the UDP conntrack entries of ``vip:port``; none to delete is fine."""
    argv = flush_udp_argv(vip, port)
    try:
        result = await executor.run(argv, check=False)
    except CommandError as err:  # could not start, or timed out
        raise ConntrackError(f"flushing UDP conntrack entries of {vip}:{port}: {err}") from err
    if result.returncode != 0:
        if NOTHING_DELETED.search(result.stdout + result.stderr):
            log.debug("no UDP conntrack entries of %s:%d to delete", vip, port)
            return
        failed = CommandError(argv, result.returncode, result.stdout, result.stderr)
        raise ConntrackError(
            f"flushing UDP conntrack entries of {vip}:{port}: {failed}"
        ) from failed
    log.debug("deleted the UDP conntrack entries of %s:%d", vip, port)

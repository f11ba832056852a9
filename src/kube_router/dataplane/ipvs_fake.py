"""A strict in-memory IPVS with the kernel's rules (net/netfilter/ipvs/ip_vs_ctl.c).

Each operation succeeds or fails as the kernel's generic netlink handler would, with its errno;
the others in the transaction still apply, and the failures are raised together at the end, as
the real adapter does. ``tests/vm`` checks this fake against the kernel on the same transactions.
"""

from __future__ import annotations

import errno

from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs import (
    Dest,
    DestState,
    IPVSOpError,
    Op,
    Service,
    ServiceKey,
    ServiceState,
    Timeouts,
)

NO_SCHEDULER = "none"
DEFAULT_TIMEOUTS = Timeouts(tcp=900, tcp_fin=120, udp=300)  # the kernel's defaults


class FakeIPVS:
    """IPVS tables in memory; every service and destination rule enforced."""

    def __init__(self) -> None:
        self.services: dict[ServiceKey, ServiceState] = {}
        self.config = DEFAULT_TIMEOUTS
        self.applied = 0  # transactions applied (for tests that count kernel writes)
        self.ops_applied = 0

    async def apply(self, tx: ipvs.Transaction) -> None:
        ipvs.validate(tx.ops)
        self.applied += 1
        failures: list[tuple[Op, int]] = []
        for op in tx.ops:
            code = self._one(op)
            if code:
                failures.append((op, code))
            else:
                self.ops_applied += 1
        if failures:
            raise IPVSOpError(failures)

    async def dump(self) -> dict[ServiceKey, ServiceState]:
        """A copy the caller may change: new states and tables, sharing the frozen values
        (a deep copy of 100,000 real servers took seconds)."""
        return {
            key: ServiceState(state.service, state.stats, dict(state.dests))
            for key, state in self.services.items()
        }

    async def service_stats(self) -> dict[ServiceKey, tuple[Service, ipvs.Stats]]:
        return {k: (s.service, s.stats) for k, s in self.services.items()}

    async def timeouts(self) -> Timeouts:
        return self.config

    async def set_timeouts(self, timeouts: Timeouts) -> None:
        """A zero leaves that timeout as it is, as in the kernel."""
        self.config = Timeouts(
            timeouts.tcp or self.config.tcp,
            timeouts.tcp_fin or self.config.tcp_fin,
            timeouts.udp or self.config.udp,
        )

    # --- the kernel's rules -------------------------------------------------------------------

    def _one(self, op: Op) -> int:
        state = self.services.get(op.service.key)
        if op.kind == "add-service":
            return errno.EEXIST if state is not None else self._add_service(op.service)
        if state is None:
            return errno.ESRCH
        if op.kind == "edit-service":
            return self._edit_service(state, op.service)
        if op.kind == "del-service":
            del self.services[op.service.key]
            return 0
        assert op.dest is not None
        return self._dest_op(state, op.kind, op.dest)

    @staticmethod
    def _service_error(service: Service) -> int:
        if service.scheduler != NO_SCHEDULER and service.scheduler not in ipvs.SCHEDULERS:
            return errno.ENOENT
        if service.pe_name and service.pe_name != "sip":
            return errno.ENOENT
        if service.key.family == "ipv6" and not 1 <= service.prefix <= ipvs.HOST_PREFIX["ipv6"]:
            return errno.EINVAL
        return 0

    def _add_service(self, service: Service) -> int:
        code = self._service_error(service)
        if not code:
            self.services[service.key] = ServiceState(_stored(service))
        return code

    def _edit_service(self, state: ServiceState, service: Service) -> int:
        code = self._service_error(service)
        if not code:
            state.service = _stored(service)
        return code

    def _dest_op(self, state: ServiceState, kind: str, dest: Dest) -> int:
        svc = state.service.key
        if kind != "del-dest" and dest.family != svc.family and dest.forward != ipvs.FWD_TUNNEL:
            return errno.EINVAL
        found = state.dests.get(dest.key)
        if kind == "del-dest":
            if found is None:
                return errno.ENOENT
            del state.dests[dest.key]
            return 0
        code = _dest_error(dest)
        if code:
            return code
        if kind == "add-dest" and found is not None:
            return errno.EEXIST
        if kind == "edit-dest" and found is None:
            return errno.ENOENT
        state.dests[dest.key] = DestState(dest)
        return 0


def _stored(service: Service) -> Service:
    """The service as the kernel reports it back (user flags, the prefix spelled out)."""
    return Service(
        service.key,
        service.scheduler,
        service.flags & ipvs.USER_FLAGS,
        service.timeout,
        service.prefix,
        service.pe_name,
    )


def _dest_error(dest: Dest) -> int:
    if not 0 <= dest.weight <= ipvs.MAX_WEIGHT:
        return errno.ERANGE
    if dest.l_threshold > dest.u_threshold:
        return errno.ERANGE
    tunnel = dest.forward == ipvs.FWD_TUNNEL
    if tunnel and dest.tun_type == ipvs.TUN_GUE and dest.tun_port == 0:
        return errno.EINVAL
    return 0

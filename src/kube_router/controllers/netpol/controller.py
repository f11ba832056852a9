"""The network policy controller (NPC): NetworkPolicy v1 enforced with ipsets and iptables.

Handlers only poke the sync runner. Each sync compiles the desired state from the caches, then
applies the difference: against what was applied last (incremental), or against what the kernel
holds (full: every ``--iptables-sync-period``, the first sync, and after any failure, which also
repairs damage done from outside). Every apply is one ``ipset restore`` for new and changed sets,
one ``iptables-restore --noflush`` per family, and one ``ipset restore`` to destroy what is gone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import Histogram

from kube_router import health
from kube_router.controllers.base import Controller, RunContext
from kube_router.controllers.netpol import plan as planner
from kube_router.controllers.netpol.desired import (
    Changes,
    Desired,
    FamilyState,
    IncrementalCompiler,
)
from kube_router.controllers.netpol.metrics import NetpolMetrics
from kube_router.controllers.netpol.names import IPV4, IPV6, Family
from kube_router.controllers.netpol.pools import KernelSet, Pools
from kube_router.controllers.netpol.ports import Dataplane
from kube_router.controllers.shared.pod_cidrs import node_pod_cidrs
from kube_router.controllers.sync import ChangeTracker, SyncRunner
from kube_router.dataplane import iptables_parse
from kube_router.dataplane.exec import Executor
from kube_router.k8s.informer import FuncHandler
from kube_router.k8s.models import Namespace, NetworkPolicy, Node, Pod, object_key

log = logging.getLogger(__name__)

MIN_SYNC_INTERVAL_S = 0.05


@contextlib.contextmanager
def _timed(hist: Histogram | None) -> Iterator[None]:
    start = time.perf_counter()
    yield
    if hist is not None:
        hist.observe(time.perf_counter() - start)


class NetworkPolicyController(Controller):
    name = health.POLICY

    def __init__(self, ctx: RunContext, dataplane: Dataplane | None = None) -> None:
        super().__init__(ctx)
        self.dataplane = dataplane
        self.runner = SyncRunner(
            "netpol",
            self.sync,
            period=ctx.config.iptables_sync_period,
            min_interval=MIN_SYNC_INTERVAL_S,
            on_success=self.beat,
        )
        self.last: dict[Family, FamilyState] = {}  # as applied: policy sets through pools
        self.pools: dict[Family, Pools] = {}
        self.compiler = IncrementalCompiler()
        self._pods: ChangeTracker[str, Pod] = ChangeTracker()
        self._namespaces: ChangeTracker[str, Namespace] = ChangeTracker()
        self._policies: ChangeTracker[str, NetworkPolicy] = ChangeTracker()
        self._reported: dict[str, str] = {}
        self._default_deny_idle = False
        self._metrics: NetpolMetrics | None = None

    @property
    def sync_period(self) -> float:
        return float(self.ctx.config.iptables_sync_period)

    def families(self) -> list[Family]:
        cfg = self.ctx.config
        return [f for f, on in ((IPV4, cfg.enable_ipv4), (IPV6, cfg.enable_ipv6)) if on]

    async def start(self) -> None:
        """Ports, metrics and handlers (after the caches synced); nothing runs yet."""
        if self.dataplane is None:
            self.dataplane = await Dataplane.real(Executor(), self.families())
        if self.ctx.metrics is not None:
            self._metrics = NetpolMetrics(self.ctx.metrics.registry, self.families())
        if self.ctx.config.use_nftables_for_netpol:
            log.warning("--use-nftables-for-netpol is not implemented yet; using iptables")
        inf = self.ctx.informers
        inf.pods.add_handler(self._tracking(self._pods))
        inf.namespaces.add_handler(self._tracking(self._namespaces))
        inf.networkpolicies.add_handler(self._tracking(self._policies))
        inf.nodes.add_handler(
            FuncHandler[Node](
                add=self._node_changed,
                update=lambda _o, n: self._node_changed(n),
                delete=self._node_changed,
            )
        )

    async def run(self) -> None:
        await self.start()
        await self.runner.run()

    def _tracking(self, tracker: ChangeTracker[str, Any]) -> FuncHandler[Any]:
        """A handler that records the change and pokes the runner (no other work)."""

        def record(old: Any, new: Any) -> None:
            tracker.record(object_key((new or old).metadata), old, new)
            self.runner.poke()

        return FuncHandler[Any](
            add=lambda o: record(None, o), update=record, delete=lambda o: record(o, None)
        )

    def _node_changed(self, node: Node) -> None:
        if node.metadata.name == self.ctx.node.name:
            self.runner.request_full()  # node IPs or pod CIDRs: recompile everything

    def _drain(self, full: bool) -> Changes | None:
        changes = Changes(self._pods.drain(), self._namespaces.drain(), set(self._policies.drain()))
        return None if full else changes

    def desired(self, changes: Changes | None = None) -> Desired:
        inf, node = self.ctx.informers, self.ctx.node
        node_ips = {str(ip) for ip in (node.primary_ip, node.ipv4, node.ipv6) if ip is not None}
        me = inf.nodes.store.get(node.name)
        if me is not None:
            node_ips |= {
                a.address for a in me.status.addresses if a.type in ("InternalIP", "ExternalIP")
            }
        cidrs = list(node_pod_cidrs(me)[0])  # the routing controller reports bad entries
        self._check_default_deny(cidrs)
        return self.compiler.build(
            self.ctx.config,
            inf.pods.store.list(),
            inf.namespaces.store.list(),
            inf.networkpolicies.store.list(),
            node_ips,
            cidrs,
            changes,
        )

    def _check_default_deny(self, cidrs: Sequence[str]) -> None:
        """Say loudly (once) that --netpol-default-deny cannot act without the node's pod CIDRs."""
        idle = self.ctx.config.netpol_default_deny and not cidrs
        if idle and not self._default_deny_idle:
            log.error(
                "--netpol-default-deny is set but node %s has no pod CIDR (spec.podCIDRs or "
                "the kube-router.io/pod-cidrs annotation): default-deny is NOT in force "
                "until one is set",
                self.ctx.node.name,
            )
        elif self._default_deny_idle and not idle:
            log.info(
                "node %s has pod CIDRs %s: default-deny is in force",
                self.ctx.node.name,
                ", ".join(cidrs),
            )
        self._default_deny_idle = idle

    async def sync(self, full: bool) -> None:
        start = time.perf_counter()
        m = self._metrics
        with _timed(m.compile_time if m else None):
            desired = self.desired(self._drain(full))
        self._report_errors(desired.errors)
        for family, state in desired.families.items():
            last = None if full else self.last.get(family)
            self.last.pop(family, None)  # unknown until this apply succeeds
            self.last[family] = await self._apply_family(family, state, last)
        elapsed = time.perf_counter() - start
        log.debug("netpol %s sync took %.3fs", "full" if full else "partial", elapsed)
        if m is not None:
            m.sync_time.observe(elapsed)
            m.chains.set(desired.policy_chains)
            m.ipsets.set(sum(len(s.sets) for s in desired.families.values()))
            m.errors.set(len(desired.errors))

    async def _apply_family(
        self, family: Family, state: FamilyState, last: FamilyState | None
    ) -> FamilyState:
        """Apply one family's compiled state; returns it as applied (policy sets in pools)."""
        assert self.dataplane is not None
        m = self._metrics
        pools = self.pools.setdefault(family, Pools(family))
        if last is None:
            save_hist = m.save.get(family) if m else None
            kernel = await read_kernel(self.dataplane, family, save_hist)
            pools.seed({n: KernelSet(s.spec.type, s.entries) for n, s in kernel.sets.items()})
            applied = FamilyState(state.chains, pools.realize(state.sets))
            plan = planner.plan_full(applied, kernel)
        else:
            applied = FamilyState(state.chains, pools.realize(state.sets))
            plan = planner.plan_incremental(applied, last)
        await self._run_plan(family, plan)
        if pools.garbage:
            self.runner.poke()  # the next sync destroys a few more emptied lists
        return applied

    async def _run_plan(self, family: Family, plan: planner.Plan) -> None:
        assert self.dataplane is not None
        m = self._metrics
        if plan.rules_before is not None:
            await self.dataplane.iptables[family].restore(plan.rules_before)
        ipset_hist = m.ipset_restore.get(family) if m else None
        if plan.sets_before.lines:
            with _timed(ipset_hist):
                await self.dataplane.ipsets.restore(plan.sets_before)
        if plan.rule_lines:
            with _timed(m.restore.get(family) if m else None):
                await self.dataplane.iptables[family].restore(plan.rules)
        if plan.sets_after.lines:
            with _timed(ipset_hist):
                await self.dataplane.ipsets.restore(plan.sets_after)

    def _report_errors(self, errors: dict[str, str]) -> None:
        """Log each policy that cannot be compiled once (until its error changes)."""
        for key, reason in errors.items():
            if self._reported.get(key) != reason:
                log.error(
                    "network policy %s cannot be enforced, its pods fail closed: %s", key, reason
                )
        self._reported = dict(errors)


async def read_kernel(
    dataplane: Dataplane, family: Family, save_hist: Histogram | None = None
) -> planner.KernelView:
    """Our view of one family in the kernel: the filter table and our policy sets."""
    with _timed(save_hist):
        saved = await dataplane.iptables[family].save("filter")
    table = iptables_parse.parse_save(saved).get("filter", iptables_parse.Table("filter", {}))
    spelling = planner.family_names(family)[1]
    sets = await dataplane.ipsets.save(planner.SET_PREFIXES)
    ours = {n: s for n, s in sets.items() if s.spec.family == spelling}
    return planner.KernelView(table, ours, planner.family_names(family)[0])


async def cleanup(dataplane: Dataplane) -> None:
    """Remove our jumps, chains and sets (``--cleanup-config``); nothing else is touched."""
    for family, tables in dataplane.iptables.items():
        kernel = await read_kernel(dataplane, family)
        plan = planner.plan_cleanup(kernel.table, kernel.sets)
        if plan.rule_lines:
            await tables.restore(plan.rules)
        if plan.sets_after.lines:
            await dataplane.ipsets.restore(plan.sets_after)

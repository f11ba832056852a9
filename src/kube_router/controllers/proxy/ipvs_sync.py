"""Keep IPVS equal to what the Services ask: per-Service plans, partial and full syncs.

A Service or EndpointSlice change replans that one Service (:func:`desired.plan_service`) and
marks the virtual services it claimed before or claims now. A partial sync plans only those keys
against what was applied last, so an endpoint change costs that service's real servers and
nothing else. A full sync dumps the kernel and plans everything (it also repairs damage from
outside). A virtual service two Services claim belongs to the first by name; when that one lets
go the next takes over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kube_router.controllers.proxy.compile import (
    NodeAddresses,
    ServicePlan,
    Settings,
    VirtualService,
    plan_service,
)
from kube_router.controllers.proxy.endpoints import EndpointInfo
from kube_router.controllers.proxy.plan import Network, Plan, plan_ipvs
from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs import IPVS, Dest, Service, ServiceKey
from kube_router.k8s.models import Service as K8sService

Current = dict[ServiceKey, tuple[Service, dict[tuple[str, int], Dest]]]


@dataclass
class SyncResult:
    plan: Plan
    full: bool
    errors: dict[str, list[str]] = field(default_factory=dict)  # Service -> what is wrong with it


class IPVSSync:
    def __init__(
        self,
        port: IPVS,
        settings: Settings,
        node: NodeAddresses,
        graceful: bool = False,
        excluded_cidrs: Sequence[Network] = (),
    ) -> None:
        self.port = port
        self.settings = settings
        self.node = node
        self.graceful = graceful
        self.excluded = list(excluded_cidrs)
        self.plans: dict[str, ServicePlan] = {}
        self.claims: dict[ServiceKey, set[str]] = {}
        self.applied: Current = {}
        self.dirty: set[ServiceKey] = set()
        self._shared: set[ServiceKey] = set()  # keys two or more Services claim
        self._faulty: set[str] = set()  # Services whose plan has errors

    def update(
        self, name: str, svc: K8sService | None, endpoints: Mapping[str, Sequence[EndpointInfo]]
    ) -> None:
        """Replan one Service (None: it is gone); its old and new keys become dirty."""
        old = self.plans.pop(name, None)
        self._faulty.discard(name)
        for key in old.virtual if old else ():
            self._release(key, name)
        if svc is None:
            return
        plan = plan_service(svc, endpoints, self.node, self.settings)
        self.plans[name] = plan
        if plan.errors:
            self._faulty.add(name)
        for key in plan.virtual:
            owners = self.claims.setdefault(key, set())
            owners.add(name)
            if len(owners) > 1:
                self._shared.add(key)
            self.dirty.add(key)

    def _release(self, key: ServiceKey, name: str) -> None:
        owners = self.claims.get(key)
        if owners is not None:
            owners.discard(name)
            if not owners:
                del self.claims[key]
            if len(owners) <= 1:
                self._shared.discard(key)
        self.dirty.add(key)

    def desired(self, keys: Iterable[ServiceKey] | None = None) -> dict[ServiceKey, VirtualService]:
        """The winning virtual service of every key (of ``keys``) that someone claims."""
        wanted = (
            self.claims if keys is None else {k: self.claims[k] for k in keys if k in self.claims}
        )
        return {key: self.plans[min(owners)].virtual[key] for key, owners in wanted.items()}

    def errors(self) -> dict[str, list[str]]:
        out = {name: list(self.plans[name].errors) for name in sorted(self._faulty)}
        for key in sorted(self._shared, key=str):
            owners = self.claims[key]
            first = min(owners)
            for name in sorted(owners - {first}):
                out.setdefault(name, []).append(f"{key} is already used by {first}")
        return out

    async def sync(self, full: bool) -> SyncResult:
        """Apply what changed (or everything, against a kernel dump); raises on any refusal."""
        if full:
            current: Current = ipvs.plain(await self.port.dump())
            desired = self.desired()
            plan = plan_ipvs(desired, current, None, self.graceful, self.excluded)
        else:
            keys = set(self.dirty)
            desired = self.desired(keys)
            current = {k: self.applied[k] for k in keys if k in self.applied}
            plan = plan_ipvs(desired, current, keys, self.graceful, self.excluded)
        self.dirty.clear()
        try:
            await self.port.apply(plan.tx)
        except ipvs.IPVSError:
            self.applied = {}  # unknown until a full sync has read the kernel
            raise
        if full:
            self.applied = {}
        self._record(desired, plan)
        return SyncResult(plan, full, self.errors())

    def forget(self, removed: Iterable[tuple[ServiceKey, Dest]]) -> None:
        """Real servers deleted outside a sync (the graceful-termination queue)."""
        for key, dest in removed:
            entry = self.applied.get(key)
            if entry is not None:
                entry[1].pop(dest.key, None)

    def wanted(self, key: ServiceKey, dest: Dest) -> bool:
        """Whether the winning plan of ``key`` still has ``dest`` (a drained server came back)."""
        owners = self.claims.get(key)
        if not owners:
            return False
        return dest.key in self.plans[min(owners)].virtual[key].dests

    def _record(self, desired: Mapping[ServiceKey, VirtualService], plan: Plan) -> None:
        """What the kernel holds now, for the next partial sync (drained servers stay)."""
        drained: dict[ServiceKey, dict[tuple[str, int], Dest]] = {}
        for key, dest in plan.drained:
            drained.setdefault(key, {})[dest.key] = dataclasses.replace(dest, weight=0)
        for op in plan.tx.ops:
            if op.kind == "del-service":
                self.applied.pop(op.service.key, None)
        for key, vs in desired.items():
            self.applied[key] = (vs.service, {**drained.get(key, {}), **vs.dests})

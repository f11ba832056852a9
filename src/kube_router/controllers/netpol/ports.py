"""The kernel ports the policy controller drives: iptables per family and ipset."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kube_router.controllers.netpol import plan as planner
from kube_router.controllers.netpol.names import Family
from kube_router.dataplane import ipset
from kube_router.dataplane.exec import Executor
from kube_router.dataplane.iptables import IPTables, RealIPTables, detect_backend

log = logging.getLogger(__name__)


@dataclass
class Dataplane:
    """The kernel ports the controller drives: iptables per family and ipset."""

    iptables: dict[Family, IPTables]
    ipsets: ipset.RealIPSets | Any

    @classmethod
    async def real(cls, executor: Executor, families: Sequence[Family]) -> Dataplane:
        backend = await detect_backend(executor)
        log.info("iptables backend: %s", backend)
        tables: dict[Family, IPTables] = {
            f: RealIPTables(executor, planner.family_names(f)[0], backend) for f in families
        }
        return cls(tables, ipset.RealIPSets(executor))

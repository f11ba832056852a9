"""What a Service asks of the proxy: its annotations read, its external addresses validated.

Pure functions. A bad annotation value gives an error message (logged once and counted by the
controller) and the documented default; the Service is still programmed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from kube_router.controllers.shared.services import cluster_ips
from kube_router.dataplane import ipvs
from kube_router.k8s.models import Service

ANNOTATION: Final = "kube-router.io/service."
SCHEDULER: Final = ANNOTATION + "scheduler"
SCHEDFLAGS: Final = ANNOTATION + "schedflags"
HAIRPIN: Final = ANNOTATION + "hairpin"
HAIRPIN_EXTERNAL: Final = ANNOTATION + "hairpin.externalips"
LOCAL: Final = ANNOTATION + "local"
SKIP_LB_IPS: Final = ANNOTATION + "skiplbips"
DSR: Final = ANNOTATION + "dsr"
PROXY_NAME_LABEL: Final = "service.kubernetes.io/service-proxy-name"
HEADLESS_LABEL: Final = "service.kubernetes.io/headless"
OUR_PROXY_NAME: Final = "kube-router"

SCHEDULERS: Final = ("rr", "lc", "dh", "sh", "mh")  # upstream's annotation values
SCHED_FLAGS: Final = {"flag-1": ipvs.F_SCHED1, "flag-2": ipvs.F_SCHED2, "flag-3": ipvs.F_SCHED3}
DEFAULT_AFFINITY_S: Final = 10800  # Kubernetes' default ClientIP timeout


@dataclass(frozen=True)
class ServiceOptions:
    scheduler: str = "rr"
    flags: int = 0  # scheduler flags, and F_PERSISTENT with ClientIP affinity
    timeout: int = 0  # persistence
    hairpin: bool = False
    hairpin_external: bool = False
    external_local: bool = False  # externalTrafficPolicy Local or the service.local annotation
    internal_local: bool = False  # internalTrafficPolicy Local
    skip_lb_ips: bool = False
    dsr: str = ""
    errors: tuple[str, ...] = field(default=(), compare=False)


def is_ours(service: Service) -> bool:
    """Not another proxy's (service-proxy-name), not headless, not ExternalName, has a VIP."""
    labels = service.metadata.labels
    if labels.get(PROXY_NAME_LABEL, OUR_PROXY_NAME) != OUR_PROXY_NAME or HEADLESS_LABEL in labels:
        return False
    if service.spec.type == "ExternalName":
        return False
    return bool(cluster_ips(service))


def _scheduler(annotations: dict[str, str], errors: list[str]) -> tuple[str, int]:
    name = annotations.get(SCHEDULER, "rr").strip() or "rr"
    if name not in SCHEDULERS:
        errors.append(
            f"{SCHEDULER}: unknown scheduler {name!r} (one of {', '.join(SCHEDULERS)}); using rr"
        )
        name = "rr"
    flags = 0
    for word in (w.strip() for w in annotations.get(SCHEDFLAGS, "").split(",")):
        if not word:
            continue
        if word not in SCHED_FLAGS:
            errors.append(f"{SCHEDFLAGS}: unknown flag {word!r} (flag-1, flag-2, flag-3)")
        elif name == "mh":  # upstream honours the flags for maglev only
            flags |= SCHED_FLAGS[word]
    return name, flags


def options(service: Service) -> ServiceOptions:
    """The Service's annotations and policies as the proxy uses them."""
    ann, spec = service.metadata.annotations, service.spec
    errors: list[str] = []
    scheduler, flags = _scheduler(ann, errors)
    timeout = 0
    if spec.session_affinity == "ClientIP":
        flags |= ipvs.F_PERSISTENT
        cfg = spec.session_affinity_config.client_ip if spec.session_affinity_config else None
        timeout = cfg.timeout_seconds if cfg and cfg.timeout_seconds else DEFAULT_AFFINITY_S
    local = ann.get(LOCAL, "").strip().lower()
    if local not in ("", "true", "false"):
        errors.append(f"{LOCAL}: {ann[LOCAL]!r} is not true or false")
    dsr = ann.get(DSR, "")
    return ServiceOptions(
        scheduler=scheduler,
        flags=flags,
        timeout=timeout,
        hairpin=HAIRPIN in ann,
        hairpin_external=HAIRPIN_EXTERNAL in ann,
        external_local=spec.external_traffic_policy == "Local" or local == "true",
        internal_local=spec.internal_traffic_policy == "Local",
        skip_lb_ips=SKIP_LB_IPS in ann,
        dsr=dsr,
        errors=tuple(errors),
    )

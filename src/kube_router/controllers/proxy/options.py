"""What a Service asks of the proxy: its annotations read, its external addresses validated.

Pure functions. A bad annotation value gives an error message (logged once and counted by the
controller) and the documented default; the Service is still programmed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

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
IP_MODE_PROXY: Final = "Proxy"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Ranges:
    """Ranges external addresses are checked against (``--strict-external-ip-validation``)."""

    strict: bool = True
    cluster: tuple[Network, ...] = ()
    external: tuple[Network, ...] = ()
    load_balancer: tuple[Network, ...] = ()

    @classmethod
    def parse(
        cls, strict: bool, cluster: Sequence[str], external: Sequence[str], lb: Sequence[str]
    ) -> Ranges:
        def nets(texts: Sequence[str]) -> tuple[Network, ...]:
            return tuple(ipaddress.ip_network(t.strip(), strict=False) for t in texts if t.strip())

        return cls(strict, nets(cluster), nets(external), nets(lb))


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


def cluster_ips(service: Service) -> list[str]:
    ips = service.spec.cluster_ips or ([service.spec.cluster_ip] if service.spec.cluster_ip else [])
    return [ip for ip in ips if ip and ip != "None"]


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


def _allowed(ip: str, allowed: tuple[Network, ...], ranges: Ranges) -> str | None:
    """Why ``ip`` may not be used (None: it may)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return f"{ip!r} is not an IP address"
    if not ranges.strict:
        return None
    if any(addr in net for net in ranges.cluster):
        return f"{ip} is inside the service cluster IP range"
    if not any(addr in net for net in allowed):
        return f"{ip} is outside the allowed ranges"
    return None


def external_ips(service: Service, ranges: Ranges) -> tuple[list[str], list[str]]:
    """spec.externalIPs that pass validation, and the errors for the others."""
    good, errors = [], []
    for ip in service.spec.external_ips:
        why = _allowed(ip, ranges.external, ranges)
        (
            errors.append(f"externalIPs: {why}")
            if why
            else good.append(str(ipaddress.ip_address(ip)))
        )
    return good, errors


def lb_ips(service: Service, opts: ServiceOptions, ranges: Ranges) -> tuple[list[str], list[str]]:
    """LoadBalancer ingress IPs to program (not ipMode Proxy, not skiplbips), and errors."""
    if opts.skip_lb_ips or service.spec.type != "LoadBalancer":
        return [], []
    good, errors = [], []
    for ingress in service.status.load_balancer.ingress:
        if not ingress.ip or ingress.ip_mode == IP_MODE_PROXY:
            continue
        why = _allowed(ingress.ip, ranges.load_balancer, ranges)
        (
            errors.append(f"loadBalancer ingress: {why}")
            if why
            else good.append(str(ipaddress.ip_address(ingress.ip)))
        )
    return good, errors

"""kube-router's configuration: every upstream flag (same name, type, default) and its checks.

``FLAGS`` is the flag table (79 entries, as in upstream's ``pkg/options/options.go``); ``parse``
turns a command line and the environment into a :class:`Config`; :meth:`Config.validate` runs the
checks upstream makes when it starts its controllers (see ``docs/flags.md``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kube_router.flags import (
    BOOL,
    DURATION,
    IP_SLICE,
    SECOND,
    STRING,
    STRING_SLICE,
    UINT,
    UINT8,
    UINT16,
    UINT32,
    UINT_SLICE,
    ConfigError,
    FlagError,
    FlagSpec,
    FlagType,
    UsageError,
    parse_flags,
)
from kube_router.goparse import IPAddress, go_quote, parse_int

MAX_METRICS_PORT = 65535  # upstream serves metrics on 1..65534 only

__all__ = ["FLAGS", "GROUPS", "Config", "ConfigError", "FlagError", "UsageError", "parse"]

GENERAL = "general"
PROXY = "service proxy"
ROUTING = "routing/BGP"
NETPOL = "network policy"
LBALLOC = "LB allocator"
HEALTH = "health/metrics"
GROUPS = (GENERAL, PROXY, ROUTING, NETPOL, LBALLOC, HEALTH)

DEFAULT_CNI_CONF_FILE = "/etc/cni/net.d/10-kuberouter.conf"
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
_KLOG_LEVEL_BITS = 32  # klog's Level is an int32


def _f(name: str, kind: FlagType, default: str, group: str, text: str, short: str = "") -> FlagSpec:
    return FlagSpec(name, kind, default, text, group, short)


_EG_SHORT = "(e.g. '5s', '1m')"
_EG_LONG = "(e.g. '5s', '1m', '2h22m')"
_GT0 = "must be greater than 0"
_RIB = "in the RIB, to be advertised to the BGP peers."
_KEEP = "0s keeps the system default."
_STRICT = "when --strict-external-ip-validation is on."

# fmt: off
FLAGS: tuple[FlagSpec, ...] = (
    # general
    _f("help", BOOL, "false", GENERAL, "Print this usage text and exit.", "h"),
    _f("version", BOOL, "false", GENERAL, "Print version information and exit.", "V"),
    _f("v", STRING, "0", GENERAL, "Verbosity of V-level logs.", "v"),
    _f("run-router", BOOL, "true", GENERAL, "Run pod networking: advertise and learn pod routes."),
    _f("run-service-proxy", BOOL, "true", GENERAL, "Run the service proxy: IPVS for Services."),
    _f("run-firewall", BOOL, "true", GENERAL, "Run network policy: an iptables pod firewall."),
    _f("run-loadbalancer", BOOL, "false", GENERAL, "Run the LoadBalancer address allocator."),
    _f("kubeconfig", STRING, "", GENERAL, "Path of a kubeconfig file with authorization details "
       "(the API server location comes from --master when given)."),
    _f("master", STRING, "", GENERAL,
       "Address of the Kubernetes API server; overrides the one in the kubeconfig."),
    _f("hostname-override", STRING, "", GENERAL,
       "Name of this node; set it when kube-router cannot work out the node name itself."),
    _f("enable-ipv4", BOOL, "true", GENERAL, "Enable IPv4 support."),
    _f("enable-ipv6", BOOL, "false", GENERAL, "Enable IPv6 support."),
    _f("cache-sync-timeout", DURATION, "1m0s", GENERAL,
       f"How long to wait for the caches to synchronize {_EG_SHORT}; {_GT0}."),
    _f("cleanup-config", BOOL, "false", GENERAL,
       "Remove the iptables rules, IPVS services and ipsets kube-router made, then exit."),
    _f("enable-pprof", BOOL, "false", GENERAL,
       "Serve profiling data for chasing performance problems and memory leaks."),
    # service proxy
    _f("ipvs-sync-period", DURATION, "5m0s", PROXY,
       f"Interval between IPVS configuration syncs {_EG_LONG}; {_GT0}."),
    _f("masquerade-all", BOOL, "false", PROXY, "SNAT all traffic to cluster IPs and node ports."),
    _f("hairpin-mode", BOOL, "false", PROXY,
       "Add iptables rules for every service endpoint so that hairpin traffic works."),
    _f("nodeport-bindon-all-ip", BOOL, "false", PROXY,
       "Create the IPVS services of NodePort services on every IP of the node."),
    _f("ipvs-permit-all", BOOL, "true", PROXY,
       "Add a rule accepting all incoming traffic to service VIPs on the node."),
    _f("ipvs-graceful-termination", BOOL, "false", PROXY,
       "Turn on the experimental graceful termination of IPVS destinations."),
    _f("ipvs-graceful-period", DURATION, "30s", PROXY,
       f"How long a removed destination stays in its IPVS service {_EG_LONG}."),
    _f("service-tcp-timeout", DURATION, "0s", PROXY,
       f"TCP timeout of IPVS services as a duration {_EG_SHORT}; {_KEEP}"),
    _f("service-tcpfin-timeout", DURATION, "0s", PROXY,
       f"TCP FIN timeout of IPVS services as a duration {_EG_SHORT}; {_KEEP}"),
    _f("service-udp-timeout", DURATION, "0s", PROXY,
       f"UDP timeout of IPVS services as a duration {_EG_SHORT}; {_KEEP}"),
    _f("excluded-cidrs", STRING_SLICE, "", PROXY,
       "IPVS services with an address in these CIDRs are never deleted."),
    _f("runtime-endpoint", STRING, "", PROXY,
       "Path of the CRI runtime socket, used for DSR mode (known to work with containerd)."),
    _f("strict-external-ip-validation", BOOL, "true", PROXY,
       "Accept service externalIPs and loadBalancerIPs only inside --service-external-ip-range "
       "and --loadbalancer-ip-range; with no range set, all are refused. Turn off to accept any."),
    _f("service-cluster-ip-range", STRING_SLICE, "10.96.0.0/12", PROXY,
       "CIDRs that service cluster IPs come from (at most 2, one per IP family)."),
    _f("service-external-ip-range", STRING_SLICE, "", PROXY,
       "External IP CIDRs used for traffic between clusters (repeatable); also used to check "
       f"externalIPs {_STRICT}"),
    _f("service-node-port-range", STRING, "30000-32767", PROXY,
       "NodePort range, written with a hyphen or a colon."),
    # routing, BGP, CNI and overlay
    _f("routes-sync-period", DURATION, "5m0s", ROUTING,
       f"Interval between route updates and advertisements {_EG_LONG}; {_GT0}."),
    _f("injected-routes-sync-period", DURATION, "1m0s", ROUTING,
       f"Interval between syncs of learned routes into the kernel {_EG_LONG}; {_GT0}."),
    _f("advertise-pod-cidr", BOOL, "true", ROUTING, f"Put the node's pod CIDR {_RIB}"),
    _f("advertise-cluster-ip", BOOL, "false", ROUTING, f"Put service cluster IPs {_RIB}"),
    _f("advertise-external-ip", BOOL, "false", ROUTING, f"Put service external IPs {_RIB}"),
    _f("advertise-loadbalancer-ip", BOOL, "false", ROUTING,
       f"Put the LoadBalancer IPs from service status {_RIB}"),
    _f("cluster-asn", UINT, "0", ROUTING, "ASN the cluster nodes use for iBGP."),
    _f("nodes-full-mesh", BOOL, "true", ROUTING, "Make every node peer with every other node."),
    _f("enable-ibgp", BOOL, "true", ROUTING,
       "Peer with the nodes that share our ASN; when off, peer with external peers only."),
    _f("peer-router-ips", IP_SLICE, "", ROUTING,
       "IPs of external routers that every node peers with and advertises its routes to."),
    _f("peer-router-asns", UINT_SLICE, "", ROUTING,
       "ASNs of the BGP peers given with --peer-router-ips."),
    _f("peer-router-ports", UINT_SLICE, "", ROUTING,
       "Remote ports of the BGP peers given with --peer-router-ips (default BGP port 179)."),
    _f("peer-router-passwords", STRING_SLICE, "", ROUTING,
       "Base64-encoded passwords of the BGP peers given with --peer-router-ips."),
    _f("peer-router-passwords-file", STRING, "", ROUTING,
       "File with the base64-encoded passwords of the peers given with --peer-router-ips; "
       "--peer-router-passwords wins when both are set."),
    _f("peer-router-multihop-ttl", UINT8, "0", ROUTING,
       "Turn on eBGP multihop with this TTL (only when it is 2 or more)."),
    _f("bgp-port", UINT32, "179", ROUTING,
       "Port for incoming BGP connections and for connecting to the other BGP peers."),
    _f("bgp-holdtime", DURATION, "1m30s", ROUTING,
       "Hold time announced to BGP peers; it bounds how long they keep our routes when "
       "kube-router dies unexpectedly. Must be between 3s and 18h12m16s."),
    _f("bgp-graceful-restart", BOOL, "false", ROUTING,
       "Turn on the BGP Graceful Restart capability so that routes survive unexpected restarts."),
    _f("bgp-graceful-restart-time", DURATION, "1m30s", ROUTING,
       "BGP Graceful Restart time (RFC 4724 section 3), at most 4095s."),
    _f("bgp-graceful-restart-deferral-time", DURATION, "6m0s", ROUTING,
       "BGP Graceful Restart deferral time (RFC 4724 section 4.1), at most 18h."),
    _f("override-nexthop", BOOL, "false", ROUTING,
       "Set the next hop of routes sent to peers to the local IP."),
    _f("router-id", STRING, "", ROUTING, 'BGP router ID, required in an IPv6-only cluster; '
       '"generate" derives one from the node IP.'),
    _f("gobgp-admin-address", STRING, "127.0.0.1", ROUTING,
       "Address of the GoBGP admin gRPC endpoint (see --gobgp-admin-port); empty means 127.0.0.1."),
    _f("gobgp-admin-port", UINT16, "50051", ROUTING,
       "Port of the GoBGP admin gRPC endpoint; 0 turns the gRPC server off."),
    _f("enable-bfd", BOOL, "false", ROUTING, "Turn on BFD in GoBGP."),
    _f("bfd-port", UINT32, "3784", ROUTING, "UDP port of BFD control packets."),
    _f("bfd-detection-multiplier", UINT32, "3", ROUTING,
       "BFD failure detection multiplier, between 1 and 255."),
    _f("bfd-desired-min-tx-interval", UINT32, "1000", ROUTING,
       "Desired minimum interval, in milliseconds, between BFD control packets GoBGP sends."),
    _f("bfd-required-min-rx-interval", UINT32, "1000", ROUTING,
       "Minimum interval, in milliseconds, between BFD control packets GoBGP receives."),
    _f("enable-cni", BOOL, "true", ROUTING,
       "Act as the CNI plugin; turn off to use the other features beside another CNI plugin."),
    _f("auto-mtu", BOOL, "true", ROUTING, "Set the largest usable MTU on kube-bridge and pod "
       "interfaces (allowing for the IPIP overlay when it is on)."),
    _f("enable-pod-egress", BOOL, "true", ROUTING,
       "SNAT traffic from pods to destinations outside the cluster."),
    _f("enable-overlay", BOOL, "true", ROUTING,
       "Tunnel pod traffic (IP-in-IP) between nodes in different subnets; when off, the network "
       "itself must route pod traffic between subnets."),
    _f("overlay-type", STRING, "subnet", ROUTING,
       'Where tunnels go: "subnet" only to nodes in other subnets, "full" to every node.'),
    _f("overlay-encap", STRING, "ipip", ROUTING,
       'Tunnel encapsulation, "ipip" or "fou" (its UDP port is --overlay-encap-port).'),
    _f("overlay-encap-port", UINT16, "5555", ROUTING,
       'UDP port of the overlay tunnels ("fou" encapsulation only).'),
    _f("disable-source-dest-check", BOOL, "true", ROUTING,
       "Turn off the source/destination check of AWS EC2 instances (else do it some other way)."),
    # network policy
    _f("iptables-sync-period", DURATION, "5m0s", NETPOL,
       f"Interval between iptables rule syncs {_EG_SHORT}; {_GT0}."),
    _f("netpol-default-deny", BOOL, "false", NETPOL,
       "Deny traffic to and from pods until their network policy is in place."),
    _f("use-nftables-for-netpol", BOOL, "false", NETPOL, "[Experimental] Enforce network "
       "policy with nftables instead of iptables (needs nft >= 1.0.1 and kernel support)."),
    # LoadBalancer allocator
    _f("loadbalancer-ip-range", STRING_SLICE, "", LBALLOC,
       "CIDRs that LoadBalancer service addresses come from (repeatable); also used to check "
       f"loadBalancerIPs {_STRICT}"),
    _f("loadbalancer-default-class", BOOL, "true", LBALLOC,
       "Also handle LoadBalancer services without a class."),
    _f("loadbalancer-sync-period", DURATION, "1m0s", LBALLOC,
       f"Interval between checks for missed services {_EG_SHORT}; {_GT0}."),
    # health and metrics
    _f("health-port", UINT16, "20244", HEALTH, "Port of the health check; 0 turns it off."),
    _f("health-addr", STRING, "", HEALTH, "Address the health check listens on (all interfaces "
       "by default; give the livenessProbe the same address)."),
    _f("metrics-port", UINT16, "0", HEALTH, "Port of the Prometheus metrics; 0 turns them off."),
    _f("metrics-addr", STRING, "", HEALTH,
       "Address the Prometheus metrics listen on (all interfaces by default)."),
    _f("metrics-path", STRING, "/metrics", HEALTH, "HTTP path of the Prometheus metrics."),
)
# fmt: on


@dataclass(frozen=True)
class Config:
    """Everything kube-router was started with: one attribute per flag, plus the environment.

    Durations are float seconds; ``v`` is the klog verbosity as an int. Build it with
    :func:`parse`; call :meth:`validate` before starting controllers.
    """

    # general
    help: bool
    version: bool
    v: int
    run_router: bool
    run_service_proxy: bool
    run_firewall: bool
    run_loadbalancer: bool
    kubeconfig: str
    master: str
    hostname_override: str
    enable_ipv4: bool
    enable_ipv6: bool
    cache_sync_timeout: float
    cleanup_config: bool
    enable_pprof: bool
    # service proxy
    ipvs_sync_period: float
    masquerade_all: bool
    hairpin_mode: bool
    nodeport_bindon_all_ip: bool
    ipvs_permit_all: bool
    ipvs_graceful_termination: bool
    ipvs_graceful_period: float
    service_tcp_timeout: float
    service_tcpfin_timeout: float
    service_udp_timeout: float
    excluded_cidrs: list[str]
    runtime_endpoint: str
    strict_external_ip_validation: bool
    service_cluster_ip_range: list[str]
    service_external_ip_range: list[str]
    service_node_port_range: str
    # routing, BGP, CNI and overlay
    routes_sync_period: float
    injected_routes_sync_period: float
    advertise_pod_cidr: bool
    advertise_cluster_ip: bool
    advertise_external_ip: bool
    advertise_loadbalancer_ip: bool
    cluster_asn: int
    nodes_full_mesh: bool
    enable_ibgp: bool
    peer_router_ips: list[IPAddress]
    peer_router_asns: list[int]
    peer_router_ports: list[int]
    peer_router_passwords: list[str]
    peer_router_passwords_file: str
    peer_router_multihop_ttl: int
    bgp_port: int
    bgp_holdtime: float
    bgp_graceful_restart: bool
    bgp_graceful_restart_time: float
    bgp_graceful_restart_deferral_time: float
    override_nexthop: bool
    router_id: str
    gobgp_admin_address: str
    gobgp_admin_port: int
    enable_bfd: bool
    bfd_port: int
    bfd_detection_multiplier: int
    bfd_desired_min_tx_interval: int
    bfd_required_min_rx_interval: int
    enable_cni: bool
    auto_mtu: bool
    enable_pod_egress: bool
    enable_overlay: bool
    overlay_type: str
    overlay_encap: str
    overlay_encap_port: int
    disable_source_dest_check: bool
    # network policy
    iptables_sync_period: float
    netpol_default_deny: bool
    use_nftables_for_netpol: bool
    # LoadBalancer allocator
    loadbalancer_ip_range: list[str]
    loadbalancer_default_class: bool
    loadbalancer_sync_period: float
    # health and metrics
    health_port: int
    health_addr: str
    metrics_port: int
    metrics_addr: str
    metrics_path: str
    # environment
    node_name_env: str = ""
    pod_name: str = ""
    pod_namespace: str = ""
    cni_conf_file: str = DEFAULT_CNI_CONF_FILE

    @property
    def metrics_enabled(self) -> bool:
        """Upstream serves metrics only for a port in 1..65534; any other port turns them off."""
        return 0 < self.metrics_port < MAX_METRICS_PORT

    @property
    def any_controller(self) -> bool:
        """Whether routing, proxy or firewall runs (the LB allocator alone is not enough)."""
        return self.run_router or self.run_service_proxy or self.run_firewall


def _pod_namespace(env: Mapping[str, str]) -> str:
    namespace = env.get("POD_NAMESPACE", "")
    if namespace:
        return namespace
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE_FILE, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _verbosity(text: str) -> int:
    try:
        return parse_int(text, _KLOG_LEVEL_BITS)
    except ValueError as err:
        raise ConfigError("--v", f"failed to set log level to {go_quote(text)}: {err}") from None


def parse(argv: list[str], env: Mapping[str, str] | None = None) -> Config:
    """Parse a command line (without the program name) and the environment into a Config.

    Raises :class:`FlagError` for a bad flag or a positional argument and :class:`ConfigError`
    for a bad ``-v``; the start-up checks are :meth:`Config.validate`.
    """
    environ = os.environ if env is None else env
    parsed = parse_flags(FLAGS, argv)
    if parsed.args:
        raise FlagError(f"unrecognized positional argument(s): [{' '.join(parsed.args)}]")
    values: dict[str, Any] = {}
    for spec in FLAGS:
        value = parsed.values[spec.attr]
        if spec.type is DURATION:
            assert isinstance(value, int)
            value = value / SECOND
        values[spec.attr] = value
    values["v"] = _verbosity(str(values["v"]))
    return Config(
        **values,
        node_name_env=environ.get("NODE_NAME", ""),
        pod_name=environ.get("POD_NAME", ""),
        pod_namespace=_pod_namespace(environ),
        cni_conf_file=environ.get("KUBE_ROUTER_CNI_CONF_FILE", "") or DEFAULT_CNI_CONF_FILE,
    )

"""The start-up checks upstream kube-router makes on its flags, as one-line :class:`ConfigError`s.

Upstream checks most values only when it builds the controller that uses them (the routing
controller's values only with ``--run-router``, and so on); we do the same so that a DaemonSet
upstream accepts is accepted here. Where upstream accepts a value that cannot work (a router ID
that is not an IPv4 address, an overlay type it silently ignores, a port above 65535) we refuse
it; ``docs/flags.md`` lists these.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from pathlib import Path

from kube_router.config import Config
from kube_router.flags import SECOND, ConfigError, format_duration
from kube_router.goparse import parse_cidr, parse_ip, parse_uint

MAX_PORT = 65535
MIN_ENCAP_PORT = 1024  # the FoU port must not be a privileged port
MAX_UINT32 = (1 << 32) - 1
MIN_HOLDTIME = 3.0  # seconds (RFC 4271 allows 0 or >= 3; upstream refuses 0)
MAX_HOLDTIME = 65536.0  # seconds, upstream's bound (18h12m16s)
MAX_GR_RESTART_TIME = 4095.0  # seconds: the restart time is a 12-bit field (RFC 4724)
MAX_GR_DEFERRAL_TIME = 18 * 3600.0  # seconds
MAX_BFD_MULTIPLIER = 255  # detect_mult is an 8-bit field (RFC 5880)
MS_TO_US = 1000
MAX_BFD_INTERVAL_MS = MAX_UINT32 // MS_TO_US  # GoBGP takes microseconds in a uint32
MAX_CLUSTER_IP_RANGES = 2
DEFAULT_CLUSTER_ASN = 64512
CLUSTER_ASN_RANGES = ((64512, 65535), (4200000000, 4294967294))
PEER_ASN_RANGES = (
    (1, 23455),
    (23457, 63999),
    (64512, 65534),
    (131072, 4199999999),
    (4200000000, 4294967294),
)
OVERLAY_TYPES = ("subnet", "full")
OVERLAY_ENCAPS = ("ipip", "fou")
ROUTER_ID_GENERATE = "generate"
_NODE_PORT_RANGE = re.compile(r"([0-9]+)[:-]([0-9]+)")
_PORT_BITS = 16


def _duration(seconds: float) -> str:
    return format_duration(round(seconds * SECOND))


def _positive(flag: str, seconds: float) -> None:
    if seconds <= 0:
        raise ConfigError(flag, f"must be greater than 0, got {_duration(seconds)}")


def _not_negative(flag: str, seconds: float) -> None:
    if seconds < 0:
        raise ConfigError(flag, f"must not be negative, got {_duration(seconds)}")


def _in_ranges(value: int, ranges: Sequence[tuple[int, int]]) -> bool:
    return any(low <= value <= high for low, high in ranges)


def _check_cidrs(flag: str, cidrs: Sequence[str], config: Config) -> None:
    for cidr in cidrs:
        try:
            network = parse_cidr(cidr)
        except ValueError as err:
            raise ConfigError(flag, f"{cidr!r}: {err}") from None
        if network.version == 4 and not config.enable_ipv4:
            raise ConfigError(flag, f"IPv4 CIDR {cidr} given while IPv4 is disabled")
        if network.version == 6 and not config.enable_ipv6:
            raise ConfigError(flag, f"IPv6 CIDR {cidr} given while IPv6 is disabled")


def _check_general(config: Config) -> None:
    _positive("--cache-sync-timeout", config.cache_sync_timeout)
    if not config.enable_ipv4 and not config.enable_ipv6:
        raise ConfigError("--enable-ipv4", "IPv4 and IPv6 are both disabled; enable at least one")
    _check_cidrs("--service-external-ip-range", config.service_external_ip_range, config)
    _check_cidrs("--loadbalancer-ip-range", config.loadbalancer_ip_range, config)
    _check_cidrs("--service-cluster-ip-range", config.service_cluster_ip_range, config)
    count = len(config.service_cluster_ip_range)
    if not 1 <= count <= MAX_CLUSTER_IP_RANGES:
        raise ConfigError(
            "--service-cluster-ip-range", f"give 1 or 2 CIDRs (one per IP family), got {count}"
        )
    if config.bgp_graceful_restart:
        restart, deferral = (
            config.bgp_graceful_restart_time,
            config.bgp_graceful_restart_deferral_time,
        )
        if not 0 < restart <= MAX_GR_RESTART_TIME:
            raise ConfigError(
                "--bgp-graceful-restart-time",
                f"must be greater than 0 and at most 4095s, got {_duration(restart)}",
            )
        if not 0 < deferral <= MAX_GR_DEFERRAL_TIME:
            raise ConfigError(
                "--bgp-graceful-restart-deferral-time",
                f"must be greater than 0 and at most 18h, got {_duration(deferral)}",
            )


def _check_routing(config: Config) -> None:
    _positive("--routes-sync-period", config.routes_sync_period)
    _positive("--injected-routes-sync-period", config.injected_routes_sync_period)
    if not MIN_HOLDTIME <= config.bgp_holdtime <= MAX_HOLDTIME:
        raise ConfigError(
            "--bgp-holdtime",
            f"must be in the range 3s to 18h12m16s, got {_duration(config.bgp_holdtime)}",
        )
    asn = config.cluster_asn
    if asn != 0 and not _in_ranges(asn, CLUSTER_ASN_RANGES):
        raise ConfigError(
            "--cluster-asn",
            f"invalid cluster ASN {asn}: use 64512-65535 or 4200000000-4294967294 (0 means 64512)",
        )
    if config.bgp_port > MAX_PORT:
        raise ConfigError("--bgp-port", f"must be at most {MAX_PORT}, got {config.bgp_port}")
    if config.overlay_type not in OVERLAY_TYPES:
        raise ConfigError(
            "--overlay-type", f'must be "subnet" or "full", got "{config.overlay_type}"'
        )
    if config.overlay_encap not in OVERLAY_ENCAPS:
        raise ConfigError(
            "--overlay-encap", f'must be "ipip" or "fou", got "{config.overlay_encap}"'
        )
    if config.overlay_encap_port < MIN_ENCAP_PORT:
        raise ConfigError(
            "--overlay-encap-port",
            f"must be between {MIN_ENCAP_PORT} and {MAX_PORT}, got {config.overlay_encap_port}",
        )
    _check_router_id(config.router_id)


def _check_router_id(router_id: str) -> None:
    if router_id in ("", ROUTER_ID_GENERATE):
        return
    address = parse_ip(router_id)
    if address is None or address.version != 4:
        raise ConfigError(
            "--router-id", f'must be an IPv4 address or "generate", got "{router_id}"'
        )


def _decode_passwords(flag: str, encoded: Sequence[str]) -> list[str]:
    """Decode base64 passwords as Go's StdEncoding does (padding required, CR and LF ignored)."""
    out = []
    for position, item in enumerate(encoded, start=1):
        try:
            raw = binascii.a2b_base64(item.replace("\r", "").replace("\n", ""), strict_mode=True)
            out.append(raw.decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(flag, f"password {position} is not a base64-encoded string") from None
    return out


def peer_passwords(config: Config) -> list[str]:
    """Decoded peer passwords: ``--peer-router-passwords``, else the passwords file's, else none.

    The file holds the same comma-separated base64 list as the flag; it is read here, when the
    routing controller's configuration is checked, as upstream reads it when building its peers.
    """
    if config.peer_router_passwords:
        return _decode_passwords("--peer-router-passwords", config.peer_router_passwords)
    path = config.peer_router_passwords_file
    if not path:
        return []
    flag = "--peer-router-passwords-file"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(flag, f"cannot read {path}: {err}") from None
    return _decode_passwords(flag, text.split(","))


def _check_peers(config: Config) -> None:
    passwords = peer_passwords(config)
    peers, asns = len(config.peer_router_ips), len(config.peer_router_asns)
    if asns != peers:
        raise ConfigError(
            "--peer-router-asns", f"give one ASN per peer router (peer IPs: {peers}, ASNs: {asns})"
        )
    if passwords and len(passwords) != peers:
        flag = (
            "--peer-router-passwords"
            if config.peer_router_passwords
            else ("--peer-router-passwords-file")
        )
        raise ConfigError(
            flag,
            f"give no password or one per peer router ({peers}), using empty items for peers "
            f'without a password (e.g. "pass,,pass"), got {len(passwords)}',
        )
    ports = config.peer_router_ports
    if ports and len(ports) != peers:
        raise ConfigError(
            "--peer-router-ports",
            f"give no port or one per peer router ({peers}), got {len(ports)}",
        )
    for port in ports:
        if port > MAX_PORT:
            raise ConfigError("--peer-router-ports", f"port {port} is above {MAX_PORT}")
    for asn in config.peer_router_asns:
        if not _in_ranges(asn, PEER_ASN_RANGES):
            raise ConfigError(
                "--peer-router-asns", f'reserved ASN number "{asn}" for global BGP peer'
            )


def _check_bfd(config: Config) -> None:
    if not 1 <= config.bfd_port <= MAX_PORT:
        raise ConfigError("--bfd-port", f"must be between 1 and {MAX_PORT}, got {config.bfd_port}")
    multiplier = config.bfd_detection_multiplier
    if not 1 <= multiplier <= MAX_BFD_MULTIPLIER:
        raise ConfigError(
            "--bfd-detection-multiplier",
            f"must be between 1 and {MAX_BFD_MULTIPLIER}, got {multiplier}",
        )
    for flag, interval in (
        ("--bfd-desired-min-tx-interval", config.bfd_desired_min_tx_interval),
        ("--bfd-required-min-rx-interval", config.bfd_required_min_rx_interval),
    ):
        if not 1 <= interval <= MAX_BFD_INTERVAL_MS:
            raise ConfigError(
                flag, f"must be between 1 and {MAX_BFD_INTERVAL_MS} milliseconds, got {interval}"
            )


def _check_proxy(config: Config) -> None:
    _positive("--ipvs-sync-period", config.ipvs_sync_period)
    _not_negative("--ipvs-graceful-period", config.ipvs_graceful_period)
    _not_negative("--service-tcp-timeout", config.service_tcp_timeout)
    _not_negative("--service-tcpfin-timeout", config.service_tcpfin_timeout)
    _not_negative("--service-udp-timeout", config.service_udp_timeout)
    for cidr in config.excluded_cidrs:
        try:
            parse_cidr(cidr)
        except ValueError as err:
            raise ConfigError("--excluded-cidrs", str(err)) from None


def node_port_range(text: str) -> tuple[int, int]:
    """Parse ``--service-node-port-range`` (``a-b`` or ``a:b``, ``a < b``) as upstream does."""
    flag = "--service-node-port-range"
    match = _NODE_PORT_RANGE.fullmatch(text)
    if match is None:
        raise ConfigError(flag, f"cannot parse {text!r}: write it as FIRST-LAST or FIRST:LAST")
    ports = []
    for which, digits in (("first", match[1]), ("second", match[2])):
        try:
            ports.append(parse_uint(digits, 10, _PORT_BITS))
        except ValueError:
            raise ConfigError(flag, f"{which} port of {text!r} is above {MAX_PORT}") from None
    if ports[0] >= ports[1]:
        raise ConfigError(flag, f"first port must be lower than the second in {text!r}")
    return ports[0], ports[1]


def validate(config: Config) -> None:
    """Run the checks upstream makes at start-up, for the controllers that are enabled."""
    _check_general(config)
    if config.run_router:
        _check_routing(config)
        _check_peers(config)
        _check_bfd(config)
    if config.run_service_proxy:
        _check_proxy(config)
    if config.run_firewall:
        _positive("--iptables-sync-period", config.iptables_sync_period)
        node_port_range(config.service_node_port_range)
    if config.run_loadbalancer:
        _positive("--loadbalancer-sync-period", config.loadbalancer_sync_period)

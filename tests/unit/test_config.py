"""Every upstream flag (default, a good value, a bad value), the start-up checks and the env."""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from kube_router import config, config_checks
from kube_router.config import FLAGS, Config, ConfigError, FlagError, UsageError, parse
from kube_router.config_checks import peer_passwords, validate

ROOT = Path(__file__).resolve().parents[2]
PASSWORD_FILE = "{password_file}"
IP1, IP2 = "--peer-router-ips=192.0.2.1", "--peer-router-ips=192.0.2.1,192.0.2.2"
ASN1, ASN2 = "--peer-router-asns=65001", "--peer-router-asns=65001,65002"
GR = "--bgp-graceful-restart"


@dataclass(frozen=True)
class Row:
    """One flag: its default, argv giving ``value``, and argv that must be refused."""

    name: str
    default: object
    good: tuple[str, ...]
    value: object
    bad: tuple[str, ...]


def _bool(name: str, default: bool) -> Row:
    good = (f"--{name}=false",) if default else (f"--{name}",)
    return Row(name, default, good, not default, (f"--{name}=maybe",))


def _string(name: str, default: str, good: str) -> Row:
    return Row(name, default, (f"--{name}={good}",), good, (f"--{name}",))


def _value(name: str, default: object, good: str, value: object, bad: str) -> Row:
    return Row(name, default, (f"--{name}={good}",), value, (f"--{name}={bad}",))


ROWS = [
    # general
    _bool("help", False),
    Row("version", False, ("-V",), True, ("--version=maybe",)),
    Row("v", 0, ("-v", "3"), 3, ("--v=abc",)),
    _bool("run-router", True),
    _bool("run-service-proxy", True),
    _bool("run-firewall", True),
    _bool("run-loadbalancer", False),
    Row("kubeconfig", "", ("--kubeconfig", "/etc/kc"), "/etc/kc", ("--kubeconfig",)),
    _string("master", "", "https://10.0.0.1:6443"),
    _string("hostname-override", "", "node-1"),
    Row("enable-ipv4", True, ("--enable-ipv4=false", "--enable-ipv6",
        "--service-cluster-ip-range=fd00::/108"), False, ("--enable-ipv4=maybe",)),
    _bool("enable-ipv6", False),
    _value("cache-sync-timeout", 60.0, "5s", 5.0, "0s"),
    _bool("cleanup-config", False),
    _bool("enable-pprof", False),
    # service proxy
    _value("ipvs-sync-period", 300.0, "1m30s", 90.0, "0"),
    _bool("masquerade-all", False),
    _bool("hairpin-mode", False),
    _bool("nodeport-bindon-all-ip", False),
    _bool("ipvs-permit-all", True),
    _bool("ipvs-graceful-termination", False),
    _value("ipvs-graceful-period", 30.0, "1.5h", 5400.0, "-1s"),
    _value("service-tcp-timeout", 0.0, "300ms", 0.3, "5x"),
    _value("service-tcpfin-timeout", 0.0, "2h22m", 8520.0, "-5s"),
    _value("service-udp-timeout", 0.0, "1m", 60.0, "1"),
    _value("excluded-cidrs", [], "10.0.0.0/8,192.168.0.0/16", ["10.0.0.0/8", "192.168.0.0/16"],
           "10.0.0.0/33"),
    _string("runtime-endpoint", "", "unix:///run/containerd/containerd.sock"),
    _bool("strict-external-ip-validation", True),
    _value("service-cluster-ip-range", ["10.96.0.0/12"], "10.43.0.0/16", ["10.43.0.0/16"],
           "10.0.0.0/8,10.1.0.0/16,10.2.0.0/16"),
    _value("service-external-ip-range", [], "203.0.113.0/24", ["203.0.113.0/24"], "fd00::/64"),
    _value("service-node-port-range", "30000-32767", "30000:31000", "30000:31000", "32767-30000"),
    # routing, BGP, CNI, overlay
    _value("routes-sync-period", 300.0, "1m", 60.0, "0s"),
    _value("injected-routes-sync-period", 60.0, "30s", 30.0, "-1s"),
    _bool("advertise-pod-cidr", True),
    _bool("advertise-cluster-ip", False),
    _bool("advertise-external-ip", False),
    _bool("advertise-loadbalancer-ip", False),
    _value("cluster-asn", 0, "65001", 65001, "64511"),
    _bool("nodes-full-mesh", True),
    _bool("enable-ibgp", True),
    Row("peer-router-ips", [], ("--peer-router-ips=192.0.2.1,2001:db8::1", ASN2),
        [IPv4Address("192.0.2.1"), IPv6Address("2001:db8::1")], ("--peer-router-ips=192.0.2.300",)),
    Row("peer-router-asns", [], (IP1, "--peer-router-asns=4200000001"), [4200000001],
        (IP1, "--peer-router-asns=64000")),
    Row("peer-router-ports", [], (IP1, ASN1, "--peer-router-ports=1790"), [1790],
        ("--peer-router-ports=-1",)),
    Row("peer-router-passwords", [], (IP2, ASN2, "--peer-router-passwords=cGFzcw==,"),
        ["cGFzcw==", ""], (IP1, ASN1, "--peer-router-passwords=a,b")),
    Row("peer-router-passwords-file", "",
        (IP1, ASN1, f"--peer-router-passwords-file={PASSWORD_FILE}"), PASSWORD_FILE,
        ("--peer-router-passwords-file=/nonexistent/passwords",)),
    _value("peer-router-multihop-ttl", 0, "5", 5, "256"),
    _value("bgp-port", 179, "1179", 1179, "4294967296"),
    _value("bgp-holdtime", 90.0, "3s", 3.0, "2s"),
    _bool("bgp-graceful-restart", False),
    Row("bgp-graceful-restart-time", 90.0, (GR, "--bgp-graceful-restart-time=4095s"), 4095.0,
        (GR, "--bgp-graceful-restart-time=4096s")),
    Row("bgp-graceful-restart-deferral-time", 360.0,
        (GR, "--bgp-graceful-restart-deferral-time=18h"), 64800.0,
        (GR, "--bgp-graceful-restart-deferral-time=18h0m1s")),
    _bool("override-nexthop", False),
    _value("router-id", "", "generate", "generate", "not-an-ip"),
    _string("gobgp-admin-address", "127.0.0.1", "0.0.0.0"),
    _value("gobgp-admin-port", 50051, "0", 0, "65536"),
    _bool("enable-bfd", False),
    _value("bfd-port", 3784, "4784", 4784, "0"),
    _value("bfd-detection-multiplier", 3, "255", 255, "256"),
    _value("bfd-desired-min-tx-interval", 1000, "300", 300, "0"),
    _value("bfd-required-min-rx-interval", 1000, "4294967", 4294967, "4294968"),
    _bool("enable-cni", True),
    _bool("auto-mtu", True),
    _bool("enable-pod-egress", True),
    _bool("enable-overlay", True),
    _value("overlay-type", "subnet", "full", "full", "partial"),
    _value("overlay-encap", "ipip", "fou", "fou", "gre"),
    _value("overlay-encap-port", 5555, "1024", 1024, "1023"),
    _bool("disable-source-dest-check", True),
    # network policy
    _value("iptables-sync-period", 300.0, "10s", 10.0, "0"),
    _bool("netpol-default-deny", False),
    _bool("use-nftables-for-netpol", False),
    # LoadBalancer allocator
    Row("loadbalancer-ip-range", [], ("--loadbalancer-ip-range=198.51.100.0/24",
        "--loadbalancer-ip-range=203.0.113.0/24"), ["198.51.100.0/24", "203.0.113.0/24"],
        ("--loadbalancer-ip-range=198.51.100.0",)),
    _bool("loadbalancer-default-class", True),
    Row("loadbalancer-sync-period", 60.0, ("--run-loadbalancer", "--loadbalancer-sync-period=30s"),
        30.0, ("--run-loadbalancer", "--loadbalancer-sync-period=0s")),
    # health and metrics
    _value("health-port", 20244, "0", 0, "-1"),
    _string("health-addr", "", "127.0.0.1"),
    _value("metrics-port", 0, "8080", 8080, "65536"),
    _string("metrics-addr", "", "0.0.0.0"),
    _string("metrics-path", "/metrics", "/m"),
]  # fmt: skip

SPECS = {spec.name: spec for spec in FLAGS}


def _attr(name: str) -> str:
    return name.replace("-", "_")


def _argv(argv: tuple[str, ...], password_file: Path) -> list[str]:
    return [arg.replace(PASSWORD_FILE, str(password_file)) for arg in argv]


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "passwords"
    path.write_text("cGFzcw==\n", encoding="utf-8")
    return path


def test_the_table_covers_exactly_the_79_upstream_flags() -> None:
    assert len(ROWS) == 79
    assert len(FLAGS) == 79
    assert [row.name for row in ROWS] == [spec.name for spec in FLAGS]


def test_config_has_one_field_per_flag_plus_the_environment() -> None:
    fields = [field.name for field in dataclasses.fields(Config)]
    env = ["node_name_env", "pod_name", "pod_namespace", "cni_conf_file"]
    assert fields == [spec.attr for spec in FLAGS] + env


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_flag(row: Row, password_file: Path) -> None:
    spec = SPECS[row.name]
    defaults = parse([], env={})
    assert getattr(defaults, spec.attr) == row.default
    validate(defaults)

    good = parse(_argv(row.good, password_file), env={})
    validate(good)
    expected = str(password_file) if row.value == PASSWORD_FILE else row.value
    assert getattr(good, spec.attr) == expected

    with pytest.raises(UsageError) as info:
        validate(parse(_argv(row.bad, password_file), env={}))
    message = str(info.value)
    assert "\n" not in message
    assert f"--{row.name}" in message


def test_kinds_of_flag_errors() -> None:
    with pytest.raises(FlagError, match=r'^invalid argument "abc" for "--bgp-holdtime" flag: '):
        parse(["--bgp-holdtime=abc"], env={})
    with pytest.raises(FlagError, match=r"^unrecognized positional argument\(s\): \[a b\]$"):
        parse(["a", "--run-router", "b"], env={})
    with pytest.raises(FlagError, match=r"^unrecognized positional"):
        parse(["--run-router", "false"], env={})
    with pytest.raises(ConfigError) as info:
        parse(["-v", "x"], env={})
    assert info.value.flag == "--v"
    assert str(info.value) == (
        '--v: failed to set log level to "x": strconv.ParseInt: parsing "x": invalid syntax'
    )


def test_verbosity_may_be_negative_like_klog() -> None:
    assert parse(["-v", "-1"], env={}).v == -1


def test_config_error_carries_flag_and_reason() -> None:
    with pytest.raises(ConfigError) as info:
        validate(parse(["--bgp-holdtime=2s"], env={}))
    assert info.value.flag == "--bgp-holdtime"
    assert info.value.reason == "must be in the range 3s to 18h12m16s, got 2s"
    assert str(info.value) == f"{info.value.flag}: {info.value.reason}"


# --- start-up checks beyond one bad value per flag ---------------------------------------------


def _check(*argv: str) -> str:
    with pytest.raises(ConfigError) as info:
        validate(parse(list(argv), env={}))
    return str(info.value)


def _ok(*argv: str) -> Config:
    cfg = parse(list(argv), env={})
    validate(cfg)
    return cfg


def test_holdtime_bounds() -> None:
    assert _ok("--bgp-holdtime=18h12m16s").bgp_holdtime == 65536.0
    assert "--bgp-holdtime" in _check("--bgp-holdtime=18h12m16.001s")
    assert "--bgp-holdtime" in _check("--bgp-holdtime=2.999s")


@pytest.mark.parametrize("asn", ["0", "64512", "65535", "4200000000", "4294967294"])
def test_cluster_asn_accepted(asn: str) -> None:
    _ok(f"--cluster-asn={asn}")


@pytest.mark.parametrize("asn", ["1", "64511", "65536", "4199999999", "4294967295", "4294967296"])
def test_cluster_asn_refused(asn: str) -> None:
    assert _check(f"--cluster-asn={asn}").startswith("--cluster-asn: invalid cluster ASN")


@pytest.mark.parametrize(
    ("asn", "allowed"),
    [
        (1, True), (23455, True), (23456, False), (23457, True), (63999, True), (64000, False),
        (64511, False), (64512, True), (65534, True), (65535, False), (131071, False),
        (131072, True), (4199999999, True), (4200000000, True), (4294967294, True),
        (4294967295, False), (1 << 40, False), (0, False),
    ],
)  # fmt: skip
def test_peer_asn_ranges(asn: int, allowed: bool) -> None:
    argv = (IP1, f"--peer-router-asns={asn}")
    if allowed:
        _ok(*argv)
    else:
        assert (
            _check(*argv) == f'--peer-router-asns: reserved ASN number "{asn}" for global BGP peer'
        )


def test_peer_counts() -> None:
    assert "peer IPs: 2, ASNs: 1" in _check(IP2, ASN1)
    assert "--peer-router-ports" in _check(IP2, ASN2, "--peer-router-ports=179")
    assert "--peer-router-ports: port 65536 is above 65535" in _check(
        IP1, ASN1, "--peer-router-ports=65536"
    )
    _ok(IP2, ASN2, "--peer-router-ports=179,1179", "--peer-router-passwords=,cGFzcw==")


def test_peer_passwords_are_decoded(tmp_path: Path) -> None:
    cfg = _ok(IP2, ASN2, "--peer-router-passwords=cGFzcw==,")
    assert peer_passwords(cfg) == ["pass", ""]
    path = tmp_path / "pw"
    path.write_text("Zmlyc3Q=,c2Vjb25k\r\n", encoding="utf-8")
    from_file = _ok(IP2, ASN2, f"--peer-router-passwords-file={path}")
    assert peer_passwords(from_file) == ["first", "second"]
    both = _ok(
        IP1, ASN1, "--peer-router-passwords=cGFzcw==", f"--peer-router-passwords-file={path}"
    )
    assert peer_passwords(both) == ["pass"]
    assert "password 1 is not a base64" in _check(IP1, ASN1, "--peer-router-passwords=cGFzcw")
    path.write_text("cGFzcw==,,x", encoding="utf-8")
    assert _check(IP1, ASN1, f"--peer-router-passwords-file={path}").startswith(
        "--peer-router-passwords-file: password 3 is not a base64"
    )
    assert _check(f"--peer-router-passwords-file={tmp_path}/missing").startswith(
        f"--peer-router-passwords-file: cannot read {tmp_path}/missing"
    )


def test_graceful_restart_times_only_checked_when_enabled() -> None:
    _ok("--bgp-graceful-restart-time=0s", "--bgp-graceful-restart-deferral-time=19h")
    assert "must be greater than 0" in _check(GR, "--bgp-graceful-restart-time=0s")
    assert "--bgp-graceful-restart-deferral-time" in _check(
        GR, "--bgp-graceful-restart-deferral-time=0s"
    )


def test_node_port_range() -> None:
    assert config_checks.node_port_range("30000-32767") == (30000, 32767)
    assert config_checks.node_port_range("1:2") == (1, 2)
    for bad in (
        "30000",
        "30000-",
        "a-b",
        "1-1",
        "30000-70000",
        "30000--32767",
        "1-2\n",
        "\u0661-\u0662",
    ):
        assert _check(f"--service-node-port-range={bad}").startswith("--service-node-port-range:")


def test_router_id() -> None:
    _ok("--router-id=192.0.2.7")
    assert "--router-id" in _check("--router-id=2001:db8::1")


def test_cidr_families_and_count() -> None:
    _ok("--enable-ipv6", "--service-cluster-ip-range=10.96.0.0/12,fd00::/108")
    assert "IPv6 is disabled" in _check("--service-cluster-ip-range=10.96.0.0/12,fd00::/108")
    assert "IPv4 CIDR 10.96.0.0/12 given while IPv4 is disabled" in _check(
        "--enable-ipv4=false", "--enable-ipv6"
    )
    assert "got 0" in _check("--service-cluster-ip-range=")
    assert "--loadbalancer-ip-range" in _check("--loadbalancer-ip-range=fd00::/64")
    assert "both disabled" in _check("--enable-ipv4=false")


def test_checks_follow_the_enabled_controllers() -> None:
    _ok("--run-router=false", "--bgp-holdtime=1s", "--cluster-asn=1", "--overlay-type=x")
    _ok("--run-service-proxy=false", "--ipvs-sync-period=0s", "--excluded-cidrs=x")
    _ok("--run-firewall=false", "--iptables-sync-period=0s", "--service-node-port-range=x")
    _ok("--loadbalancer-sync-period=0s")


def test_metrics_enabled_like_upstream() -> None:
    assert not _ok().metrics_enabled
    assert _ok("--metrics-port=9090").metrics_enabled
    assert not _ok("--metrics-port=65535").metrics_enabled


def test_any_controller() -> None:
    assert _ok().any_controller
    off = ["--run-router=false", "--run-firewall=false", "--run-service-proxy=false"]
    assert not parse([*off, "--run-loadbalancer"], env={}).any_controller


# --- environment ------------------------------------------------------------------------------


def test_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config, "SERVICE_ACCOUNT_NAMESPACE_FILE", str(tmp_path / "absent"))
    cfg = parse([], env={})
    assert (cfg.node_name_env, cfg.pod_name, cfg.pod_namespace) == ("", "", "")
    assert cfg.cni_conf_file == "/etc/cni/net.d/10-kuberouter.conf"
    env = {
        "NODE_NAME": "node-a",
        "POD_NAME": "kube-router-x1",
        "POD_NAMESPACE": "kube-system",
        "KUBE_ROUTER_CNI_CONF_FILE": "/tmp/10-kr.conflist",
    }
    cfg = parse([], env=env)
    assert cfg.node_name_env == "node-a"
    assert cfg.pod_name == "kube-router-x1"
    assert cfg.pod_namespace == "kube-system"
    assert cfg.cni_conf_file == "/tmp/10-kr.conflist"


def test_namespace_falls_back_to_service_account_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "namespace"
    path.write_text("router-ns", encoding="utf-8")
    monkeypatch.setattr(config, "SERVICE_ACCOUNT_NAMESPACE_FILE", str(path))
    assert parse([], env={}).pod_namespace == "router-ns"
    assert parse([], env={"POD_NAMESPACE": "env-ns"}).pod_namespace == "env-ns"


def test_parse_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "from-os")
    assert parse([]).node_name_env == "from-os"


def test_config_is_frozen() -> None:
    cfg = parse([], env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run_router = False  # type: ignore[misc]


# --- generated documentation -------------------------------------------------------------------


def test_docs_flags_md_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location(
        "gen_flags_doc", ROOT / "scripts/gen_flags_doc.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render()
    assert (ROOT / "docs/flags.md").read_text(encoding="utf-8") == expected, (
        "docs/flags.md is stale: run scripts/gen_flags_doc.py"
    )
    assert expected.count("\n# ") + expected.startswith("# ") == 1
    for spec_ in FLAGS:
        assert f"`--{spec_.name}`" in expected
    for line in expected.splitlines():
        assert line.startswith("|") or len(line) <= 120

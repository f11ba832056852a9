"""The whitelist of iptables matches and targets the fake accepts, with iptables' own checks.

Each option has a canonicaliser turning what the user wrote into what ``iptables-save`` prints;
each module a ``post`` step for whole-module checks and defaults. Option order in a spec is the
order iptables-save prints them in.
"""

from __future__ import annotations

from kube_router.dataplane.iptables_values import (
    U32_MAX,
    Canon,
    Ctx,
    ModuleSpec,
    Opt,
    OptSpec,
    Post,
    RuleError,
    limit_period,
    limit_text,
    parse_address,
    parse_port,
    parse_port_range,
    parse_value_mask,
)

MULTIPORT_MAX = 15
LIMIT_BURST_DEFAULT = 5
LIMIT_BURST_MAX = 10000
SETNAME_MAX = 31
SET_DIM_MAX = 6
COMMENT_MAX = 255
LOG_PREFIX_MAX = 29
NFLOG_PREFIX_MAX = 63
LOG_LEVEL_DEFAULT = 4
NFLOG_GROUP_MAX = 65535


# --------------------------------------------------------------------------- value parsers


def _mark(args: tuple[str, ...], _ctx: Ctx) -> tuple[str, ...]:
    value, mask = parse_value_mask(args[0])
    if mask is None or mask == U32_MAX:
        return (f"0x{value:x}",)
    return (f"0x{value:x}/0x{mask:x}",)


def _range_text(rng: tuple[int, int]) -> str:
    return str(rng[0]) if rng[0] == rng[1] else f"{rng[0]}:{rng[1]}"


def _port(args: tuple[str, ...], _ctx: Ctx) -> tuple[str, ...]:
    return (_range_text(parse_port_range(args[0])),)


def _multiport(args: tuple[str, ...], _ctx: Ctx) -> tuple[str, ...]:
    texts: list[str] = []
    slots = 0
    for part in args[0].split(","):
        if ":" in part:
            texts.append(_range_text(parse_port_range(part)))
            slots += 2
        else:
            texts.append(str(parse_port(part)))
            slots += 1
    if slots > MULTIPORT_MAX:
        raise ValueError("too many ports specified")
    return (",".join(texts),)


_CT_STATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")
_ADDR_TYPES = (
    "UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST",
    "BLACKHOLE", "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE",
)  # fmt: skip


def _flag_list(allowed: tuple[str, ...], what: str) -> Canon:
    def canon(args: tuple[str, ...], _ctx: Ctx) -> tuple[str, ...]:
        given = {w.upper() for w in args[0].split(",")}
        unknown = given - set(allowed)
        if unknown or not args[0]:
            raise ValueError(f"bad {what} {args[0]!r}")
        return (",".join(s for s in allowed if s in given),)

    return canon


def _comment(args: tuple[str, ...], _ctx: Ctx) -> tuple[str, ...]:
    if len(args[0]) > COMMENT_MAX:
        raise ValueError(f"comment may not exceed {COMMENT_MAX} characters")
    return args


def _match_set(args: tuple[str, ...], ctx: Ctx) -> tuple[str, ...]:
    name, flags = args
    if len(name) > SETNAME_MAX:
        raise ValueError(f"setname `{name}' too long, max {SETNAME_MAX} characters")
    dims = flags.split(",")
    if len(dims) > SET_DIM_MAX or any(d not in ("src", "dst") for d in dims):
        raise ValueError(f"bad set flags {flags!r}")
    if ctx.set_family is not None:
        fam = ctx.set_family(name)
        if fam is None:
            raise RuleError(f"Set {name} doesn't exist.")
        if fam != ctx.family:
            shown = "IPv6" if fam == "ipv6" else "IPv4"
            raise RuleError(
                f"The protocol family of set {name} is {shown}, which is not applicable."
            )
    return args


def _limit(args: tuple[str, ...], _ctx: Ctx) -> tuple[str, ...]:
    return (limit_text(limit_period(args[0])),)


def _burst(args: tuple[str, ...], _ctx: Ctx) -> tuple[str, ...]:
    burst = int(args[0])
    if not 0 < burst <= LIMIT_BURST_MAX:
        raise ValueError(f"bad --limit-burst {args[0]}")
    return (str(burst),)


def _limit_post(opts: dict[str, Opt], _ctx: Ctx, _p: tuple[bool, str] | None) -> dict[str, Opt]:
    burst = opts.get("limit-burst")
    if burst is not None and burst.args == (str(LIMIT_BURST_DEFAULT),):
        opts = {k: v for k, v in opts.items() if k != "limit-burst"}
    return opts


def _needs_one(*names: str) -> Post:
    def post(opts: dict[str, Opt], _ctx: Ctx, _p: tuple[bool, str] | None) -> dict[str, Opt]:
        given = [n for n in names if n in opts]
        if len(given) != 1:
            raise RuleError(f"exactly one of {', '.join('--' + n for n in names)} is required")
        return opts

    return post


_ICMP_NAMES = {
    "echo-reply": "0", "pong": "0", "destination-unreachable": "3",
    "network-unreachable": "3/0", "host-unreachable": "3/1", "protocol-unreachable": "3/2",
    "port-unreachable": "3/3", "source-quench": "4", "redirect": "5", "echo-request": "8",
    "ping": "8", "time-exceeded": "11", "ttl-exceeded": "11", "parameter-problem": "12",
    "timestamp-request": "13", "timestamp-reply": "14",
}  # fmt: skip
_ICMP6_NAMES = {
    "destination-unreachable": "1", "packet-too-big": "2", "time-exceeded": "3",
    "ttl-exceeded": "3", "parameter-problem": "4", "echo-request": "128", "ping": "128",
    "echo-reply": "129", "pong": "129", "router-solicitation": "133",
    "router-advertisement": "134", "neighbour-solicitation": "135",
    "neighbor-solicitation": "135", "neighbour-advertisement": "136",
    "neighbor-advertisement": "136", "redirect": "137",
}  # fmt: skip
_BYTE_MAX = 255


def _icmp_type(names: dict[str, str]) -> Canon:
    def canon(args: tuple[str, ...], _ctx: Ctx) -> tuple[str, ...]:
        text = args[0]
        if text in names:
            return (names[text],)
        kind, sep, code = text.partition("/")
        if not kind.isdigit() or int(kind) > _BYTE_MAX:
            raise ValueError(f"Invalid ICMP type `{text}'")
        if sep and (not code.isdigit() or int(code) > _BYTE_MAX):
            raise ValueError(f"Invalid ICMP code `{text}'")
        return (f"{int(kind)}/{int(code)}" if sep else str(int(kind)),)

    return canon


_REJECT4 = {
    "icmp-net-unreachable": "icmp-net-unreachable", "net-unreach": "icmp-net-unreachable",
    "icmp-host-unreachable": "icmp-host-unreachable", "host-unreach": "icmp-host-unreachable",
    "icmp-proto-unreachable": "icmp-proto-unreachable",
    "proto-unreach": "icmp-proto-unreachable",
    "icmp-port-unreachable": "icmp-port-unreachable", "port-unreach": "icmp-port-unreachable",
    "icmp-net-prohibited": "icmp-net-prohibited", "net-prohib": "icmp-net-prohibited",
    "icmp-host-prohibited": "icmp-host-prohibited", "host-prohib": "icmp-host-prohibited",
    "icmp-admin-prohibited": "icmp-admin-prohibited", "admin-prohib": "icmp-admin-prohibited",
    "tcp-reset": "tcp-reset", "tcp-rst": "tcp-reset",
}  # fmt: skip
_REJECT6 = {
    "icmp6-no-route": "icmp6-no-route", "no-route": "icmp6-no-route",
    "icmp6-adm-prohibited": "icmp6-adm-prohibited", "adm-prohibited": "icmp6-adm-prohibited",
    "icmp6-addr-unreachable": "icmp6-addr-unreachable", "addr-unreach": "icmp6-addr-unreachable",
    "icmp6-port-unreachable": "icmp6-port-unreachable", "port-unreach": "icmp6-port-unreachable",
    "tcp-reset": "tcp-reset",
}  # fmt: skip


def _reject_with(args: tuple[str, ...], ctx: Ctx) -> tuple[str, ...]:
    table = _REJECT4 if ctx.family == "ipv4" else _REJECT6
    if args[0] not in table:
        raise ValueError(f'unknown reject type "{args[0]}"')
    return (table[args[0]],)


def _reject_post(opts: dict[str, Opt], ctx: Ctx, proto: tuple[bool, str] | None) -> dict[str, Opt]:
    how = opts.get("reject-with")
    if how is None:
        default = "icmp-port-unreachable" if ctx.family == "ipv4" else "icmp6-port-unreachable"
        return {**opts, "reject-with": Opt("reject-with", (default,))}
    if how.args[0] == "tcp-reset" and (proto is None or proto != (False, "tcp")):
        raise RuleError("REJECT --reject-with tcp-reset needs -p tcp")
    return opts


_MARK_OPTS = ("set-xmark", "set-mark", "and-mark", "or-mark", "xor-mark")


def _mark_post(opts: dict[str, Opt], _ctx: Ctx, _p: tuple[bool, str] | None) -> dict[str, Opt]:
    given = [n for n in _MARK_OPTS if n in opts]
    if not given:
        raise RuleError("MARK: One of the --set-xmark, --{and,or,xor,set}-mark options is required")
    if len(given) > 1:
        raise RuleError(f'MARK: option "--{given[1]}" cannot be used together with "--{given[0]}".')
    kind = given[0]
    value, mask = parse_value_mask(opts[kind].args[0])
    if kind in ("and-mark", "or-mark", "xor-mark") and mask is not None:
        raise RuleError(f"MARK: --{kind} takes no mask")
    if kind == "set-xmark":
        pair = (value, U32_MAX if mask is None else mask)
    elif kind == "set-mark":
        pair = (value, (U32_MAX if mask is None else mask) | value)
    elif kind == "and-mark":
        pair = (0, ~value & U32_MAX)
    elif kind == "or-mark":
        pair = (value, value)
    else:
        pair = (value, 0)
    return {"set-xmark": Opt("set-xmark", (f"0x{pair[0]:x}/0x{pair[1]:x}",))}


def _bounded(high: int, what: str) -> Canon:
    def canon(args: tuple[str, ...], _ctx: Ctx) -> tuple[str, ...]:
        value = int(args[0])
        if not 0 <= value <= high:
            raise ValueError(f"{what} {args[0]} out of range")
        return (str(value),)

    return canon


def _string(maximum: int, what: str) -> Canon:
    def canon(args: tuple[str, ...], _ctx: Ctx) -> tuple[str, ...]:
        if len(args[0]) > maximum:
            raise ValueError(f"Maximum {what} length {maximum}")
        return args

    return canon


_LOG_LEVELS = {
    "emerg": 0, "panic": 0, "alert": 1, "crit": 2, "err": 3, "error": 3,
    "warning": 4, "warn": 4, "notice": 5, "info": 6, "debug": 7,
}  # fmt: skip


def _log_level(args: tuple[str, ...], _ctx: Ctx) -> tuple[str, ...]:
    text = args[0].lower()
    level = _LOG_LEVELS.get(text, int(text) if text.isdigit() else -1)
    if not 0 <= level <= _LOG_LEVELS["debug"]:
        raise ValueError(f"log-level `{args[0]}' unknown")
    return (str(level),)


def _drop_defaults(**defaults: str) -> Post:
    def post(opts: dict[str, Opt], _ctx: Ctx, _p: tuple[bool, str] | None) -> dict[str, Opt]:
        return {k: v for k, v in opts.items() if defaults.get(k.replace("-", "_")) != v.args[0]}

    return post


def _addr_port(args: tuple[str, ...], ctx: Ctx) -> tuple[str, ...]:

    host, sep, port = args[0].rpartition(":") if ctx.family == "ipv4" else ("", "", "")
    if not sep:
        host = args[0]
    parse_address(host, ctx.family)
    if sep:
        parse_port_range(port.replace("-", ":"))
    return args


_IPVS_DIRS = ("ORIGINAL", "REPLY")
_IPVS_METHODS = ("GATE", "IPIP", "MASQ")
_IPVS_PROTOS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58}
_IPVS_PROTO_MAX = 255


def _word(allowed: tuple[str, ...], what: str) -> Canon:
    """A keyword taken in any case and printed in upper case (``--vdir``, ``--vmethod``)."""

    def canon(args: tuple[str, ...], _ctx: Ctx) -> tuple[str, ...]:
        if args[0].upper() not in allowed:
            raise ValueError(f'Bad value for "--{what}" option: "{args[0]}"')
        return (args[0].upper(),)

    return canon


def _vproto(args: tuple[str, ...], _ctx: Ctx) -> tuple[str, ...]:
    """A protocol by name or number, printed as its number."""
    text = args[0].lower()
    number = int(text) if text.isdigit() else _IPVS_PROTOS.get(text, -1)
    if not 0 <= number <= _IPVS_PROTO_MAX:
        raise ValueError(f'unknown protocol "{args[0]}" specified')
    return (str(number),)


def _vaddr(args: tuple[str, ...], ctx: Ctx) -> tuple[str, ...]:
    """``ADDR[/LEN|/MASK]``: host bits are kept, a full mask is not printed."""

    host, _, _mask = args[0].partition("/")
    net = parse_address(args[0], ctx.family)
    addr = parse_address(host, ctx.family).network_address
    if net.prefixlen == net.max_prefixlen:
        return (str(addr),)
    return (f"{addr}/{net.prefixlen}",)


def _vport(args: tuple[str, ...], _ctx: Ctx) -> tuple[str, ...]:
    port = parse_port(args[0])
    if port == 0:
        raise ValueError("port 0 (accepted by iptables, refused by the fake)")
    return (str(port),)


def _ipvs_post(opts: dict[str, Opt], _ctx: Ctx, _p: tuple[bool, str] | None) -> dict[str, Opt]:
    """Any other option implies ``--ipvs``, which iptables-save then leaves out."""
    if not opts:
        raise RuleError("IPVS: At least one option is required")
    flag = opts.get("ipvs")
    if flag is None or len(opts) == 1:
        return opts
    if flag.neg:
        raise RuleError("! --ipvs cannot be together with other options")
    return {k: v for k, v in opts.items() if k != "ipvs"}


_NAT_ONLY = ("nat",)
_NAT_FLAGS = ("random", "random-fully", "persistent")  # in iptables-save's order
_MASQ_FLAGS = ("random", "random-fully")  # MASQUERADE takes no --persistent
_L4 = frozenset({"tcp", "udp", "sctp"})
_STR = OptSpec(negatable=False, quoted=True)

MATCHES: dict[str, ModuleSpec] = {
    "comment": ModuleSpec(
        {"comment": OptSpec(negatable=False, canon=_comment, quoted=True)}, required=("comment",)
    ),
    "set": ModuleSpec({"match-set": OptSpec(nargs=2, canon=_match_set)}, required=("match-set",)),
    "mark": ModuleSpec({"mark": OptSpec(canon=_mark)}, required=("mark",)),
    "conntrack": ModuleSpec(
        {"ctstate": OptSpec(canon=_flag_list(_CT_STATES, "ctstate"))}, required=("ctstate",)
    ),
    "addrtype": ModuleSpec(
        {
            "src-type": OptSpec(canon=_flag_list(_ADDR_TYPES, "address type")),
            "dst-type": OptSpec(canon=_flag_list(_ADDR_TYPES, "address type")),
        }
    ),
    "physdev": ModuleSpec(
        {"physdev-is-in": OptSpec(nargs=0), "physdev-is-bridged": OptSpec(nargs=0)}
    ),
    "multiport": ModuleSpec(
        {n: OptSpec(canon=_multiport) for n in ("sports", "dports", "ports")},
        post=_needs_one("sports", "dports", "ports"),
        protos=_L4,
    ),
    "limit": ModuleSpec(
        {
            "limit": OptSpec(negatable=False, canon=_limit),
            "limit-burst": OptSpec(negatable=False, canon=_burst),
        },
        post=_limit_post,
    ),
    "ipvs": ModuleSpec(
        {
            "ipvs": OptSpec(nargs=0),
            "vproto": OptSpec(canon=_vproto),
            "vaddr": OptSpec(canon=_vaddr),
            "vport": OptSpec(canon=_vport),
            "vdir": OptSpec(negatable=False, canon=_word(_IPVS_DIRS, "vdir")),
            "vmethod": OptSpec(canon=_word(_IPVS_METHODS, "vmethod")),
            "vportctl": OptSpec(canon=_vport),
        },
        post=_ipvs_post,
    ),
    "icmp": ModuleSpec(
        {"icmp-type": OptSpec(canon=_icmp_type(_ICMP_NAMES))},
        family="ipv4",
        protos=frozenset({"icmp"}),
        unique=True,
    ),
    "icmp6": ModuleSpec(
        {"icmpv6-type": OptSpec(canon=_icmp_type(_ICMP6_NAMES))},
        family="ipv6",
        protos=frozenset({"ipv6-icmp"}),
        unique=True,
    ),
}
for _proto in sorted(_L4):
    MATCHES[_proto] = ModuleSpec(
        {"sport": OptSpec(canon=_port), "dport": OptSpec(canon=_port)},
        protos=frozenset({_proto}),
        unique=True,
    )

TARGETS: dict[str, ModuleSpec] = {
    "ACCEPT": ModuleSpec({}),
    "DROP": ModuleSpec({}),
    "RETURN": ModuleSpec({}),
    "REJECT": ModuleSpec(
        {"reject-with": OptSpec(negatable=False, canon=_reject_with)}, post=_reject_post
    ),
    "MARK": ModuleSpec({n: OptSpec(negatable=False) for n in _MARK_OPTS}, post=_mark_post),
    "NFLOG": ModuleSpec(
        {
            "nflog-prefix": OptSpec(
                negatable=False, canon=_string(NFLOG_PREFIX_MAX, "prefix"), quoted=True
            ),
            "nflog-group": OptSpec(negatable=False, canon=_bounded(NFLOG_GROUP_MAX, "group")),
            "nflog-threshold": OptSpec(negatable=False, canon=_bounded(U32_MAX, "threshold")),
        },
        post=_drop_defaults(nflog_group="0"),
    ),
    "LOG": ModuleSpec(
        {
            "log-prefix": OptSpec(
                negatable=False, canon=_string(LOG_PREFIX_MAX, "prefix"), quoted=True
            ),
            "log-level": OptSpec(negatable=False, canon=_log_level),
        },
        post=_drop_defaults(log_level=str(LOG_LEVEL_DEFAULT)),
    ),
    "MASQUERADE": ModuleSpec(
        {n: OptSpec(nargs=0, negatable=False) for n in _MASQ_FLAGS}, tables=_NAT_ONLY
    ),
    "SNAT": ModuleSpec(
        {
            "to-source": OptSpec(negatable=False, canon=_addr_port),
            **{n: OptSpec(nargs=0, negatable=False) for n in _NAT_FLAGS},
        },
        tables=_NAT_ONLY,
        required=("to-source",),
    ),
    "DNAT": ModuleSpec(
        {"to-destination": OptSpec(negatable=False, canon=_addr_port)},
        tables=_NAT_ONLY,
        required=("to-destination",),
    ),
}

PROTOCOLS: dict[str, str] = {
    "tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "sctp": "sctp", "132": "sctp",
    "icmp": "icmp", "1": "icmp", "ipv6-icmp": "ipv6-icmp", "icmpv6": "ipv6-icmp",
    "58": "ipv6-icmp", "all": "all", "0": "all",
}  # fmt: skip
IMPLICIT_MODULE: dict[str, str] = {
    "tcp": "tcp", "udp": "udp", "sctp": "sctp", "icmp": "icmp", "ipv6-icmp": "icmp6",
}  # fmt: skip

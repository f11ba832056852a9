"""One iptables rule: validated against the options kube-router uses, in iptables-save's form.

``parse_rule`` rejects what iptables-restore 1.8.9 rejects for the whitelisted matches and
targets (and everything outside the whitelist), and renders the rule the way ``iptables-save``
prints it back (``/32`` added, ``-m tcp`` made explicit, ``--set-mark`` as ``--set-xmark``,
default ``--reject-with`` shown, ...). Two rules are the same rule when their canonical text is
equal, which is how ``-D`` finds the rule to delete.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from kube_router.dataplane.iptables_modules import (
    IMPLICIT_MODULE,
    MATCHES,
    PROTOCOLS,
    TARGETS,
)
from kube_router.dataplane.iptables_parse import Family, quote
from kube_router.dataplane.iptables_values import (
    Ctx,
    ModuleSpec,
    Network,
    Opt,
    RuleError,
    parse_address,
)

IFNAMSIZ = 16


__all__ = ["CanonRule", "Match", "Opt", "RuleError", "parse_rule"]


@dataclass(frozen=True)
class Match:
    module: str
    opts: tuple[Opt, ...]

    def opt(self, name: str) -> Opt | None:
        for o in self.opts:
            if o.name == name:
                return o
        return None


@dataclass(frozen=True)
class CanonRule:
    """A parsed rule; ``text`` is its iptables-save form (after ``-A CHAIN ``)."""

    text: str
    src: tuple[bool, Network] | None = None
    dst: tuple[bool, Network] | None = None
    in_iface: tuple[bool, str] | None = None
    out_iface: tuple[bool, str] | None = None
    proto: tuple[bool, str] | None = None
    matches: tuple[Match, ...] = ()
    target: str | None = None
    target_opts: tuple[Opt, ...] = ()
    jump_chain: bool = False

    def target_opt(self, name: str) -> Opt | None:
        for o in self.target_opts:
            if o.name == name:
                return o
        return None

    def sets(self) -> set[str]:
        return {o.args[0] for m in self.matches if m.module == "set" for o in m.opts}


@dataclass
class _Loaded:
    name: str
    spec: ModuleSpec
    opts: dict[str, Opt] = field(default_factory=dict)


@dataclass
class _State:
    ctx: Ctx
    base: dict[str, tuple[bool, str]] = field(default_factory=dict)
    matches: list[_Loaded] = field(default_factory=list)
    target: _Loaded | None = None
    target_name: str | None = None
    jump_chain: bool = False


_BASE_OPTS = {
    "-s": "s", "--source": "s", "--src": "s",
    "-d": "d", "--destination": "d", "--dst": "d",
    "-i": "i", "--in-interface": "i",
    "-o": "o", "--out-interface": "o",
    "-p": "p", "--protocol": "p",
}  # fmt: skip
_BASE_FLAG = {"s": "-s", "d": "-d", "i": "-i", "o": "-o", "p": "-p"}


def parse_rule(
    words: list[str] | tuple[str, ...],
    family: Family,
    table: str = "filter",
    chain_exists: Callable[[str], bool] = lambda _name: False,
    set_family: Callable[[str], Family | None] | None = None,
) -> CanonRule:
    """Validate a rulespec (the words after ``-A CHAIN``) and return its canonical form."""
    st = _State(Ctx(family, table, set_family))
    i, neg = 0, False
    while i < len(words):
        word = words[i]
        if word == "!":
            if neg:
                raise RuleError("multiple consecutive ! not allowed")
            neg, i = True, i + 1
            continue
        if word in _BASE_OPTS:
            i = _take_base(st, _BASE_OPTS[word], words, i, neg)
        elif word in ("-m", "--match"):
            _no_neg(neg, word)
            _load_match(st, _arg(words, i, word))
            i += 2
        elif word in ("-j", "--jump"):
            _no_neg(neg, word)
            _load_target(st, _arg(words, i, word), chain_exists)
            i += 2
        elif word.startswith("--"):
            i = _take_option(st, words, i, neg)
        else:
            raise RuleError(f"Bad argument `{word}'")
        neg = False
    if neg:
        raise RuleError("! at the end of the rule")
    return _finish(st)


def _no_neg(neg: bool, word: str) -> None:
    if neg:
        raise RuleError(f"cannot negate {word}")


def _arg(words: list[str] | tuple[str, ...], i: int, word: str) -> str:
    if i + 1 >= len(words):
        raise RuleError(f'option "{word}" requires an argument')
    return words[i + 1]


def _take_base(st: _State, key: str, words: list[str] | tuple[str, ...], i: int, neg: bool) -> int:
    value = _arg(words, i, words[i])
    if key in st.base:
        raise RuleError(f"multiple {_BASE_FLAG[key]} flags not allowed")
    if key in ("s", "d"):
        value = str(parse_address(value, st.ctx.family))
    elif key in ("i", "o"):
        if not value or len(value) >= IFNAMSIZ:
            raise RuleError(f"interface name `{value}' must be shorter than IFNAMSIZ (15)")
    else:
        value = _protocol(value, neg)
    st.base[key] = (neg, value)
    return i + 2


def _protocol(value: str, neg: bool) -> str:
    proto = PROTOCOLS.get(value.lower())
    if proto is None:
        raise RuleError(f'unknown protocol "{value}" (not supported by the fake)')
    if neg and proto == "all":
        raise RuleError("rule would never match protocol")
    return proto


def _load_match(st: _State, name: str) -> _Loaded:
    spec = MATCHES.get(name)
    if spec is None or (spec.family is not None and spec.family != st.ctx.family):
        raise RuleError(f"Couldn't load match `{name}':No such file or directory")
    if spec.unique and any(m.name == name for m in st.matches):
        raise RuleError(f"match {name} loaded twice (backends disagree; refused by the fake)")
    loaded = _Loaded(name, spec)
    st.matches.append(loaded)
    return loaded


def _load_target(st: _State, name: str, chain_exists: Callable[[str], bool]) -> None:
    if st.target_name is not None:
        raise RuleError("multiple -j flags not allowed")
    spec = TARGETS.get(name)
    if spec is not None:
        if spec.tables is not None and st.ctx.table not in spec.tables:
            raise RuleError(f"target {name} is only valid in the {'/'.join(spec.tables)} table")
        st.target = _Loaded(name, spec)
    elif not chain_exists(name):
        raise RuleError(f"Couldn't load target `{name}':No such file or directory")
    else:
        st.jump_chain = True
    st.target_name = name


def _owner(st: _State, name: str) -> _Loaded | None:
    """The module an option belongs to: the target, else the latest match defining it."""
    if st.target is not None and name in st.target.spec.options:
        return st.target
    for loaded in reversed(st.matches):
        if name in loaded.spec.options:
            return loaded
    proto = st.base.get("p")
    implicit = IMPLICIT_MODULE.get(proto[1]) if proto is not None else None
    if implicit is not None and implicit in MATCHES and name in MATCHES[implicit].options:
        spec = MATCHES[implicit]
        if spec.family is None or spec.family == st.ctx.family:
            return _load_match(st, implicit)
    return None


def _take_option(st: _State, words: list[str] | tuple[str, ...], i: int, neg: bool) -> int:
    word = words[i]
    name = word[2:]
    owner = _owner(st, name)
    if owner is None:
        raise RuleError(f'unknown option "{word}"')
    spec = owner.spec.options[name]
    if neg and not spec.negatable:
        raise RuleError(f'{owner.name}: option "{word}" cannot be inverted.')
    if name in owner.opts:
        raise RuleError(f'{owner.name}: option "{word}" can only be used once.')
    if spec.nargs and i + spec.nargs >= len(words):
        raise RuleError(f'option "{word}" requires an argument')
    args = tuple(words[i + 1 : i + 1 + spec.nargs])
    try:
        canon = spec.canon(args, st.ctx) if spec.canon is not None else args
    except ValueError as err:
        raise RuleError(f"{owner.name}: bad value for {word}: {err}") from err
    owner.opts[name] = Opt(name, canon, neg)
    return i + 1 + spec.nargs


def _finish(st: _State) -> CanonRule:
    proto = st.base.get("p")
    matches: list[Match] = []
    for loaded in st.matches:
        opts = loaded.spec.finish(loaded.name, loaded.opts, st.ctx, proto)
        matches.append(Match(loaded.name, opts))
    target_opts: tuple[Opt, ...] = ()
    if st.target is not None:
        target_opts = st.target.spec.finish(st.target.name, st.target.opts, st.ctx, proto)
    parts: list[str] = []
    for key in ("s", "d", "i", "o", "p"):
        item = st.base.get(key)
        if item is not None and not (key == "p" and item[1] == "all"):
            parts.append(("! " if item[0] else "") + f"{_BASE_FLAG[key]} {item[1]}")
    for match in matches:
        parts.append(f"-m {match.module}")
        parts.extend(_render_opt(o, MATCHES[match.module]) for o in match.opts)
    if st.target_name is not None:
        parts.append(f"-j {st.target_name}")
        if st.target is not None:
            parts.extend(_render_opt(o, st.target.spec) for o in target_opts)
    return _build(st, " ".join(parts), tuple(matches), target_opts)


def _render_opt(opt: Opt, spec: ModuleSpec) -> str:
    quoted = spec.options[opt.name].quoted
    args = " ".join(quote(a) if quoted else a for a in opt.args)
    text = f"--{opt.name} {args}" if opt.args else f"--{opt.name}"
    return ("! " if opt.neg else "") + text


def _build(st: _State, text: str, matches: tuple[Match, ...], tops: tuple[Opt, ...]) -> CanonRule:
    def net(key: str) -> tuple[bool, Network] | None:
        item = st.base.get(key)
        return None if item is None else (item[0], ipaddress.ip_network(item[1]))

    proto = st.base.get("p")
    return CanonRule(
        text=text,
        src=net("s"),
        dst=net("d"),
        in_iface=st.base.get("i"),
        out_iface=st.base.get("o"),
        proto=None if proto is None or proto[1] == "all" else proto,
        matches=matches,
        target=st.target_name,
        target_opts=tops,
        jump_chain=st.jump_chain,
    )

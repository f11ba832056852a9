"""iptables-save / iptables-restore text: tokenizer, quoting, save parser and transaction builder.

The tokenizer follows what ``iptables-restore`` 1.8 does with a rule line: words are split on
blanks; a double quote opens a quoted run (also in the middle of a word) that may hold blanks and
ends the word when it closes; inside quotes a backslash takes the next character literally;
outside quotes a backslash is an ordinary character and single quotes mean nothing.

Quoting follows ``iptables-save``: a word made only of ``[A-Za-z0-9_-]`` is written bare, anything
else (including the empty word) inside double quotes with ``"``, ``\\`` and ``'`` escaped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Family = Literal["ipv4", "ipv6"]
FAMILIES: tuple[Family, Family] = ("ipv4", "ipv6")

# Built-in chains per table, in the order iptables-save lists them.
BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}
DEFAULT_POLICY = "ACCEPT"
NO_POLICY = "-"
_UNQUOTED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_ESCAPED = frozenset("\"\\'")


class IPTablesError(Exception):
    """Base of the iptables dataplane errors."""


class ParseError(IPTablesError):
    """Text that is not valid iptables-save / iptables-restore input."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.message = message
        self.line = line


# --------------------------------------------------------------------------- tokens


def tokenize(line: str, strict: bool = True) -> list[str]:
    """Split one restore line into words as iptables-restore does.

    An unterminated quote is refused when ``strict``; otherwise (as the real tool does) the rest
    of the line becomes the last word.
    """
    words: list[str] = []
    buf: list[str] = []
    in_quote = escaped = False
    have_word = False
    for ch in line:
        if in_quote:
            if escaped:
                buf.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_quote = False
                words.append("".join(buf))
                buf, have_word = [], False
            else:
                buf.append(ch)
        elif ch == '"':
            in_quote = have_word = True
        elif ch in " \t\n":
            if have_word:
                words.append("".join(buf))
                buf, have_word = [], False
        else:
            buf.append(ch)
            have_word = True
    if in_quote and strict:
        raise ParseError(f"unterminated quote in {line!r}")
    if have_word:
        words.append("".join(buf))
    return words


def quote(word: str) -> str:
    """One word as iptables-save writes it."""
    if word and all(ch in _UNQUOTED for ch in word):
        return word
    return '"' + "".join("\\" + ch if ch in _ESCAPED else ch for ch in word) + '"'


def join_words(words: list[str] | tuple[str, ...]) -> str:
    return " ".join(quote(w) for w in words)


# --------------------------------------------------------------------------- save model


@dataclass
class Rule:
    """A rule as text after ``-A CHAIN `` and as words."""

    spec: str
    words: tuple[str, ...]

    @classmethod
    def from_spec(cls, spec: str) -> Rule:
        return cls(spec, tuple(tokenize(spec, strict=False)))


@dataclass
class Chain:
    name: str
    policy: str | None = None  # None for a user chain
    rules: list[Rule] = field(default_factory=list)

    @property
    def builtin(self) -> bool:
        return self.policy is not None


@dataclass
class Table:
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)


def parse_save(text: str) -> dict[str, Table]:
    """Parse iptables-save output (or restore input made only of declarations and ``-A``)."""
    tables: dict[str, Table] = {}
    current: Table | None = None
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            if current is not None:
                raise ParseError("table started before COMMIT", number)
            current = tables.setdefault(line[1:], Table(line[1:]))
        elif current is None:
            raise ParseError(f"{line!r} outside a table", number)
        elif line == "COMMIT":
            current = None
        elif line.startswith(":"):
            _parse_declaration(current, line, number)
        elif line.startswith("-A "):
            _parse_append(current, line, number)
        else:
            raise ParseError(f"unexpected line {line!r}", number)
    if current is not None:
        raise ParseError(f"table {current.name} has no COMMIT")
    return tables


def _parse_declaration(table: Table, line: str, number: int) -> None:
    parts = line[1:].split()
    if len(parts) not in (2, 3) or not parts[0]:
        raise ParseError(f"bad chain declaration {line!r}", number)
    name, policy = parts[0], parts[1]
    table.chains[name] = Chain(name, None if policy == NO_POLICY else policy)


def _parse_append(table: Table, line: str, number: int) -> None:
    rest = line[3:]
    name, _, spec = rest.partition(" ")
    chain = table.chains.get(name)
    if chain is None:
        raise ParseError(f"rule for undeclared chain {name!r}", number)
    try:
        chain.rules.append(Rule.from_spec(spec.strip()))
    except ParseError as err:
        raise ParseError(err.message, number) from err


def render_save(table: Table) -> str:
    """A table as iptables-save prints it: built-ins first, then user chains sorted."""
    builtins = [c for c in table.chains.values() if c.builtin]
    order = {n: i for i, n in enumerate(BUILTIN_CHAINS.get(table.name, ()))}
    builtins.sort(key=lambda c: order.get(c.name, len(order)))
    users = sorted((c for c in table.chains.values() if not c.builtin), key=lambda c: c.name)
    chains = builtins + users
    lines = [f"*{table.name}"]
    lines += [f":{c.name} {c.policy or NO_POLICY} [0:0]" for c in chains]
    lines += [f"-A {c.name} {r.spec}".rstrip() for c in chains for r in c.rules]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- transactions


class Transaction:
    """Restore input for one table, applied with ``--noflush`` in one go.

    Lines keep the order of the calls (declare a chain before jumping to it, as the real tool
    checks jump targets line by line). They are collected in a list and joined once, so 100k
    rules stay cheap.
    """

    def __init__(self, table: str = "filter") -> None:
        self.table = table
        self._lines: list[str] = []

    def declare(self, chain: str, policy: str = NO_POLICY) -> Transaction:
        """``:CHAIN - [0:0]``: create the chain, or flush it if it exists (with --noflush).

        For a built-in chain pass its policy (``ACCEPT``/``DROP``); it is not flushed.
        """
        self._lines.append(f":{chain} {policy} [0:0]")
        return self

    def append(self, chain: str, rule: str) -> Transaction:
        self._lines.append(f"-A {chain} {rule}")
        return self

    def insert(self, chain: str, rule: str, pos: int = 1) -> Transaction:
        self._lines.append(f"-I {chain} {pos} {rule}")
        return self

    def delete(self, chain: str, rule: str) -> Transaction:
        self._lines.append(f"-D {chain} {rule}")
        return self

    def flush(self, chain: str) -> Transaction:
        self._lines.append(f"-F {chain}")
        return self

    def delete_chain(self, chain: str) -> Transaction:
        self._lines.append(f"-X {chain}")
        return self

    def __len__(self) -> int:
        return len(self._lines)

    def render(self) -> str:
        """``*table``, the lines in the order they were added, ``COMMIT``."""
        return "\n".join([f"*{self.table}", *self._lines, "COMMIT", ""])

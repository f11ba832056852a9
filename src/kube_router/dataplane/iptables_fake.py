"""An in-memory iptables with the semantics of ``iptables-restore --noflush`` (1.8.9).

Strict: it refuses what the real tool refuses (missing chains, jumps to missing chains, deleting a
chain still referenced or not empty, deleting a rule that is not there, options outside the
whitelist, bad addresses, sets that do not exist) and each ``*table ... COMMIT`` block is atomic.
It stores rules in iptables-save's canonical form, so ``save()`` prints what the real tool would.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kube_router.dataplane.exec import CommandError
from kube_router.dataplane.iptables_modules import TARGETS
from kube_router.dataplane.iptables_parse import (
    BUILTIN_CHAINS,
    DEFAULT_POLICY,
    NO_POLICY,
    Family,
    IPTablesError,
    ParseError,
    Transaction,
    tokenize,
)
from kube_router.dataplane.iptables_rule import CanonRule, RuleError, parse_rule

CHAIN_NAME_MAX = 28
POLICIES = ("ACCEPT", "DROP")
EXIT_FAILED = 1


class FakeRestoreError(IPTablesError):
    """One restore line the fake refused (wrapped into CommandError for callers)."""


@dataclass
class _Chain:
    policy: str | None  # None for user chains
    rules: list[CanonRule] = field(default_factory=list)


@dataclass
class _Table:
    name: str
    chains: dict[str, _Chain]
    jump_refs: Counter[str] = field(default_factory=Counter)
    set_refs: Counter[str] = field(default_factory=Counter)

    @classmethod
    def empty(cls, name: str) -> _Table:
        return cls(name, {c: _Chain(DEFAULT_POLICY) for c in BUILTIN_CHAINS[name]})

    def copy(self) -> _Table:
        """Cheap copy: chains are copied when a transaction first touches them."""
        return _Table(self.name, dict(self.chains), Counter(self.jump_refs), Counter(self.set_refs))


class _Work:
    """One ``*table ... COMMIT`` block being applied to a copy of the table."""

    def __init__(self, fake: FakeIPTables, table: _Table) -> None:
        self.fake = fake
        self.table = table.copy()
        self.touched: set[str] = set()

    def chain(self, name: str) -> _Chain:
        chain = self.table.chains.get(name)
        if chain is None:
            raise FakeRestoreError("No chain/target/match by that name.")
        if name not in self.touched:
            chain = _Chain(chain.policy, list(chain.rules))
            self.table.chains[name] = chain
            self.touched.add(name)
        return chain

    def user_chain_exists(self, name: str) -> bool:
        chain = self.table.chains.get(name)
        return chain is not None and chain.policy is None

    def parse(self, words: list[str]) -> CanonRule:
        return parse_rule(
            words, self.fake.family, self.table.name, self.user_chain_exists, self.fake.set_family
        )

    def add_refs(self, rule: CanonRule, delta: int) -> None:
        if rule.jump_chain and rule.target is not None:
            self.table.jump_refs[rule.target] += delta
        for name in rule.sets():
            self.table.set_refs[name] += delta

    def flush(self, name: str) -> None:
        chain = self.chain(name)
        for rule in chain.rules:
            self.add_refs(rule, -1)
        chain.rules.clear()

    def declare(self, line: str) -> None:
        parts = line[1:].split()
        if len(parts) not in (2, 3):
            raise FakeRestoreError(f"bad chain declaration {line!r}")
        name, policy = parts[0], parts[1]
        existing = self.table.chains.get(name)
        if existing is not None and existing.policy is not None:
            if policy != NO_POLICY:
                self.set_policy(name, policy)
            return
        if policy != NO_POLICY:
            raise FakeRestoreError(f"Can't set policy `{policy}' on `{name}': Bad built-in chain")
        if existing is not None:
            self.flush(name)
        else:
            self.new_chain(name)

    def new_chain(self, name: str) -> None:
        if len(name) > CHAIN_NAME_MAX:
            raise FakeRestoreError(f"Invalid chain name `{name}' ({CHAIN_NAME_MAX} chars max)")
        if name in TARGETS or name.startswith(("-", "!")):
            raise FakeRestoreError("chain name may not clash with target name")
        if name in self.table.chains:
            raise FakeRestoreError("Chain already exists.")
        self.table.chains[name] = _Chain(None)
        self.touched.add(name)

    def set_policy(self, name: str, policy: str) -> None:
        chain = self.chain(name)
        if chain.policy is None:
            raise FakeRestoreError(f"Can't set policy `{policy}' on `{name}': Bad built-in chain")
        if policy not in POLICIES:
            raise FakeRestoreError(f"Bad policy name `{policy}'")
        chain.policy = policy

    def check_loops(self) -> None:
        """Refuse a jump loop reachable from a built-in chain (the kernel says ELOOP)."""
        graph = {
            name: {r.target for r in chain.rules if r.jump_chain and r.target is not None}
            for name, chain in self.table.chains.items()
        }
        done: set[str] = set()
        for root in (n for n, c in self.table.chains.items() if c.policy is not None):
            stack: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
            path = {root}
            while stack:
                node, todo = stack[-1]
                if not todo:
                    stack.pop()
                    path.discard(node)
                    done.add(node)
                    continue
                nxt = todo.pop()
                if nxt in path:
                    raise FakeRestoreError(f"RULE_APPEND failed (Too many links): loop via {nxt}")
                if nxt not in done:
                    path.add(nxt)
                    stack.append((nxt, sorted(graph.get(nxt, ()))))

    def command(self, words: list[str]) -> None:
        op, args = words[0], words[1:]
        handler = _COMMANDS.get(op)
        if handler is None:
            raise FakeRestoreError(f"command {op!r} is not supported by the fake")
        if not args and op not in ("-F",):
            raise FakeRestoreError(f'option "{op}" requires an argument')
        handler(self, args)


def _append(work: _Work, args: list[str]) -> None:
    chain = work.chain(args[0])
    rule = work.parse(args[1:])
    chain.rules.append(rule)
    work.add_refs(rule, 1)


def _insert(work: _Work, args: list[str]) -> None:
    chain = work.chain(args[0])
    pos, spec = (int(args[1]), args[2:]) if len(args) > 1 and args[1].isdigit() else (1, args[1:])
    if pos < 1:
        raise FakeRestoreError("Invalid rule number")
    if pos > len(chain.rules) + 1:
        raise FakeRestoreError("Index of insertion too big.")
    rule = work.parse(spec)
    chain.rules.insert(pos - 1, rule)
    work.add_refs(rule, 1)


def _delete(work: _Work, args: list[str]) -> None:
    chain = work.chain(args[0])
    if len(args) == 2 and args[1].isdigit():
        index = int(args[1]) - 1
        if not 0 <= index < len(chain.rules):
            raise FakeRestoreError("Index of deletion too big.")
    else:
        text = work.parse(args[1:]).text
        index = next((i for i, r in enumerate(chain.rules) if r.text == text), -1)
        if index < 0:
            raise FakeRestoreError("Bad rule (does a matching rule exist in that chain?).")
    work.add_refs(chain.rules.pop(index), -1)


def _flush(work: _Work, args: list[str]) -> None:
    for name in args[:1] or list(work.table.chains):
        work.flush(name)


def _delete_chain(work: _Work, args: list[str]) -> None:
    name = args[0]
    chain = work.table.chains.get(name)
    if chain is None or chain.policy is not None:
        raise FakeRestoreError("No chain/target/match by that name.")
    if chain.rules or work.table.jump_refs[name] > 0:
        raise FakeRestoreError(f"CHAIN_DEL failed (Device or resource busy): chain {name}")
    del work.table.chains[name]
    work.table.jump_refs.pop(name, None)


def _new(work: _Work, args: list[str]) -> None:
    work.new_chain(args[0])


def _policy(work: _Work, args: list[str]) -> None:
    if len(args) != 2:
        raise FakeRestoreError("-P needs a chain and a policy")
    work.set_policy(args[0], args[1])


_COMMANDS: dict[str, Callable[[_Work, list[str]], None]] = {
    "-A": _append, "--append": _append, "-I": _insert, "--insert": _insert,
    "-D": _delete, "--delete": _delete, "-F": _flush, "--flush": _flush,
    "-X": _delete_chain, "--delete-chain": _delete_chain, "-N": _new, "--new-chain": _new,
    "-P": _policy, "--policy": _policy,
}  # fmt: skip


class FakeIPTables:
    """In-memory iptables for one family; same interface as RealIPTables."""

    def __init__(
        self,
        family: Family = "ipv4",
        set_exists: Callable[[str], bool] | None = None,
        set_family: Callable[[str], Family | None] | None = None,
    ) -> None:
        self.family: Family = family
        if set_family is None and set_exists is not None:
            exists = set_exists

            def set_family(name: str) -> Family | None:
                return self.family if exists(name) else None

        self.set_family = set_family
        self._tables: dict[str, _Table] = {}

    @property
    def program(self) -> str:
        return "iptables-restore" if self.family == "ipv4" else "ip6tables-restore"

    # -- the port ------------------------------------------------------------------------
    async def save(self, table: str = "filter") -> str:
        return self.dump(table)

    async def restore(self, tx: Transaction | str) -> None:
        self.apply(tx if isinstance(tx, str) else tx.render())

    # -- synchronous helpers for tests and the tracer -------------------------------------
    def apply(self, text: str) -> None:
        """Apply restore input; on a refused line raise CommandError, leaving state unchanged."""
        work: _Work | None = None
        lines = text.split("\n")
        for number, raw in enumerate(lines, start=1):
            try:
                work = self._apply_line(work, raw.strip())
            except (IPTablesError, ValueError) as err:
                raise self._error(number, str(err), text) from err
        if work is not None:
            raise self._error(len(lines), f"COMMIT expected at line {len(lines)}", text)

    def _apply_line(self, work: _Work | None, line: str) -> _Work | None:
        if not line or line.startswith("#"):
            return work
        if line.startswith("*"):
            if work is not None:
                raise FakeRestoreError("table started before COMMIT")
            return _Work(self, self._table(line[1:]))
        if work is None:
            raise FakeRestoreError(f"no table specified for {line!r}")
        if line == "COMMIT":
            work.check_loops()
            self._tables[work.table.name] = work.table
            return None
        if line.startswith(":"):
            work.declare(line)
        else:
            work.command(tokenize(line))
        return work

    def _error(self, number: int, message: str, text: str) -> CommandError:
        stderr = f"{self.program}: line {number} failed: {message}\n"
        return CommandError([self.program, "--noflush"], EXIT_FAILED, "", stderr, text)

    def _table(self, name: str) -> _Table:
        if name not in BUILTIN_CHAINS:
            raise ParseError(f"table '{name}' does not exist")
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = _Table.empty(name)
        return table

    def dump(self, table: str = "filter") -> str:
        """The table as ``iptables-save -t TABLE`` prints it (without comments)."""
        t = self._table(table)
        order = BUILTIN_CHAINS[table]
        names = [n for n in order if n in t.chains]
        names += sorted(n for n, c in t.chains.items() if c.policy is None)
        lines = [f"*{table}"]
        lines += [f":{n} {t.chains[n].policy or NO_POLICY} [0:0]" for n in names]
        lines += [f"-A {n} {r.text}".rstrip() for n in names for r in t.chains[n].rules]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def chain_names(self, table: str = "filter") -> list[str]:
        return list(self._table(table).chains)

    def policy(self, chain: str, table: str = "filter") -> str | None:
        return self._table(table).chains[chain].policy

    def rules(self, chain: str, table: str = "filter") -> list[CanonRule]:
        return list(self._table(table).chains[chain].rules)

    def has_chain(self, chain: str, table: str = "filter") -> bool:
        return chain in self._table(table).chains

    def referenced_sets(self) -> set[str]:
        """Sets some rule matches on (an ipset fake must refuse to destroy them)."""
        return {n for t in self._tables.values() for n, c in t.set_refs.items() if c > 0}

    def iter_rules(self, table: str = "filter") -> Iterator[tuple[str, int, CanonRule]]:
        for name, chain in self._table(table).chains.items():
            for index, rule in enumerate(chain.rules):
                yield name, index, rule


__all__ = ["FakeIPTables", "FakeRestoreError", "RuleError"]

"""The ipset dataplane port: set model, ``ipset save`` parser, restore transactions, real adapter.

Every change is one ``ipset restore -exist`` input built by :class:`Transaction`. Bulk
replacement goes through a temporary set and ``swap`` (as upstream kube-router does), so the real
set is never seen empty or half-filled. ``ipset restore`` itself is *not* atomic: see
``ipset_fake`` for exactly what survives a failing line.

We own what carries our name: only sets whose name (without the ``inet6:`` prefix) starts with one
of :data:`OWNED_PREFIXES` are ever read into state, written or destroyed.

``list:set`` sets hold other sets by name. The kernel gives them no family, hashsize or maxelem
(ipset refuses those options), only ``size`` (at least 4, and no longer a limit: the kernel's
lists grow past it). Our :class:`SetSpec` still carries a family for a list:set, for our own
bookkeeping only: it is never written, and read back from the name (``inet6:`` prefix -> inet6).
Like every set of ours they are created with ``timeout 0`` (as upstream creates all its sets;
``ipset save`` prints it back, with ``timeout 0`` on each member line, which the parser drops).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from kube_router.dataplane.exec import CommandError, Executor
from kube_router.dataplane.ipset_entry import (
    HASH_IP_PORT,
    INET,
    INET6,
    LIST_SET,
    MAX_NAME_LEN,
    NOMATCH,
    PORT_PROTOCOLS,
    PROTO_TEXT,
    InvalidEntryError,
    IPSetError,
    normalize_entry,
)
from kube_router.dataplane.ipset_model import (
    DEFAULT_HASHSIZE,
    DEFAULT_LIST_SIZE,
    DEFAULT_MAXELEM,
    DEFAULT_TIMEOUT,
    IPV6_PREFIX,
    MIN_LIST_SIZE,
    OWNED_PREFIXES,
    TMP_PREFIX,
    InvalidNameError,
    IPSetParseError,
    IPSetRestoreError,
    NotOwnedError,
    SetNotFoundError,
    SetSpec,
    SetState,
    base_name,
    check_name,
    family_name,
    list_family,
    owned,
    tmp_name,
)

log = logging.getLogger(__name__)

IPSET = "ipset"

__all__ = [
    "DEFAULT_HASHSIZE",
    "DEFAULT_LIST_SIZE",
    "DEFAULT_MAXELEM",
    "DEFAULT_TIMEOUT",
    "INET",
    "INET6",
    "IPV6_PREFIX",
    "LIST_SET",
    "MAX_NAME_LEN",
    "MIN_LIST_SIZE",
    "OWNED_PREFIXES",
    "TMP_PREFIX",
    "IPSetError",
    "IPSetParseError",
    "IPSetRestoreError",
    "InvalidEntryError",
    "InvalidNameError",
    "NotOwnedError",
    "RealIPSets",
    "SetNotFoundError",
    "SetSpec",
    "SetState",
    "Transaction",
    "base_name",
    "check_name",
    "family_name",
    "list_family",
    "normalize_entry",
    "owned",
    "parse_save",
    "tmp_name",
]


# --- ipset save parser -------------------------------------------------------------------------

_PROTO_NUMBER = {**PORT_PROTOCOLS, **{str(n): n for n in PORT_PROTOCOLS.values()}}
# create-line options that take a value and that we record or drop
_VALUE_OPTIONS = {
    "family",
    "hashsize",
    "maxelem",
    "timeout",
    "size",
    "initval",
    "bucketsize",
    "netmask",
}


def _parse_create(tokens: list[str], lineno: int) -> SetSpec:
    if len(tokens) < 3:
        raise IPSetParseError(f"line {lineno}: short create line")
    name, set_type, opts = tokens[1], tokens[2], tokens[3:]
    values: dict[str, str] = {}
    i = 0
    while i < len(opts):
        if opts[i] in _VALUE_OPTIONS and i + 1 < len(opts):
            values[opts[i]] = opts[i + 1]  # initval and bucketsize are read and dropped
            i += 2
        else:
            i += 1  # flags such as counters, comment, forceadd: not modelled
    timeout = int(values["timeout"]) if "timeout" in values else None
    try:
        if set_type == LIST_SET:
            size = int(values.get("size", DEFAULT_LIST_SIZE))
            return SetSpec(name, set_type, list_family(name), timeout=timeout, size=size)
        return SetSpec(
            name,
            set_type,
            values.get("family", INET),
            int(values.get("maxelem", DEFAULT_MAXELEM)),
            int(values.get("hashsize", DEFAULT_HASHSIZE)),
            timeout,
        )
    except ValueError as err:
        raise IPSetParseError(f"line {lineno}: {err}") from err


def _save_entry(set_type: str, parts: list[str]) -> str:
    """Canonical entry from an ``add`` line split as ``add NAME ENTRY [REST]`` (already
    canonical except protocol names)."""
    entry = parts[2]
    if set_type == HASH_IP_PORT:
        addr, _, proto_port = entry.rpartition(",")
        proto, _, port = proto_port.partition(":")
        number = _PROTO_NUMBER.get(proto)
        if number is not None:
            entry = f"{addr},{PROTO_TEXT.get(number, str(number))}:{port}"
    if len(parts) > 3 and NOMATCH in parts[3].split():
        return f"{entry} {NOMATCH}"
    return entry


def parse_save(text: str, prefixes: Sequence[str] | None = OWNED_PREFIXES) -> dict[str, SetState]:
    """Sets (spec + canonical entries) from ``ipset save`` output, ours only unless
    ``prefixes`` is None. ``initval``/``bucketsize`` are dropped, entry timeouts ignored.

    A list:set's entries are its member set names (their order is lost) and its family, which
    the kernel does not keep, is taken from its name: ``inet6:`` prefix -> inet6, else inet.

    ``ipset save`` prints each set's ``add`` lines right after its ``create`` line; that run
    (hundreds of thousands of lines at scale) is taken in one sweep."""
    specs: dict[str, SetSpec] = {}
    entries: dict[str, set[str]] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        tokens = lines[i].split()
        i += 1
        if not tokens:
            continue
        cmd = tokens[0]
        if len(tokens) < 3 or cmd not in ("create", "add"):
            raise IPSetParseError(f"line {i}: unexpected {lines[i - 1]!r}")
        name = tokens[1]
        ours = prefixes is None or owned(name, prefixes)
        if cmd == "add":
            if ours:
                raise IPSetParseError(f"line {i}: add to {name} before its create line")
            continue
        end = _run_end(lines, i, f"add {name} ")
        if ours:
            specs[name] = _parse_create(tokens, i)
            entries[name] = _run_entries(specs[name].type, lines[i:end], len(name) + 5)
        i = end
    return {name: SetState(spec, frozenset(entries[name])) for name, spec in specs.items()}


def _run_end(lines: list[str], start: int, prefix: str) -> int:
    end = start
    while end < len(lines) and lines[end].startswith(prefix):
        end += 1
    return end


def _run_entries(set_type: str, run: list[str], skip: int) -> set[str]:
    """The entries of a set's ``add`` lines; ``skip`` is the length of ``add NAME ``."""
    if set_type != HASH_IP_PORT:
        plain = {line[skip:] for line in run}
        if not any(" " in entry for entry in plain):
            return plain
    return {_save_entry(set_type, line.split(None, 3)) for line in run}


def render_save(states: Mapping[str, SetState]) -> str:
    """``ipset save``-shaped text for states (tests and the fake's dump)."""
    lines: list[str] = []
    for name, state in states.items():
        spec = state.spec
        timeout = f" timeout {spec.timeout}" if spec.timeout is not None else ""
        if spec.type == LIST_SET:
            lines.append(f"create {name} {spec.type} size {spec.size}{timeout}")
        else:
            lines.append(
                f"create {name} {spec.type} family {spec.family} hashsize {spec.hashsize} "
                f"maxelem {spec.maxelem}{timeout}"
            )
        lines += [f"add {name} {entry}" for entry in sorted(state.entries)]
    return "".join(f"{line}\n" for line in lines)


# --- transactions ------------------------------------------------------------------------------


class Transaction:
    """One ``ipset restore -exist`` input, built up line by line.

    Entries are normalised (and invalid ones refused) when the set's spec is known: passed as a
    SetSpec, or created or replaced earlier in this transaction.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: set[str] = set()  # every set this transaction touches
        self._specs: dict[str, SetSpec] = {}

    def __len__(self) -> int:
        return len(self.lines)

    def render(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)

    def _touch(self, name: str) -> str:
        self.names.add(check_name(name))
        return name

    def _entry(self, target: SetSpec | str, entry: str) -> tuple[str, str]:
        spec = target if isinstance(target, SetSpec) else self._specs.get(target)
        name = target.name if isinstance(target, SetSpec) else target
        self._touch(name)
        if spec is None:
            if not entry.strip() or "\n" in entry:
                raise InvalidEntryError(f"empty or multi-line entry {entry!r}")
            return name, entry.strip()
        return name, normalize_entry(spec.type, spec.family, entry)

    def create(self, spec: SetSpec) -> Transaction:
        self._specs[self._touch(spec.name)] = spec
        self.lines.append(f"create {spec.name} {spec.options()}")
        return self

    def add(self, target: SetSpec | str, entry: str) -> Transaction:
        name, canonical = self._entry(target, entry)
        self.lines.append(f"add {name} {canonical}")
        return self

    def delete(self, target: SetSpec | str, entry: str) -> Transaction:
        name, canonical = self._entry(target, entry)
        # "del" takes no nomatch flag (ipset: unknown argument); the element identity suffices
        self.lines.append(f"del {name} {canonical.removesuffix(' ' + NOMATCH)}")
        return self

    def flush(self, name: str) -> Transaction:
        self.lines.append(f"flush {self._touch(name)}")
        return self

    def destroy(self, name: str) -> Transaction:
        self.lines.append(f"destroy {self._touch(name)}")
        self._specs.pop(name, None)
        return self

    def swap(self, a: str, b: str) -> Transaction:
        self.lines.append(f"swap {self._touch(a)} {self._touch(b)}")
        spec_a, spec_b = self._specs.pop(a, None), self._specs.pop(b, None)
        if spec_a is not None:
            self._specs[b] = spec_a.renamed(b)
        if spec_b is not None:
            self._specs[a] = spec_b.renamed(a)
        return self

    def fill(self, spec: SetSpec, entries: Iterable[str]) -> Transaction:
        """Create a set that does not exist yet and add ``entries`` (normalised, deduplicated).

        Only for a set absent from the kernel: an existing one would keep its old members."""
        return self.create(spec)._add_all(spec, entries)

    def _add_all(self, spec: SetSpec, entries: Iterable[str]) -> Transaction:
        """``add`` lines for ``entries`` (normalised once each, deduplicated, sorted)."""
        prefix = f"add {spec.name} "
        canonical = {normalize_entry(spec.type, spec.family, e) for e in entries}
        self.lines.extend(prefix + e for e in sorted(canonical))
        return self

    def replace(self, spec: SetSpec, entries: Iterable[str]) -> Transaction:
        """Make ``spec.name`` hold exactly ``entries``, never visibly empty or partial: fill the
        temporary set, create the real one (no-op when it exists), swap, drop the temporary."""
        tmp = spec.renamed(tmp_name(spec))
        self.create(tmp).flush(tmp.name)  # flush: a TMP- set left by a crash may hold entries
        self._add_all(tmp, entries).create(spec).swap(tmp.name, spec.name).destroy(tmp.name)
        return self


# --- the real adapter --------------------------------------------------------------------------


def check_owned(names: Iterable[str]) -> None:
    foreign = sorted(n for n in names if not owned(n))
    if foreign:
        raise NotOwnedError(f"refusing to touch sets that are not ours: {', '.join(foreign)}")


def destroy_transaction(names: Iterable[str]) -> Transaction:
    """Destroy the named sets, all of which must be ours (missing ones are fine)."""
    names = list(names)
    check_owned(names)
    tx = Transaction()
    for name in names:
        tx.destroy(name)
    return tx


class RealIPSets:
    """The kernel's ipsets through the ``ipset`` tool."""

    def __init__(self, executor: Executor, binary: str = IPSET) -> None:
        self.executor = executor
        self.binary = binary

    async def save(self, prefixes: Sequence[str] | None = None) -> dict[str, SetState]:
        """Our sets (``prefixes`` default :data:`OWNED_PREFIXES`) as they are in the kernel."""
        try:
            result = await self.executor.run([self.binary, "save"])
        except CommandError as err:
            raise IPSetError(f"ipset save failed: {err}") from err
        return parse_save(result.stdout, prefixes or OWNED_PREFIXES)

    async def restore(self, tx: Transaction) -> None:
        """Apply a transaction; only sets we own may appear in it."""
        check_owned(tx.names)
        if tx.lines:
            await self.restore_unchecked(tx.render())

    async def restore_unchecked(self, text: str) -> None:
        """Feed ``text`` to ``ipset restore -exist`` as is (no ownership check: tests, tools)."""
        try:
            await self.executor.run([self.binary, "restore", "-exist"], input=text)
        except CommandError as err:
            raise IPSetRestoreError(err.line, err.stderr.strip(), err.returncode, text) from err

    async def destroy_owned(self, names: Iterable[str]) -> None:
        """Destroy the named sets, all of which must be ours (missing ones are fine)."""
        await self.restore(destroy_transaction(names))

    async def test(self, name: str, value: str) -> bool:
        """``ipset test``: whether the kernel counts ``value`` as a member (nomatch honoured).
        For a list:set, ``value`` is a set name: whether that set is one of its members."""
        res = await self.executor.run([self.binary, "test", name, value], check=False)
        if res.returncode == 0:
            return True
        if "is NOT in set" in res.stderr:
            return False
        if "does not exist" in res.stderr:
            raise SetNotFoundError(name)
        raise IPSetError(f"ipset test {name} {value}: {res.stderr.strip()}")

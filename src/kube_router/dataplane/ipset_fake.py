"""A strict in-memory ipset that runs ``ipset restore -exist`` input as ipset 7.17 does.

``ipset restore`` is not atomic, and not even "everything before the failing line". What the
real tool does, and this fake copies (checked against the kernel by tests/privileged):

* ``create``/``destroy``/``flush``/``swap`` lines are applied one by one.
* Consecutive ``add`` (or ``del``) lines for the same set are aggregated into one netlink
  message of at most a page (4096 bytes; an element needs 24..52 bytes, so 77..167 lines per
  message; a longer set name makes the header bigger). A message is sent when the next line
  cannot join it (another command or set, or the page is full) or at the end of the input.
* An error the tool finds itself (a line it cannot parse, an element invalid for the set's type
  or family, a set name that does not exist for ``add``/``del``, a name over 31 characters)
  aborts the restore and **drops the unsent message**: up to 166 earlier add/del lines that
  looked accepted are lost, while every earlier message stays applied.
* An error the kernel finds (element already added or not there without ``-exist``, hash full,
  ``/0`` in hash:net, 0.0.0.0 in hash:ip, a swap of mismatching types, a referenced destroy, a
  create clashing with an existing set) keeps every element of the message before the failing
  one and stops there.
* ``-exist`` quirks: ``create`` of an existing set with a *different family* but the same type,
  maxelem and timeout is a silent no-op (the kernel does not compare the family); a different
  type, maxelem or timeout presence fails; hashsize is ignored. ``destroy`` of a missing set is
  silent; ``flush`` of one fails. Re-adding an element with ``-exist`` updates its ``nomatch``.
* A CIDR or range in an IPv4 hash:ip adds every address (partially, until the set is full);
  in an IPv6 hash:ip only ``/128`` is accepted. A range in hash:net becomes CIDR blocks.
* Some messages name no line: unknown arguments (``nomatch`` on hash:ip, exit 2) and bad ports.

``list:set`` (members are other sets, by name) as the kernel keeps it:

* Its adds and dels are aggregated into messages like any other (an element is the member's
  name: 24 bytes for a 5-character name, 48 for 30 characters, so 167 or 83 lines a message).
  A member name over 31 characters is the tool's error; the rest are the kernel's, found when
  the message is sent: a member that does not exist ("Set to be added/deleted/tested as element
  does not exist.", for ``del`` too and even with ``-exist``), a member that is itself a list:set
  ("Sets with list:set type cannot be added to the set.", for ``del`` too).
* A member is referenced while it is in a list: destroying it fails ("in use by a kernel
  component", as does destroying every set at once). The reference goes when the member is
  deleted from the list or the list is flushed or destroyed; it stays with the *name* across a
  ``swap`` (the kernel swaps reference counts with the names), so a pool replaced through a
  TMP- set and ``swap`` stays referenced and the TMP- set can be destroyed.
* Create options are ``size`` and ``timeout`` only (family, hashsize, maxelem: unknown argument,
  exit 2); size is raised to at least 4 and is no limit (the kernel's lists grow past it);
  ``create -exist`` compares size and timeout. Re-adding a member with ``-exist`` is a no-op,
  without it "already added"; lists swap with lists only.
* A packet matches a list:set when one of its members (in order) matches it; members of the
  other family, or with more dimensions than the match gives, do not match (``contains``).
  ``test`` asks, as ``ipset test`` does, whether a set *name* is a member.

Not modelled (FakeUnsupportedError): host names (ipset resolves them), octal IPv4 forms,
protocols other than tcp/udp/sctp/udplite with ports, element timeouts other than 0, set types
other than hash:ip, hash:net, hash:ip,port and list:set, list:set ``before``/``after``
positions, create flags such as counters or comment, and the small overshoot of maxelem the
kernel allows when a huge range races its hash resize.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from kube_router.dataplane.ipset import (
    DEFAULT_HASHSIZE,
    DEFAULT_MAXELEM,
    MAX_NAME_LEN,
    MIN_LIST_SIZE,
    OWNED_PREFIXES,
    IPSetRestoreError,
    SetNotFoundError,
    SetState,
    Transaction,
    check_owned,
    destroy_transaction,
    owned,
)
from kube_router.dataplane.ipset_entry import (
    FAMILIES,
    HASH_IP_PORT,
    HASH_NET,
    HOST_BITS,
    LIST_SET,
    SET_TYPES,
    EntryError,
    FakeUnsupportedError,
    ParsedElement,
    name_too_long,
    parse_addr,
    parse_element,
)
from kube_router.dataplane.ipset_fake_set import FakeSet, value_family, value_key

PAGE_SIZE = 4096  # libipset's message buffer: getpagesize()
NLMSGERR_ROOM = 20  # libipset keeps room for the kernel's error reply
MSG_FIXED = 16 + 4 + 8 + 8 + 4  # nlmsghdr, nfgenmsg, protocol, lineno, ADT nest header
MIN_HASHSIZE = 64
USAGE_RC = 2
EXIST_FLAGS = ("-exist", "--exist", "-!")
ADT = ("add", "del")
NOT_MODELLED = ("rename", "test", "list", "save", "restore", "help", "version")
KNOWN_TYPES = (  # real ipset types the fake does not model
    "bitmap:ip",
    "bitmap:ip,mac",
    "bitmap:port",
    "hash:mac",
    "hash:net,net",
    "hash:net,port",
    "hash:ip,port,ip",
    "hash:ip,port,net",
    "hash:ip,mark",
    "hash:net,port,net",
    "hash:net,iface",
)
IGNORED_CREATE = ("initval", "bucketsize")
HASH_CREATE_OPTIONS = ("family", "hashsize", "maxelem", "timeout", *IGNORED_CREATE)
LIST_CREATE_OPTIONS = ("size", "timeout")
UNMODELLED_CREATE = ("counters", "comment", "forceadd", "skbinfo", "netmask")
NUMBER_OPTIONS = ("hashsize", "maxelem", "timeout", "size")

MSG_NO_SET = "The set with the given name does not exist"
MSG_CREATE_CLASH = "Set cannot be created: set with the same name already exists"
MSG_IN_USE = "Set cannot be destroyed: it is in use by a kernel component"
MSG_NO_MEMBER = "Set to be added/deleted/tested as element does not exist."
MSG_LOOP = "Sets with list:set type cannot be added to the set."
MSG_ADDED = "Element cannot be added to the set: it's already added"
MSG_NOT_ADDED = "Element cannot be deleted from the set: it's not added"


class _Fail(Exception):
    """Internal: the restore stops here."""

    def __init__(self, line: int | None, reason: str, rc: int = 1) -> None:
        super().__init__(reason)
        self.line, self.reason, self.rc = line, reason, rc


@dataclass
class _Message:
    """add/del lines aggregated into one netlink message, not yet sent."""

    cmd: str
    name: str
    exist: bool
    size: int
    items: list[tuple[int, ParsedElement]] = field(default_factory=list)


def _header_size(name: str) -> int:
    return MSG_FIXED + (4 + len(name) + 1 + 3) // 4 * 4


def _usage(msg: str) -> _Fail:
    return _Fail(None, msg, USAGE_RC)


class _Restore:
    """One run of ``ipset restore`` over a text."""

    def __init__(self, fake: FakeIPSets, exist: bool) -> None:
        self.fake = fake
        self.sets = fake.sets
        self.exist = exist
        self.pending: _Message | None = None

    def run(self, text: str) -> None:
        for lineno, raw in enumerate(text.splitlines(), 1):
            tokens = raw.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            exist = self.exist or any(t in EXIST_FLAGS for t in tokens)
            tokens = [t for t in tokens if t not in EXIST_FLAGS]
            try:
                self._line(lineno, tokens, exist)
            except EntryError as err:
                self.pending = None  # the unsent message is lost
                raise _Fail(lineno if err.with_line else None, err.reason, err.returncode) from err
            except _Fail:
                self.pending = None
                raise
        self.commit()

    def _line(self, lineno: int, tokens: list[str], exist: bool) -> None:
        cmd = tokens[0]
        if cmd == "COMMIT":
            self.commit()
        elif cmd in ADT:
            self._adt(lineno, cmd, tokens, exist)
        elif cmd in ("create", "destroy", "flush", "swap"):
            self._check_args(lineno, cmd, tokens)
            self.commit()
            getattr(self, f"_{cmd}")(lineno, tokens, exist)
        elif cmd in NOT_MODELLED:
            raise FakeUnsupportedError(f"line {lineno}: {cmd} is not modelled")
        else:
            raise _usage(f"No command specified: unknown argument {cmd}")

    def _check_args(self, lineno: int, cmd: str, tokens: list[str]) -> None:
        needed = {"create": 3, "swap": 3}.get(cmd, 1)
        if len(tokens) < needed:
            raise _usage(f"Missing second mandatory argument to command {cmd}")
        for name in tokens[1:3] if cmd == "swap" else tokens[1:2]:
            if len(name) > MAX_NAME_LEN:
                raise name_too_long(name)
        if cmd == "create":
            self._create_spec(lineno, tokens)

    # --- add / del: aggregation ---------------------------------------------------------------

    def _adt(self, lineno: int, cmd: str, tokens: list[str], exist: bool) -> None:
        if len(tokens) < 3:
            raise _usage(f"Missing second mandatory argument to command {cmd}")
        name = tokens[1]
        if len(name) > MAX_NAME_LEN:
            raise name_too_long(name)
        target = self.sets.get(name)
        if target is None:
            raise _Fail(lineno, MSG_NO_SET)
        element = parse_element(target.type, target.family, tokens[2:], adding=cmd == "add")
        msg = self.pending
        if msg is None or msg.cmd != cmd or msg.name != name:
            self.commit()
            msg = None
        elif msg.size + element.wire_size + NLMSGERR_ROOM > PAGE_SIZE:
            self.commit()  # the page is full: send it, start a new message with this line
            msg = None
        if msg is None:
            msg = self.pending = _Message(cmd, name, exist, _header_size(name))
        msg.items.append((lineno, element))
        msg.size += element.wire_size

    def commit(self) -> None:
        """Send the pending message: the kernel applies elements until the first failing one."""
        msg, self.pending = self.pending, None
        if msg is None:
            return
        target = self.sets[msg.name]
        for lineno, element in msg.items:
            reason = self._apply(target, msg.cmd, element, msg.exist)
            if reason is not None:
                raise _Fail(lineno, reason)

    def _apply(self, target: FakeSet, cmd: str, element: ParsedElement, exist: bool) -> str | None:
        if element.kernel_error:
            return element.kernel_error
        if element.timeout and target.timeout is None:
            return "Timeout cannot be used: set was created without timeout support"
        if target.type == LIST_SET:
            return self._apply_member(target, cmd, element.member, exist)
        for key in element.keys:
            if cmd == "del":
                if key in target.members:
                    target.remove(key)
                elif not exist:
                    return MSG_NOT_ADDED
            elif key in target.members:
                if not exist:
                    return MSG_ADDED
                target.members[key] = element.nomatch
            elif len(target.members) >= target.maxelem:
                return "Hash is full, cannot add more elements"
            else:
                target.put(key, element.nomatch)
        return None

    def _apply_member(self, target: FakeSet, cmd: str, name: str, exist: bool) -> str | None:
        """One list:set element, in the kernel's order of checks (list_set_uadt)."""
        member = self.sets.get(name)
        if member is None:
            return MSG_NO_MEMBER
        if member.type == LIST_SET:
            return MSG_LOOP
        if name in target.names:
            if cmd == "add":
                return None if exist else MSG_ADDED
            target.names.remove(name)
            self.fake.release(name)
        elif cmd == "del":
            return None if exist else MSG_NOT_ADDED
        else:
            target.names.append(name)
            self.fake.refs[name] = self.fake.refs.get(name, 0) + 1
        return None

    # --- the other commands (each applied at once) -------------------------------------------

    def _create_spec(self, lineno: int, tokens: list[str]) -> FakeSet:
        set_type, opts = tokens[2], tokens[3:]
        if set_type not in SET_TYPES:
            if set_type in KNOWN_TYPES:
                raise FakeUnsupportedError(f"line {lineno}: type {set_type} is not modelled")
            raise _Fail(lineno, f"Syntax error: typename '{set_type}' is unknown")
        new = FakeSet(set_type, FAMILIES[0], DEFAULT_MAXELEM, DEFAULT_HASHSIZE, None)
        allowed = LIST_CREATE_OPTIONS if set_type == LIST_SET else HASH_CREATE_OPTIONS
        for i in range(0, len(opts), 2):
            opt, value = opts[i], opts[i + 1] if i + 1 < len(opts) else None
            if opt not in allowed:
                if opt in UNMODELLED_CREATE:
                    raise FakeUnsupportedError(f"line {lineno}: create option {opt}")
                raise _usage(f"Unknown argument: `{opt}'")
            if value is None:
                raise _usage(f"Missing mandatory argument of option `{opt}'")
            if opt == "family":
                if value not in FAMILIES:
                    raise _Fail(lineno, f"Syntax error: unknown inet family {value}")
                new.family = value
            elif opt in NUMBER_OPTIONS:
                if not value.isdigit():
                    raise _Fail(lineno, f"Syntax error: '{value}' is invalid as number")
                setattr(new, opt, int(value))
        if new.maxelem == 0 or new.timeout not in (None, 0):
            raise FakeUnsupportedError(f"line {lineno}: maxelem 0 / non-zero timeout")
        new.hashsize = max(MIN_HASHSIZE, 1 << (new.hashsize - 1).bit_length())
        new.size = max(MIN_LIST_SIZE, new.size)
        return new

    def _create(self, lineno: int, tokens: list[str], exist: bool) -> None:
        new = self._create_spec(lineno, tokens)
        old = self.sets.get(tokens[1])
        if old is None:
            self.sets[tokens[1]] = new
            return
        if not (exist and old.create_key() == new.create_key()):
            raise _Fail(lineno, MSG_CREATE_CLASH)

    def _destroy(self, lineno: int, tokens: list[str], exist: bool) -> None:
        names = tokens[1:2] or list(self.sets)
        if any(self.fake.referenced(n) for n in names if n in self.sets):
            raise _Fail(lineno, MSG_IN_USE)
        for name in names:
            if name in self.sets:
                self.fake.release_members(self.sets.pop(name))
            elif not exist:
                raise _Fail(lineno, MSG_NO_SET)

    def _flush(self, lineno: int, tokens: list[str], exist: bool) -> None:
        names = tokens[1:2] or list(self.sets)
        for name in names:
            if name not in self.sets:
                raise _Fail(lineno, MSG_NO_SET)
            self.fake.release_members(self.sets[name])
            self.sets[name].clear()

    def _swap(self, lineno: int, tokens: list[str], exist: bool) -> None:
        a, b = tokens[1], tokens[2]
        if a not in self.sets:
            raise _Fail(lineno, MSG_NO_SET)
        if b not in self.sets:
            raise _Fail(lineno, "Sets cannot be swapped: the second set does not exist")
        sa, sb = self.sets[a], self.sets[b]
        if (sa.type, sa.family) != (sb.type, sb.family):
            raise _Fail(lineno, "The sets cannot be swapped: their type does not match")
        self.sets[a], self.sets[b] = sb, sa


def _never(_: str) -> bool:
    return False


class FakeIPSets:
    """The ipset port in memory, with the real tool's semantics (see the module docstring).

    ``is_referenced(name)`` stands in for iptables rules using a set (references follow the
    name across ``swap``, as in the kernel); ``refs`` counts the list:sets holding each set.
    """

    def __init__(self, is_referenced: Callable[[str], bool] | None = None) -> None:
        self.sets: dict[str, FakeSet] = {}
        self.is_referenced = is_referenced or _never
        self.refs: dict[str, int] = {}  # set name -> list:set memberships (by name, as swapped)

    def referenced(self, name: str) -> bool:
        """Whether destroying ``name`` fails: a rule or a list:set refers to it."""
        return self.refs.get(name, 0) > 0 or self.is_referenced(name)

    def release(self, name: str) -> None:
        """One list:set membership of ``name`` ended."""
        self.refs[name] -= 1
        if not self.refs[name]:
            del self.refs[name]

    def release_members(self, target: FakeSet) -> None:
        """A list:set is flushed or destroyed: its members are no longer referenced by it."""
        for name in target.names:
            self.release(name)

    def apply(self, text: str, exist: bool = True) -> None:
        """Run ``ipset restore [-exist]`` over ``text``; IPSetRestoreError as the tool fails."""
        try:
            _Restore(self, exist).run(text)
        except _Fail as err:
            raise IPSetRestoreError(err.line, err.reason, err.rc, text) from err

    def state(self, prefixes: Sequence[str] | None = None) -> dict[str, SetState]:
        """Every set (or those matching ``prefixes``) with canonical entries."""
        return {
            name: s.state(name)
            for name, s in self.sets.items()
            if prefixes is None or owned(name, prefixes)
        }

    async def save(self, prefixes: Sequence[str] | None = None) -> dict[str, SetState]:
        return self.state(prefixes or OWNED_PREFIXES)

    async def restore(self, tx: Transaction) -> None:
        check_owned(tx.names)
        if tx.lines:
            self.apply(tx.render())

    async def restore_unchecked(self, text: str) -> None:
        self.apply(text)

    async def destroy_owned(self, names: Iterable[str]) -> None:
        await self.restore(destroy_transaction(names))

    async def test(self, name: str, value: str) -> bool:
        """``ipset test``: membership of ``value``; for a list:set, whether the set named
        ``value`` is a member (a name that is no set is simply not one)."""
        target = self.sets.get(name)
        if target is not None and target.type == LIST_SET:
            return value in target.names
        return self.contains(name, value)

    def contains(self, name: str, value: str, direction: str = "src") -> bool:
        """Whether a packet field ``value`` matches set ``name`` as the kernel decides:
        hash:net takes the longest matching prefix and a ``nomatch`` entry there excludes;
        hash:ip,port values are ``ip,proto:port``; a list:set matches when a member does."""
        target = self.sets.get(name)
        if target is None:
            raise SetNotFoundError(name)
        dims = 2 if target.type == HASH_IP_PORT else 1
        parts = direction.split(",")
        if target.type == LIST_SET and all(p in ("src", "dst") for p in parts):
            return any(self._member_matches(m, value, parts) for m in target.names)
        if len(parts) not in (1, dims) or any(p not in ("src", "dst") for p in parts):
            raise ValueError(f"bad direction {direction!r} for {target.type}")
        if target.type == HASH_IP_PORT:
            key = value_key(target, value)
            return key in target.members
        addr = parse_addr(value, target.family)
        host = HOST_BITS[target.family]
        if target.type != HASH_NET:
            return (addr, host, 0, 0) in target.members
        for cidr in sorted(target.cidrs, reverse=True):
            net = addr & ~((1 << (host - cidr)) - 1)
            nomatch = target.members.get((net, cidr, 0, 0))
            if nomatch is not None:
                return not nomatch
        return False

    def _member_matches(self, name: str, value: str, parts: list[str]) -> bool:
        """One member's answer inside a list:set (list_set_ktest asks each in turn): a member of
        the other family, or with more dimensions than the match has flags, answers no."""
        member = self.sets[name]
        dims = 2 if member.type == HASH_IP_PORT else 1
        fields = value.split(",")
        if len(parts) < dims or len(fields) < dims or value_family(fields[0]) != member.family:
            return False
        return self.contains(name, ",".join(fields[:dims]), ",".join(parts[:dims]))

"""The iptables dataplane port: ``save`` a table, ``restore`` one transaction with ``--noflush``.

``RealIPTables`` runs ``iptables-<backend>-save``/``-restore`` (``ip6tables-...`` for IPv6)
through the Executor; ``FakeIPTables`` (iptables_fake) has the same interface and semantics.
``detect_backend`` picks ``nft`` or ``legacy`` as the iptables-wrapper of upstream's image does.
"""

from __future__ import annotations

import re
from typing import Literal, Protocol

from kube_router.dataplane.exec import CommandError, Executor
from kube_router.dataplane.iptables_fake import FakeIPTables
from kube_router.dataplane.iptables_parse import (
    FAMILIES,
    Family,
    IPTablesError,
    ParseError,
    Transaction,
    parse_save,
)

Backend = Literal["nft", "legacy"]
BACKENDS: tuple[Backend, Backend] = ("nft", "legacy")
WAIT_SECONDS = 5

# The chains kubelet (1.17+) creates in the mangle table of the backend it uses.
_KUBELET_CHAINS = re.compile(r"^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY)", re.MULTILINE)


class UnknownFamilyError(IPTablesError):
    """A family other than ipv4/ipv6."""


class IPTables(Protocol):
    """What controllers need from iptables (one family)."""

    family: Family

    async def save(self, table: str = "filter") -> str: ...

    async def restore(self, tx: Transaction | str) -> None: ...


def tool(family: Family, backend: Backend, kind: Literal["save", "restore"]) -> str:
    """``iptables-nft-save``, ``ip6tables-legacy-restore``, ..."""
    if family not in ("ipv4", "ipv6"):
        raise UnknownFamilyError(f"unknown family {family!r}")
    prefix = "iptables" if family == "ipv4" else "ip6tables"
    return f"{prefix}-{backend}-{kind}"


class RealIPTables:
    """The kernel's iptables through the ``*-save``/``*-restore`` tools of one backend."""

    def __init__(self, executor: Executor, family: Family, backend: Backend) -> None:
        self.executor = executor
        self.family: Family = family
        self.backend: Backend = backend

    async def save(self, table: str = "filter") -> str:
        result = await self.executor.run([tool(self.family, self.backend, "save"), "-t", table])
        return result.stdout

    async def restore(self, tx: Transaction | str) -> None:
        """Apply one transaction atomically (``--noflush``, waiting for the xtables lock).

        1.8.9's restore accepts ``--noflush``, ``-w SECS`` and ``-T TABLE`` on both backends;
        the table is also named in the text, so ``-T`` is passed only for a Transaction.
        """
        text = tx if isinstance(tx, str) else tx.render()
        argv = [tool(self.family, self.backend, "restore"), "--noflush", "-w", str(WAIT_SECONDS)]
        if isinstance(tx, Transaction):
            argv += ["-T", tx.table]
        await self.executor.run(argv, input=text)


def has_kubelet_chains(save_output: str) -> bool:
    return _KUBELET_CHAINS.search(save_output) is not None


async def _save_quietly(executor: Executor, argv: list[str]) -> str:
    """Output of a save command, or "" when it fails (detection is best effort)."""
    try:
        return (await executor.run(argv)).stdout
    except CommandError:
        return ""


async def detect_backend(executor: Executor) -> Backend:
    """``nft`` or ``legacy``, decided as upstream's image (iptables-wrappers c6b9b2d) does.

    Kubelet's canary chains in the nft mangle table (IPv4, then IPv6) mean nft; otherwise the
    same chains anywhere in the legacy tables (a full save: ``-t mangle`` would create the
    legacy table) mean legacy; otherwise nft. Errors are ignored. That revision no longer
    compares rule counts (the older shell wrapper did).
    """
    for family in FAMILIES:
        out = await _save_quietly(executor, [tool(family, "nft", "save"), "-t", "mangle"])
        if has_kubelet_chains(out):
            return "nft"
    for family in FAMILIES:
        out = await _save_quietly(executor, [tool(family, "legacy", "save")])
        if has_kubelet_chains(out):
            return "legacy"
    return "nft"


__all__ = [
    "BACKENDS",
    "Backend",
    "FakeIPTables",
    "IPTables",
    "IPTablesError",
    "ParseError",
    "RealIPTables",
    "Transaction",
    "detect_backend",
    "has_kubelet_chains",
    "parse_save",
    "tool",
]

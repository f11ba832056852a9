"""RealIPTables argv and backend detection, against a scripted executor."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from kube_router.dataplane.exec import CommandError, Executor, Result
from kube_router.dataplane.iptables import (
    RealIPTables,
    UnknownFamilyError,
    detect_backend,
    tool,
)
from kube_router.dataplane.iptables_parse import Family, Transaction

HINT = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"
CANARY = "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"
PLAIN = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n"


class ScriptedExecutor(Executor):
    """Answers by argv[0]; a missing answer fails like a missing tool."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__()
        self.answers = answers
        self.calls: list[tuple[list[str], str | None]] = []

    async def run(
        self, argv: Sequence[str], input: str | None = None, check: bool = True
    ) -> Result:
        self.calls.append((list(argv), input))
        if argv[0] not in self.answers:
            raise CommandError(list(argv), 1, "", "not here", input)
        return Result(self.answers[argv[0]], "", 0)


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ({}, "nft"),  # nothing answers: nft
        ({"iptables-nft-save": HINT}, "nft"),
        ({"ip6tables-nft-save": CANARY}, "nft"),
        ({"iptables-legacy-save": HINT}, "legacy"),
        ({"ip6tables-legacy-save": CANARY}, "legacy"),
        ({"iptables-nft-save": HINT, "iptables-legacy-save": HINT}, "nft"),  # nft first
        ({"iptables-legacy-save": PLAIN * 50, "iptables-nft-save": PLAIN}, "nft"),  # no counting
        ({"iptables-legacy-save": "# :KUBE-IPTABLES-HINT - [0:0]\n"}, "nft"),  # start of line only
    ],
)
async def test_detect_backend_like_iptables_wrapper(answers: dict[str, str], expected: str) -> None:
    executor = ScriptedExecutor(answers)
    assert await detect_backend(executor) == expected


async def test_detect_backend_asks_nft_for_mangle_only_and_legacy_for_everything() -> None:
    executor = ScriptedExecutor({})
    await detect_backend(executor)
    assert [argv for argv, _ in executor.calls] == [
        ["iptables-nft-save", "-t", "mangle"],
        ["ip6tables-nft-save", "-t", "mangle"],
        ["iptables-legacy-save"],
        ["ip6tables-legacy-save"],
    ]


@pytest.mark.parametrize(
    ("family", "backend", "save", "restore"),
    [
        ("ipv4", "nft", "iptables-nft-save", "iptables-nft-restore"),
        ("ipv4", "legacy", "iptables-legacy-save", "iptables-legacy-restore"),
        ("ipv6", "nft", "ip6tables-nft-save", "ip6tables-nft-restore"),
        ("ipv6", "legacy", "ip6tables-legacy-save", "ip6tables-legacy-restore"),
    ],
)
async def test_real_adapter_commands(family: Family, backend: str, save: str, restore: str) -> None:
    executor = ScriptedExecutor({save: PLAIN, restore: ""})
    ipt = RealIPTables(executor, family, "nft" if backend == "nft" else "legacy")
    assert await ipt.save("filter") == PLAIN
    tx = Transaction("filter").declare("KUBE-X")
    await ipt.restore(tx)
    assert executor.calls == [
        ([save, "-t", "filter"], None),
        ([restore, "--noflush", "-w", "5", "-T", "filter"], tx.render()),
    ]


def test_tool_rejects_unknown_family() -> None:
    with pytest.raises(UnknownFamilyError, match="unknown family"):
        tool("ipv5", "nft", "save")  # type: ignore[arg-type]

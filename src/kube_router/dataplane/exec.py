"""The one place the agent runs external commands (iptables-restore, ipset, ...).

Every failure raises CommandError carrying argv, exit status, stdout, stderr and the input the
command was fed; for ``*-restore`` input it points at the line the tool rejected.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
_CONTEXT_LINES = 2

# How the restore tools name the line they choke on:
#   iptables-restore: "iptables-restore: line 7 failed", "Error occurred at line: 7"
#   ipset restore:    "ipset v7.17: Error in line 3: ..."
_LINE_PATTERNS = (
    re.compile(r"line:? (\d+) failed"),
    re.compile(r"Error occurred at line: (\d+)"),
    re.compile(r"Error in line (\d+)"),
)


def failing_line(stderr: str) -> int | None:
    """The 1-based input line a restore tool reported as failing, if it said."""
    for pattern in _LINE_PATTERNS:
        m = pattern.search(stderr)
        if m:
            return int(m.group(1))
    return None


@dataclass
class CommandError(Exception):
    """A command failed (non-zero exit, timeout, or could not be started)."""

    argv: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    input: str | None = None

    @property
    def line(self) -> int | None:
        return failing_line(self.stderr)

    def __str__(self) -> str:
        msg = f"{' '.join(self.argv)}: exit {self.returncode}: {self.stderr.strip()}"
        n = self.line
        if n is not None and self.input is not None:
            lines = self.input.splitlines()
            lo, hi = max(0, n - 1 - _CONTEXT_LINES), min(len(lines), n + _CONTEXT_LINES)
            around = [f"{'>' if i + 1 == n else ' '}{i + 1:6d}  {lines[i]}" for i in range(lo, hi)]
            msg += "\ninput around the failing line:\n" + "\n".join(around)
        return msg


@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str
    returncode: int


class Executor:
    """Runs commands, optionally behind a prefix (``ip netns exec NS`` in tests)."""

    def __init__(self, prefix: Sequence[str] = (), timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.prefix = list(prefix)
        self.timeout = timeout

    @classmethod
    def in_netns(cls, netns: str) -> Executor:
        return cls(["ip", "netns", "exec", netns])

    async def run(
        self, argv: Sequence[str], input: str | None = None, check: bool = True
    ) -> Result:
        """Run ``argv``; raise CommandError on failure when ``check``."""
        full = [*self.prefix, *argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *full,
                stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as err:
            raise CommandError(list(argv), None, "", str(err), input) from err
        try:
            out, err_out = await asyncio.wait_for(
                proc.communicate(input.encode() if input is not None else None), self.timeout
            )
        except TimeoutError as err:
            proc.kill()
            await proc.wait()
            raise CommandError(
                list(argv), None, "", f"timed out after {self.timeout:g}s", input
            ) from err
        result = Result(
            out.decode(errors="replace"),
            err_out.decode(errors="replace"),
            proc.returncode if proc.returncode is not None else -1,
        )
        if check and result.returncode != 0:
            raise CommandError(list(argv), result.returncode, result.stdout, result.stderr, input)
        log.debug("ran %s (exit %d)", " ".join(argv), result.returncode)
        return result

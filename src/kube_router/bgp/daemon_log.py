"""``LogTail``: gobgpd's log file followed into the agent's log (used by ``bgp/daemon.py``).

gobgpd writes JSON lines (``{"level":"info","msg":"...","Topic":"Peer","Key":"10.0.0.2"}``) to
a file; each becomes one record of the given logger: warning, error, fatal and panic at
WARNING, everything else at DEBUG. The last lines are kept for error messages (a gobgpd that
exits at start says why there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from pathlib import Path
from typing import IO, Final

POLL_S: Final = 0.2
KEEP_LINES: Final = 8
_LOUD: Final = frozenset({"warning", "warn", "error", "fatal", "panic"})
_SKIP_FIELDS: Final = frozenset({"level", "msg", "time"})


def format_line(line: str) -> tuple[int, str]:
    """A gobgpd log line → (logging level, text)."""
    try:
        record = json.loads(line)
    except ValueError:
        return logging.DEBUG, line
    if not isinstance(record, dict):
        return logging.DEBUG, line
    level = str(record.get("level", "")).lower()
    extra = " ".join(f"{k}={v}" for k, v in record.items() if k not in _SKIP_FIELDS)
    text = f"{record.get('msg', '')} {extra}".strip()
    return (logging.WARNING if level in _LOUD else logging.DEBUG), text


class LogTail:
    def __init__(self, path: Path, logger: logging.Logger) -> None:
        self.path = path
        self._log = logger
        self._task: asyncio.Task[None] | None = None
        self._file: IO[str] | None = None
        self._partial = ""
        self._last: deque[str] = deque(maxlen=KEEP_LINES)

    def last_lines(self) -> str:
        self.read()
        return " | ".join(self._last) or "(gobgpd wrote nothing)"

    def truncate(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.write_bytes(b"")

    def start(self, from_end: bool) -> None:
        self.stop()
        self.path.touch(exist_ok=True)
        self._file = open(self.path, encoding="utf-8", errors="replace")  # noqa: SIM115
        if from_end:
            self._file.seek(0, 2)
        self._task = asyncio.create_task(self._follow(), name="gobgpd-log")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._file is not None:
            self.read()
            self._file.close()
            self._file = None

    def read(self) -> None:
        """Log every complete line written since the last read."""
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            if self.path.stat().st_size < self._file.tell():
                self._file.seek(0)  # truncated by a new start
        chunk = self._partial + self._file.read()
        lines = chunk.split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                level, text = format_line(line)
                self._last.append(text)
                self._log.log(level, "gobgpd: %s", text)

    async def _follow(self) -> None:
        while True:
            self.read()
            await asyncio.sleep(POLL_S)

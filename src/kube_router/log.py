"""Logging set up the way klog logs: ``I1125 18:25:17.123456    1234 file.py:123] message``.

``-v`` (klog verbosity) maps onto the standard ``logging`` levels: INFO at ``-v 0``, DEBUG from
``-v 1``. Code that wants klog's finer ``V(n)`` levels asks :func:`enabled`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

_SEVERITY = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E"}
_FATAL = "F"
_PID_WIDTH = 7  # klog pads the process id to 7 columns

_state = {"verbosity": 0}


class KlogFormatter(logging.Formatter):
    """Format records with klog's header: severity, date, time, pid, file and line."""

    def format(self, record: logging.LogRecord) -> str:
        severity = _SEVERITY.get(record.levelno, _FATAL if record.levelno > logging.ERROR else "I")
        local = time.localtime(record.created)
        micros = int((record.created - int(record.created)) * 1_000_000)
        header = (
            f"{severity}{time.strftime('%m%d %H:%M:%S', local)}.{micros:06d} "
            f"{record.process or 0:{_PID_WIDTH}d} {record.filename}:{record.lineno}] "
        )
        text = header + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


class _KlogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler :func:`setup` installs so that a second call replaces it."""


def setup(verbosity: int, stream: TextIO | None = None) -> None:
    """Send all logs to ``stream`` (stderr) in klog's format at the level ``verbosity`` gives."""
    _state["verbosity"] = verbosity
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _KlogHandler)]:
        root.removeHandler(handler)
    handler = _KlogHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(KlogFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)


def verbosity() -> int:
    """The ``-v`` level given to :func:`setup`."""
    return _state["verbosity"]


def enabled(level: int) -> bool:
    """Whether klog's ``V(level)`` logs are on (``-v`` at least ``level``)."""
    return _state["verbosity"] >= level

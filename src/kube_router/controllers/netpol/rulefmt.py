"""Marks, comments and rule-text helpers shared by the network policy compilers.

Rules are iptables-restore rulespecs: the text that follows ``-A CHAIN``. Comments are written in
double quotes, with control characters (and quotes and backslashes, which would end the quoted
word early) removed, and clamped to 120 bytes as upstream does.
"""

from __future__ import annotations

import unicodedata
from typing import Final

# Marks (``--set-xmark``/``--mark`` masks) and the NFLOG group, as upstream.
MARK_ALLOWED: Final = 0x10000  # a policy (or the default chain) allowed the packet
MARK_NETPOL_OK: Final = 0x20000  # the packet went through a pod firewall chain and passed
NFLOG_GROUP: Final = 100
NFLOG_LIMIT: Final = "10/minute"
NFLOG_BURST: Final = 10

MAX_COMMENT_BYTES: Final = 120

ALLOWED: Final = f"{MARK_ALLOWED:#x}/{MARK_ALLOWED:#x}"
NETPOL_OK: Final = f"{MARK_NETPOL_OK:#x}/{MARK_NETPOL_OK:#x}"


def clamp_comment(text: str) -> str:
    """Drop control characters, quotes and backslashes; keep at most 120 bytes of UTF-8."""
    kept = "".join(ch for ch in text if unicodedata.category(ch) != "Cc" and ch not in ('"', "\\"))
    raw = kept.encode()
    if len(raw) <= MAX_COMMENT_BYTES:
        return kept
    return raw[:MAX_COMMENT_BYTES].decode(errors="ignore")


def comment(text: str) -> str:
    """``-m comment --comment "<text>"`` with the text cleaned and clamped."""
    return f'-m comment --comment "{clamp_comment(text)}"'


def id_comment(namespace: str, name: str, kind: str) -> str:
    """The comment match for ``<ns>/<name> <kind>`` (identity first: a clamp cuts the kind)."""
    return comment(f"{namespace}/{name} {kind}")


def join(*parts: str) -> str:
    """Join non-empty rule fragments with single spaces."""
    return " ".join(part for part in parts if part)

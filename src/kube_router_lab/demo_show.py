"""What ``make demo`` prints: plain-text sections built from what the cluster reports.

Pure functions over plain values, so they can be tested without a cluster:

- :func:`section` (a titled, indented block), :func:`nodes_table` (name, namespace, address,
  pod CIDRs, pods), :func:`per_node` (a command's output under each node's name, e.g. the
  ``gobgp neighbor`` table or ``ip route show proto 17``);
- :func:`matrix` (who reached whom: ``ok``/``FAIL`` cells, ``-`` on the diagonal) and
  :func:`matrix_ok` (whether every off-diagonal cell is ``ok``);
- :func:`service_lines` (the Service, its endpoints and which pods answered on its cluster IP,
  or why it is not proxied).

Nothing here reads passwords: the BGP section is the CLI's neighbour table, which has none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

INDENT = "  "
OK = "ok"
FAIL = "FAIL"
SELF = "-"


@dataclass(frozen=True)
class NodeRow:
    """A node as the demo lists it."""

    name: str
    netns: str
    ip: str
    pod_cidrs: tuple[str, ...]
    pods: tuple[str, ...]


def section(title: str, lines: Sequence[str]) -> str:
    """``title`` then ``lines`` indented, then a blank line."""
    body = [f"{INDENT}{line}" if line else "" for line in lines]
    return "\n".join([title, *body]) + "\n\n"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def nodes_table(nodes: Sequence[NodeRow]) -> list[str]:
    """One line per node under a header."""
    rows = [("NODE", "NETNS", "IP", "POD CIDRS", "PODS")]
    rows += [
        (n.name, n.netns, n.ip, ",".join(n.pod_cidrs), " ".join(n.pods) or "(none)") for n in nodes
    ]
    return _table(rows)


def per_node(outputs: Mapping[str, str], empty: str = "(nothing)") -> list[str]:
    """Each node's name, then its command output indented (``empty`` when it had none)."""
    lines: list[str] = []
    for name, text in outputs.items():
        body = [line.rstrip() for line in text.strip("\n").splitlines()] or [empty]
        lines += [f"{name}:", *(f"{INDENT}{line}" for line in body)]
    return lines


def matrix(names: Sequence[str], results: Mapping[tuple[str, str], bool]) -> list[str]:
    """Rows are sources, columns destinations; ``results[(src, dst)]`` for every src != dst."""
    header = ["FROM \\ TO", *names]
    rows = [header]
    for src in names:
        cells = [SELF if src == dst else (OK if results[(src, dst)] else FAIL) for dst in names]
        rows.append([src, *cells])
    return _table(rows)


def matrix_ok(results: Mapping[tuple[str, str], bool]) -> bool:
    return bool(results) and all(results.values())


def service_lines(
    name: str,
    cluster_ip: str,
    port: int,
    endpoints: Sequence[str],
    answers: Mapping[str, str | None] | None,
) -> list[str]:
    """The Service and, when proxied, which backend answered each client (``answers``: client
    pod -> answering pod or None); ``answers`` None: not proxied on this kernel."""
    lines = [
        f"Service {name}  ClusterIP {cluster_ip}:{port}/TCP",
        f"EndpointSlice: {len(endpoints)} endpoints ({', '.join(endpoints)})",
    ]
    if answers is None:
        return [
            *lines,
            "not proxied: this kernel has no IPVS (ip_vs), so the service proxy does not run",
        ]
    lines.append(f"{cluster_ip}:{port} from each pod (answered by):")
    lines += [f"{INDENT}{src} -> {dst or FAIL}" for src, dst in answers.items()]
    return lines

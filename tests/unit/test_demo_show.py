"""What `make demo` prints, from plain values (the e2e test runs the real thing)."""

from __future__ import annotations

import pytest

from kube_router_lab import demo, demo_show


@pytest.mark.parametrize(
    ("results", "row_a", "ok"),
    [
        ({("a", "b"): True, ("b", "a"): True}, "ok", True),
        ({("a", "b"): False, ("b", "a"): True}, "FAIL", False),
        ({}, None, False),
    ],
    ids=["all-ok", "one-fails", "nothing-probed"],
)
def test_matrix(results: dict[tuple[str, str], bool], row_a: str | None, ok: bool) -> None:
    if row_a is not None:
        lines = demo_show.matrix(["a", "b"], results)
        assert lines[0].split() == ["FROM", "\\", "TO", "a", "b"]
        assert lines[1].split() == ["a", "-", row_a]
        assert lines[2].split() == ["b", "ok", "-"]
        assert lines[0].index(" b") == lines[1].index(f" {row_a}")  # aligned columns
    assert demo_show.matrix_ok(results) is ok


def test_section_indents_and_ends_with_a_blank_line() -> None:
    text = demo_show.section("Title", ["one", "", "two"])
    assert text == "Title\n  one\n\n  two\n\n"


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ({"n1": "r1\nr2\n"}, ["n1:", "  r1", "  r2"]),
        ({"n1": "", "n2": "x"}, ["n1:", "  (nothing)", "n2:", "  x"]),
    ],
)
def test_per_node(outputs: dict[str, str], expected: list[str]) -> None:
    assert demo_show.per_node(outputs) == expected


def test_nodes_table_aligns_columns() -> None:
    rows = [
        demo_show.NodeRow("node1", "p-node1", "10.77.0.11", ("10.244.1.0/24",), ("w=10.244.1.2",)),
        demo_show.NodeRow("node10", "p-node10", "10.77.0.20", ("10.244.10.0/24",), ()),
    ]
    lines = demo_show.nodes_table(rows)
    assert [line.index("IP") for line in lines[:1]] == [lines[1].index("10.77.0.11")]
    assert lines[2].endswith("(none)")


@pytest.mark.parametrize(
    ("answers", "last"),
    [
        (None, "not proxied: this kernel has no IPVS (ip_vs), so the service proxy does not run"),
        ({"a": "b", "b": None}, "  b -> FAIL"),
    ],
    ids=["no-ipvs", "proxied"],
)
def test_service_lines(answers: dict[str, str | None] | None, last: str) -> None:
    lines = demo_show.service_lines("demo/web", "10.96.0.10", 80, ["10.244.1.2"], answers)
    assert lines[0] == "Service demo/web  ClusterIP 10.96.0.10:80/TCP"
    assert lines[-1] == last


@pytest.mark.parametrize(
    ("proxy", "no_proxy_flag"), [(True, False), (False, True)], ids=["ipvs", "no-ipvs"]
)
def test_agent_flags_turn_the_proxy_off_only_without_ipvs(proxy: bool, no_proxy_flag: bool) -> None:
    flags = demo.agent_flags(proxy)
    assert ("--run-service-proxy=false" in flags) is no_proxy_flag
    assert not any(f.startswith(("--run-router", "--run-firewall")) for f in flags)


@pytest.mark.parametrize(
    "argv", [["up", "--nodes", "0"], ["up", "--pods-per-node", "27"], ["sideways"]]
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        demo.parse_args(argv)

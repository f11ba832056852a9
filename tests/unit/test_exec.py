"""The exec chokepoint: results, errors with context, the failing restore line."""

from __future__ import annotations

import pytest

from kube_router.dataplane.exec import CommandError, Executor, failing_line


async def test_runs_and_feeds_input() -> None:
    res = await Executor().run(["cat"], input="hello\n")
    assert (res.stdout, res.returncode) == ("hello\n", 0)


async def test_failure_carries_everything() -> None:
    with pytest.raises(CommandError) as info:
        await Executor().run(["sh", "-c", "echo out; echo err >&2; exit 3"], input="in\n")
    err = info.value
    assert (err.argv[0], err.returncode, err.stdout, err.stderr, err.input) == (
        "sh",
        3,
        "out\n",
        "err\n",
        "in\n",
    )
    assert "exit 3" in str(err)


async def test_unchecked_failure_returns() -> None:
    res = await Executor().run(["false"], check=False)
    assert res.returncode == 1


async def test_missing_binary_and_timeout() -> None:
    with pytest.raises(CommandError, match="No such file"):
        await Executor().run(["/nonexistent/tool"])
    with pytest.raises(CommandError, match="timed out"):
        await Executor(timeout=0.2).run(["sleep", "5"])


async def test_prefix_is_prepended_but_not_reported() -> None:
    res = await Executor(["env", "X=1"]).run(["sh", "-c", "echo $X"])
    assert res.stdout == "1\n"


@pytest.mark.parametrize(
    ("stderr", "line"),
    [
        ("iptables-restore: line 7 failed\n", 7),
        (
            "iptables-restore: Couldn't load match\nError occurred at line: 12\n",
            12,
        ),
        ("ipset v7.17: Error in line 3: The set with the given name does not exist\n", 3),
        ("something else\n", None),
    ],
)
def test_failing_line(stderr: str, line: int | None) -> None:
    assert failing_line(stderr) == line


def test_error_points_at_the_failing_line() -> None:
    text = "*filter\n:A - [0:0]\n-A A -j NOPE\n-A A -j ACCEPT\nCOMMIT\n"
    err = CommandError(["iptables-restore"], 1, "", "iptables-restore: line 3 failed", text)
    shown = str(err)
    assert ">     3  -A A -j NOPE" in shown and "      2  :A - [0:0]" in shown

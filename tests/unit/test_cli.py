"""``kube-router`` end to end: help, version, exit codes, one-line errors, the run paths, logs."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from kube_router import cli, log
from kube_router.config import FLAGS, Config
from kube_router.version import version_line

ROOT = Path(__file__).resolve().parents[2]
NO_CONTROLLERS = ["--run-router=false", "--run-firewall=false", "--run-service-proxy=false"]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv(cli.ALLOW_NONROOT_ENV, raising=False)


class FakeApp:
    """Stands in for ``kube_router.app``: records the Config and returns a chosen status."""

    def __init__(self, status: int = 0) -> None:
        self.status = status
        self.calls: list[tuple[str, Config]] = []

    def module(self) -> types.ModuleType:
        module = types.ModuleType("kube_router.app")

        async def run(config: Config) -> int:
            self.calls.append(("run", config))
            return self.status

        async def cleanup(config: Config) -> int:
            self.calls.append(("cleanup", config))
            return self.status

        module.run = run  # type: ignore[attr-defined]
        module.cleanup = cleanup  # type: ignore[attr-defined]
        return module


@pytest.fixture
def fake_app(monkeypatch: pytest.MonkeyPatch) -> FakeApp:
    app = FakeApp(status=7)
    monkeypatch.setitem(sys.modules, "kube_router.app", app.module())
    return app


def _one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


# --- help and version -------------------------------------------------------------------------


def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-h"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "Usage of kube-router:"
    assert len(lines) == 1 + 79
    names = [re.match(r"^(?:  -\S, |      )--(\S+)", line) for line in lines[1:]]
    assert [match.group(1) for match in names if match] == sorted(spec.name for spec in FLAGS)
    assert "  -v, --v string" in out
    assert "      --bgp-holdtime duration" in out
    assert "(default 1m30s)" in out
    assert '(default "30000-32767")' in out
    assert "(default [10.96.0.0/12])" in out


def test_help_comes_before_the_start_up_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--bgp-holdtime=1s", "--help"]) == 0
    assert capsys.readouterr().out.startswith("Usage of kube-router:")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-V"]) == 0
    assert capsys.readouterr().out == version_line() + "\n"
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == version_line() + "\n"


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--bgp-holdtime=abc"],
            'kube-router: invalid argument "abc" for "--bgp-holdtime" flag: '
            'time: invalid duration "abc"',
        ),
        (["--nope"], "kube-router: unknown flag: --nope"),
        (["stray"], "kube-router: unrecognized positional argument(s): [stray]"),
        (["--kubeconfig"], "kube-router: flag needs an argument: --kubeconfig"),
        (
            ["-v", "loud"],
            'kube-router: --v: failed to set log level to "loud": '
            'strconv.ParseInt: parsing "loud": invalid syntax',
        ),
    ],
)
def test_bad_flags_exit_1_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert _one_line(captured.err) == message


def test_start_up_check_failure_is_one_line(
    as_root: None, fake_app: FakeApp, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--bgp-holdtime=1s"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "kube-router: --bgp-holdtime: must be in the range 3s to 18h12m16s, got 1s"
    assert not any(line.startswith("kube-router:") for line in err[:-1])
    assert fake_app.calls == []


def test_must_run_as_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv(cli.ALLOW_NONROOT_ENV, raising=False)
    assert cli.main([]) == 1
    assert _one_line(capsys.readouterr().err) == "kube-router: must run as root (euid 0)"
    assert cli.main(["-V"]) == 0  # help and version come first


def test_nonroot_allowed_by_env(monkeypatch: pytest.MonkeyPatch, fake_app: FakeApp) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv(cli.ALLOW_NONROOT_ENV, "1")
    assert cli.main([]) == 7


def test_bad_flag_in_a_subprocess_prints_no_traceback() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "kube_router", "--bad"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "kube-router: unknown flag: --bad\n"


# --- the run paths ----------------------------------------------------------------------------


def test_run_hands_the_config_to_the_app(as_root: None, fake_app: FakeApp) -> None:
    assert cli.main(["--hostname-override=n1", "-v", "2"]) == 7
    [(which, config)] = fake_app.calls
    assert which == "run"
    assert config.hostname_override == "n1"
    assert config.v == 2
    assert logging.getLogger().level == logging.DEBUG


def test_cleanup_runs_without_the_start_up_checks(as_root: None, fake_app: FakeApp) -> None:
    assert cli.main(["--cleanup-config", "--bgp-holdtime=1s"]) == 7
    assert [which for which, _ in fake_app.calls] == ["cleanup"]


def test_no_controller_exits_0(
    as_root: None, fake_app: FakeApp, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*NO_CONTROLLERS, "--run-loadbalancer", "--bgp-holdtime=1s"]) == 0
    assert "functionality must be specified" in capsys.readouterr().err
    assert fake_app.calls == []


def test_interrupt_before_the_app_handles_signals_is_a_clean_stop(
    as_root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("kube_router.app")

    async def run(config: Config) -> int:
        raise KeyboardInterrupt

    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kube_router.app", module)
    assert cli.main([]) == 0


# --- the lab moved out -------------------------------------------------------------------------


def test_the_lab_is_not_a_kube_router_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lab", "apiserver"]) == 1
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("kube-router: ")
    assert "python -m kube_router_lab apiserver" in err


# --- logging ----------------------------------------------------------------------------------


def test_klog_line_format_and_levels() -> None:
    stream = io.StringIO()
    log.setup(0, stream)
    logger = logging.getLogger("kube_router.test")
    logger.info("hello %s", "world")
    logger.debug("hidden at -v 0")
    logger.warning("careful")
    logger.error("broken")
    lines = stream.getvalue().splitlines()
    header = r"\d{4} \d\d:\d\d:\d\d\.\d{6} [ \d]{7} test_cli\.py:\d+\] "
    assert re.fullmatch("I" + header + "hello world", lines[0])
    assert re.fullmatch("W" + header + "careful", lines[1])
    assert re.fullmatch("E" + header + "broken", lines[2])
    assert len(lines) == 3
    assert f" {os.getpid():7d} " in lines[0]


def test_verbosity_one_shows_debug_and_setup_replaces_its_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    log.setup(0, first)
    log.setup(3, second)
    logging.getLogger("kube_router.test").debug("detail")
    assert first.getvalue() == ""
    assert second.getvalue().startswith("I")
    assert log.verbosity() == 3
    assert log.enabled(3)
    assert not log.enabled(4)

"""The ``kube-router`` command: upstream's command line.

The order of the start-up steps is upstream's: parse the flags (a bad one is a one-line error,
exit status 1), ``-h``/``-V``, the root check, ``--cleanup-config``, the "no controller" exit,
then the start-up checks and the agent itself.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any

from kube_router import config, config_checks, log
from kube_router.flags import UsageError, render_usage
from kube_router.version import version_line

PROGRAM = "kube-router"
ALLOW_NONROOT_ENV = "KUBE_ROUTER_ALLOW_NONROOT"
EXIT_OK = 0
EXIT_FAILURE = 1
LAB_COMMAND = "lab"
LAB_MOVED = (
    '"lab" is no longer a kube-router command: the lab is its own package, kept out of the '
    "product and its image. In a development tree run: python -m kube_router_lab apiserver"
)

logger = logging.getLogger(__name__)


def _fail(message: str) -> int:
    print(f"{PROGRAM}: {message}", file=sys.stderr)
    return EXIT_FAILURE


def _run(coroutine: Coroutine[Any, Any, int | None]) -> int:
    """Run the agent's main coroutine; SIGINT before it installs its handlers is a clean stop."""
    try:
        status = asyncio.run(coroutine)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK if status is None else status


def _app() -> Any:
    """The agent, imported late so that flag errors, ``-h`` and ``-V`` stay quick."""
    return importlib.import_module("kube_router.app")


def _agent(cfg: config.Config) -> int:
    if cfg.cleanup_config:
        return _run(_app().cleanup(cfg))
    logger.info("%s", version_line())
    if not cfg.any_controller:
        logger.info("Router, Firewall or Service proxy functionality must be specified. Exiting!")
        return EXIT_OK
    try:
        config_checks.validate(cfg)
    except UsageError as err:
        return _fail(str(err))
    return _run(_app().run(cfg))


def main(argv: list[str] | None = None) -> int:
    """Run ``kube-router`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == [LAB_COMMAND]:
        return _fail(LAB_MOVED)
    try:
        cfg = config.parse(args)
    except UsageError as err:
        return _fail(str(err))
    if cfg.help:
        sys.stdout.write(render_usage(config.FLAGS, PROGRAM))
        return EXIT_OK
    if cfg.version:
        print(version_line())
        return EXIT_OK
    if os.geteuid() != 0 and os.environ.get(ALLOW_NONROOT_ENV) != "1":
        return _fail("must run as root (euid 0)")
    log.setup(cfg.v)
    return _agent(cfg)

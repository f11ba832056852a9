"""``python -m kube_router_lab``: the lab's own command (it is not part of ``kube-router``).

``apiserver [--host H] [--port P] [--kubeconfig PATH]`` runs the in-memory API server the tests
and the demo use, with the same flag syntax as ``kube-router``. The other parts have their own
module entry points: ``python -m kube_router_lab.demo up|down``, ``python -m kube_router_lab.vm
run|check``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from kube_router import log
from kube_router.flags import BOOL, STRING, UINT16, FlagSpec, UsageError, parse_flags, render_usage
from kube_router_lab import apiserver

PROGRAM = "python -m kube_router_lab"
APISERVER = "apiserver"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6443
EXIT_OK = 0
EXIT_FAILURE = 1

FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec("help", BOOL, "false", "Print this usage text and exit.", shorthand="h"),
    FlagSpec("host", STRING, DEFAULT_HOST, "Address the lab API server listens on."),
    FlagSpec("port", UINT16, str(DEFAULT_PORT), "Port the lab API server listens on."),
    FlagSpec("kubeconfig", STRING, "", "Write a kubeconfig for the lab API server to this path."),
)


def _fail(message: str) -> int:
    print(f"{PROGRAM}: {message}", file=sys.stderr)
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != APISERVER:
        given = args[0] if args else ""
        return _fail(f'unknown command "{given}" (the only one is "{APISERVER}")')
    try:
        parsed = parse_flags(FLAGS, args[1:])
        if parsed.args:
            raise UsageError(f"unrecognized positional argument(s): [{' '.join(parsed.args)}]")
    except UsageError as err:
        return _fail(str(err))
    values = parsed.values
    if values["help"]:
        sys.stdout.write(render_usage(FLAGS, f"{PROGRAM} {APISERVER}"))
        return EXIT_OK
    log.setup(0)
    port = values["port"]
    assert isinstance(port, int)
    kubeconfig = str(values["kubeconfig"]) or None
    try:
        asyncio.run(apiserver.serve(str(values["host"]), port, kubeconfig))
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

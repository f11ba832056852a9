"""Version information reported by ``--version`` and ``kube_router_build_info``."""

import platform

VERSION = "0.1.0"
PYTHON_VERSION = f"python{platform.python_version()}"


def version_line() -> str:
    """Return the one-line version string printed by ``kube-router --version``."""
    return f"Running kube-router-py version {VERSION}, built with {PYTHON_VERSION}, on Linux"

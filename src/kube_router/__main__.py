"""``python -m kube_router`` and the ``kube-router`` console script."""

from kube_router import cli


def main() -> None:
    """Run the command line and exit with its status."""
    raise SystemExit(cli.main())


if __name__ == "__main__":
    main()

"""`python -m kit COMMAND`: the operator CLI (kit/cli.py registers the commands)."""

from __future__ import annotations

import sys

from kit.cli import build_parser
from kit.errors import explain


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has printed
        return int(exc.code or 0)
    try:
        return int(args.run(args))
    except Exception as exc:
        explained = explain(exc)
        if explained is None or args.debug:
            raise
        message, status = explained
        print(f"error: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())

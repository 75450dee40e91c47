"""Operator tools, grouped by what an operator does: artifacts/ (build, verify, upload), deploy/ (wait),
endpoints/ (client, smoke test); `python -m kit --help` lists the commands (kit/cli.py registers them)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class KitError(Exception):
    """A mistake in what the operator asked for (missing file, bad option); printed without a traceback, exit 2."""


class CheckFailed(KitError):
    """Something the kit checked is not right (an endpoint failed, an upload differs); exit 1."""

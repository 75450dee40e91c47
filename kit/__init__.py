"""Operator tools: packaging model artifacts, the endpoint client, the smoke test, deploy helpers."""


class KitError(Exception):
    """A mistake in what the operator asked for (missing file, bad option); printed without a traceback."""

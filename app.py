#!/usr/bin/env python3
"""The CDK app: `cdk synth` / `cdk deploy`, or `python app.py [-c key=value ...]` without the CLI,
configured by the context in cdk.json (overridden by `-c`).

Synthesis runs cdk-nag's AwsSolutions and HIPAA Security packs; any unacknowledged finding fails it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from aws_cdk import App, Environment, Tags, Validations
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks

from stacks.config import KEYS, ConfigError, load_config
from stacks.endpoints import EndpointsStack
from stacks.foundation import FoundationStack


def build(app: App) -> tuple[FoundationStack, EndpointsStack]:
    config = load_config({key: app.node.try_get_context(key) for key in KEYS})
    env = Environment(
        account=os.environ.get("CDK_DEFAULT_ACCOUNT", config.account),
        region=os.environ.get("CDK_DEFAULT_REGION", config.region),
    )
    foundation = FoundationStack(app, "OptimusFoundation", config, env=env)
    endpoints = EndpointsStack(app, "OptimusEndpoints", config, foundation, env=env)
    for key, value in config.tags.items():
        Tags.of(app).add(key, value)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app), HIPAASecurityChecks(app))
    return foundation, endpoints


def cli_context(argv: list[str]) -> dict[str, object] | None:
    """cdk.json's context and `-c key=value` pairs, when run as `python app.py` (the CDK CLI passes its own)."""
    if "CDK_CONTEXT_JSON" in os.environ or "CDK_CONTEXT_FILE" in os.environ:
        return None
    context = json.loads((Path(__file__).parent / "cdk.json").read_text())["context"]
    pairs = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("-c", "--context")]
    for pair in pairs:
        key, _, value = pair.partition("=")
        context[key] = value
    return context


def main() -> int:
    app = App(context=cli_context(sys.argv[1:]), outdir=os.environ.get("CDK_OUTDIR", "cdk.out"))
    try:
        build(app)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())

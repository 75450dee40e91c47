#!/usr/bin/env python3
"""The CDK app: `cdk synth` / `cdk deploy`, or `python app.py [-c key=value ...]` without the CLI,
configured by the context in cdk.json (overridden by `-c`).

Synthesis runs cdk-nag's AwsSolutions and HIPAA Security packs; any unacknowledged finding fails it.
A local artifact that is not packaged yet is an error of the endpoints stack only: the foundation stack
still synthesizes and deploys (`cdk deploy OptimusFoundation`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from aws_cdk import App, Environment, Tags, Validations
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks

from stacks.config import ConfigError, cdk_context, load_config
from stacks.endpoints import EndpointsStack
from stacks.foundation import FoundationStack
from stacks.key_policy import key_policy_statements


def build(app: App) -> tuple[FoundationStack, EndpointsStack]:
    config = load_config(app.node.get_all_context())
    env = Environment(
        account=os.environ.get("CDK_DEFAULT_ACCOUNT", config.account),
        region=os.environ.get("CDK_DEFAULT_REGION", config.region),
    )
    foundation = FoundationStack(app, f"{config.stack_prefix}Foundation", config, env=env)
    endpoints = EndpointsStack(app, f"{config.stack_prefix}Endpoints", config, foundation, env=env)
    for key, value in config.tags.items():
        Tags.of(app).add(key, value)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app), HIPAASecurityChecks(app))
    return foundation, endpoints


def cli_context(argv: list[str]) -> dict[str, object] | None:
    """cdk.json's context and `-c key=value` pairs, when run as `python app.py` (the CDK CLI passes its own)."""
    if "CDK_CONTEXT_JSON" in os.environ or "CDK_CONTEXT_FILE" in os.environ:
        return None
    return cdk_context(Path(__file__).parent, argv)


def main() -> int:
    app = App(context=cli_context(sys.argv[1:]), outdir=os.environ.get("CDK_OUTDIR", "cdk.out"))
    try:
        foundation, endpoints = build(app)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app.synth()
    for problem in endpoints.problems:
        print(f"error ({endpoints.stack_name} only, not deployable until fixed): {problem}", file=sys.stderr)
    if foundation.config.kmsKeyArn:
        statements = key_policy_statements(foundation.config, foundation.account, foundation.region)
        print(
            f"your key {foundation.config.kmsKeyArn} must hold these key-policy statements "
            f"(`python -m kit preflight` checks them):\n{json.dumps(statements, indent=2)}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`kit smoke`: check endpoints (metadata, every mode, outputs, latency); the checks are in checks.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from kit import KitError
from kit.cli import add_aws, add_json, add_models, session, write_output

HELP = "check endpoints: metadata, every mode, outputs, latency"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", help="check the endpoints this stack's outputs name (and their models)")
    parser.add_argument("--endpoint", help="or check this endpoint (with --models)")
    add_models(parser, required=False, what="with --endpoint: the models it must host")
    parser.add_argument("--endpoint-url", help="e.g. http://127.0.0.1:8080 for a local server")
    parser.add_argument(
        "--token", help="with --endpoint-url: the bearer token of a server that asks for one (default $OPTIMUS_TOKEN)"
    )
    parser.add_argument("--requests", type=int, default=20, help="requests for the latency figures (default 20)")
    add_json(parser, "the report")
    parser.add_argument("--junit-xml", type=Path, metavar="PATH", help="also write the report as JUnit XML to PATH")
    add_aws(parser)


def run(args: argparse.Namespace) -> int:
    if bool(args.stack) == bool(args.endpoint):
        raise KitError("give --stack NAME, or --endpoint NAME with --models")
    if args.token and not args.endpoint_url:
        raise KitError("--token is for a server reached with --endpoint-url; on SageMaker, IAM signs requests")
    if args.endpoint and not args.models:
        raise KitError("--endpoint needs --models (the models it must host)")
    from kit.endpoints.checks import smoke
    from kit.endpoints.stack import endpoints_from_stack

    aws = session(args)
    endpoints = endpoints_from_stack(args.stack, aws) if args.stack else {args.endpoint: args.models}
    report = smoke(endpoints, session=aws, endpoint_url=args.endpoint_url, requests=args.requests, token=args.token)
    print(report.text())
    write_output(args.json, report.to_json())
    write_output(args.junit_xml, report.to_junit())
    return 0 if report.passed else 1

"""`kit smoke`: check endpoints (metadata, every mode, outputs, latency); the checks are in checks.py.

Against a local server (`--endpoint-url` that is not an AWS host) it needs no region, no credentials and no
endpoint name, and checks the models the server's /ping lists unless `--models` names them.
"""

from __future__ import annotations

import argparse
import urllib.parse

from kit import KitError
from kit.cli import add_aws, add_json, add_models, endpoint_url, output_path, positive, session, write_output

HELP = "check endpoints: metadata, every mode, outputs, latency"
LOCAL_ENDPOINT = "local"  # the name in /endpoints/NAME/invocations when none is given; a local server takes any
PLACEHOLDER_REGION = "us-east-1"  # botocore builds no client without a region; a local server never sees it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", help="check the endpoints this stack's outputs name (and their models)")
    parser.add_argument("--endpoint", help="or check this endpoint (with --models)")
    add_models(parser, required=False, what="the models the endpoint must host (with --endpoint-url: default /ping's)")
    parser.add_argument(
        "--endpoint-url",
        type=endpoint_url,
        help="a server reached directly, e.g. http://127.0.0.1:8080: no AWS region or credentials needed",
    )
    parser.add_argument(
        "--token", help="with --endpoint-url: the bearer token of a server that asks for one (default $OPTIMUS_TOKEN)"
    )
    parser.add_argument(
        "--requests",
        type=positive(int, 2),
        default=20,
        help="requests for the latency figures, at least 2 (default 20)",
    )
    add_json(parser, "the report")
    parser.add_argument(
        "--junit-xml", type=output_path, metavar="PATH", help="also write the report as JUnit XML to PATH"
    )
    add_aws(parser)


def is_local(url: str | None) -> bool:
    """A server reached directly: not an AWS host (a VPC endpoint of the SageMaker runtime needs signing)."""
    if not url:
        return False
    return not (urllib.parse.urlsplit(url).hostname or "").endswith((".amazonaws.com", ".amazonaws.com.cn"))


def run(args: argparse.Namespace) -> int:
    if args.token and not args.endpoint_url:
        raise KitError("--token is for a server reached with --endpoint-url; on SageMaker, IAM signs requests")
    if is_local(args.endpoint_url):
        if args.stack:
            raise KitError("--stack names SageMaker endpoints: with a local --endpoint-url, leave it out")
        from kit.local import hosted_models

        endpoints = {args.endpoint or LOCAL_ENDPOINT: args.models or hosted_models(args.endpoint_url)}
        aws, region = None, PLACEHOLDER_REGION
    else:
        if bool(args.stack) == bool(args.endpoint):
            raise KitError("give --stack NAME, or --endpoint NAME with --models")
        if args.endpoint and not args.models:
            raise KitError("--endpoint needs --models (the models it must host)")
        from kit.endpoints.stack import endpoints_from_stack

        aws, region = session(args), None
        endpoints = endpoints_from_stack(args.stack, aws) if args.stack else {args.endpoint: args.models}
    from kit.endpoints.checks import smoke

    report = smoke(
        endpoints,
        session=aws,
        region=region,
        endpoint_url=args.endpoint_url,
        requests=args.requests,
        token=args.token,
    )
    print(report.text())
    write_output(args.json, report.to_json())
    write_output(args.junit_xml, report.to_junit())
    return 0 if report.passed else 1

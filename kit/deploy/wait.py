"""`kit wait`: wait for an endpoint to be InService, or say why it is not."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from kit import CheckFailed
from kit.cli import add_aws, add_json, positive, session, write_output

if TYPE_CHECKING:
    import boto3

HELP = "wait for an endpoint to be InService"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", required=True, help="SageMaker endpoint name")
    parser.add_argument(
        "--timeout", type=positive(float, 0), default=3600, help="seconds before giving up, 0 or more (default 3600)"
    )
    parser.add_argument(
        "--poll", type=positive(float, 0), default=30, help="seconds between checks, 0 or more (default 30)"
    )
    add_json(parser, "the endpoint's name, status and configuration")
    add_aws(parser)


def run(args: argparse.Namespace) -> int:
    described = wait_in_service(args.endpoint, session(args), timeout_s=args.timeout, poll_s=args.poll)
    print(f"{args.endpoint} is {described['EndpointStatus']}")
    fields = ("EndpointName", "EndpointArn", "EndpointStatus", "EndpointConfigName")
    write_output(args.json, json.dumps({key: described.get(key) for key in fields}, indent=2).encode())
    return 0


def wait_in_service(
    endpoint: str, session: boto3.Session, timeout_s: float = 3600, poll_s: float = 30
) -> dict[str, Any]:
    """Poll DescribeEndpoint until InService; a Failed endpoint or the timeout raise with the reason."""
    sagemaker = session.client("sagemaker")
    deadline = time.monotonic() + timeout_s
    while True:
        described: dict[str, Any] = sagemaker.describe_endpoint(EndpointName=endpoint)
        status = described["EndpointStatus"]
        if status == "InService":
            return described
        if status in ("Failed", "OutOfService", "Deleting"):
            reason = described.get("FailureReason", "SageMaker gave no reason")
            raise CheckFailed(f"endpoint {endpoint} is {status}: {reason}")
        if time.monotonic() >= deadline:
            raise CheckFailed(f"endpoint {endpoint} still {status} after {timeout_s:g} s")
        time.sleep(poll_s)

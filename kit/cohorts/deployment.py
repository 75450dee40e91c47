"""One endpoint of a deployed endpoints stack, as its outputs (and its foundation's) describe it: the
endpoint, its model and role (batch transform), its prefixes in the results bucket, its async topics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kit import KitError
from kit.endpoints.stack import stack_outputs
from stacks import names

if TYPE_CHECKING:
    import boto3


@dataclass(frozen=True)
class Deployment:
    endpoint_name: str
    serving: str  # "async" or "real-time"
    model_name: str
    role_arn: str
    bucket: str  # the kit's results bucket
    key_arn: str
    prefixes: dict[str, str]  # BatchInput, BatchOutput, AsyncInput, AsyncOutput, AsyncFailures -> key prefix
    topics: dict[str, str]  # AsyncSuccessTopic, AsyncErrorTopic -> ARN (async only)

    def uri(self, prefix: str, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.prefixes[prefix]}" + "/".join(parts)


def find_deployment(session: boto3.Session, stack: str, endpoint: str) -> Deployment:
    """`endpoint`: the endpoint's name (optimus-h1) or its entry's (h1)."""
    outputs = stack_outputs(session, stack)
    endpoints = {k.removesuffix(names.ENDPOINT_NAME): v for k, v in outputs.items() if k.endswith(names.ENDPOINT_NAME)}
    title = next((t for t, name in endpoints.items() if endpoint == name or names.title(endpoint) == t), None)
    if title is None:
        raise KitError(f"stack {stack} has no endpoint '{endpoint}' (it has {', '.join(endpoints.values()) or 'none'})")
    if title + names.MODEL_NAME not in outputs or names.FOUNDATION_STACK not in outputs:
        raise KitError(f"stack {stack} predates batch and async outputs: deploy it again (`cdk deploy {stack}`)")
    foundation = stack_outputs(session, outputs[names.FOUNDATION_STACK])
    return Deployment(
        endpoint_name=endpoints[title],
        serving=outputs[title + names.SERVING],
        model_name=outputs[title + names.MODEL_NAME],
        role_arn=outputs[title + names.ROLE_ARN],
        bucket=foundation[names.RESULTS_BUCKET],
        key_arn=foundation[names.KEY_ARN],
        prefixes={k: outputs[title + k] for k in names.PREFIXES if title + k in outputs},
        topics={k: outputs[title + k] for k in names.TOPICS if title + k in outputs},
    )

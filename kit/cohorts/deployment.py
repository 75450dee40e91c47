"""One endpoint of a deployed endpoints stack, as its outputs (and its foundation's) describe it: the
endpoint, its model and role (batch transform), its prefixes in the results bucket, its async topics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kit import KitError

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


def stack_outputs(session: boto3.Session, stack: str) -> dict[str, str]:
    described = session.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def find_deployment(session: boto3.Session, stack: str, endpoint: str) -> Deployment:
    """`endpoint`: the endpoint's name (optimus-h1) or its entry's (h1)."""
    outputs = stack_outputs(session, stack)
    names = {k.removesuffix("EndpointName"): v for k, v in outputs.items() if k.endswith("EndpointName")}
    entry = "".join(part.capitalize() for part in endpoint.split("-"))  # h1-slides -> H1Slides, as stacks/ names it
    title = next((t for t, name in names.items() if endpoint == name or entry == t), None)
    if title is None:
        raise KitError(f"stack {stack} has no endpoint '{endpoint}' (it has {', '.join(names.values()) or 'none'})")
    if f"{title}ModelName" not in outputs or "FoundationStack" not in outputs:
        raise KitError(f"stack {stack} predates batch and async outputs: deploy it again (`cdk deploy {stack}`)")
    foundation = stack_outputs(session, outputs["FoundationStack"])
    prefix_keys = ("BatchInput", "BatchOutput", "AsyncInput", "AsyncOutput", "AsyncFailures")
    return Deployment(
        endpoint_name=names[title],
        serving=outputs[f"{title}Serving"],
        model_name=outputs[f"{title}ModelName"],
        role_arn=outputs[f"{title}ExecutionRoleArn"],
        bucket=foundation["ResultsBucket"],
        key_arn=foundation["KeyArn"],
        prefixes={k: outputs[title + k] for k in prefix_keys if title + k in outputs},
        topics={k: outputs[title + k] for k in ("AsyncSuccessTopic", "AsyncErrorTopic") if title + k in outputs},
    )

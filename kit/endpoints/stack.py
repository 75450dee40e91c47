"""The kit's endpoints as a deployed stack names them in its outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kit import KitError
from stacks import names

if TYPE_CHECKING:
    import boto3


def stack_outputs(session: boto3.Session, stack: str) -> dict[str, str]:
    """A deployed stack's outputs, key -> value (the keys: stacks/names.py)."""
    described = session.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def endpoints_from_stack(stack: str, session: boto3.Session) -> dict[str, list[str]]:
    """endpoint name -> models, from the outputs `<Title>EndpointName` and `<Title>Models` of the stack."""
    outputs = stack_outputs(session, stack)
    endpoints = {}
    for output, name in outputs.items():
        if output.endswith(names.ENDPOINT_NAME):
            title = output.removesuffix(names.ENDPOINT_NAME)
            models = outputs.get(title + names.MODELS)
            if models is None:
                raise KitError(f"stack {stack} has output {output} but no {title}{names.MODELS}")
            endpoints[name] = models.split(",")
    if not endpoints:
        raise KitError(f"stack {stack} has no <Name>{names.ENDPOINT_NAME} outputs; is it the kit's endpoints stack?")
    return endpoints

"""The kit's endpoints as a deployed stack names them in its outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kit import KitError

if TYPE_CHECKING:
    import boto3


def endpoints_from_stack(stack: str, session: boto3.Session) -> dict[str, list[str]]:
    """endpoint name -> models, from the outputs `<Name>EndpointName` and `<Name>Models` of the stack."""
    cloudformation = session.client("cloudformation")
    stacks = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    endpoints = {}
    for output, name in outputs.items():
        if output.endswith("EndpointName"):
            models = outputs.get(output.removesuffix("EndpointName") + "Models")
            if models is None:
                raise KitError(f"stack {stack} has output {output} but no {output.removesuffix('EndpointName')}Models")
            endpoints[name] = models.split(",")
    if not endpoints:
        raise KitError(f"stack {stack} has no <Name>EndpointName outputs; is it the kit's endpoints stack?")
    return endpoints

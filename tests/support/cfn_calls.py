"""The API calls CloudFormation makes for the kit's SageMaker, Application Auto Scaling and CloudWatch
resources, built from synthesized templates with their intrinsic functions resolved to realistic values."""

from __future__ import annotations

import re
from typing import Any

ACCOUNT, REGION = "123456789012", "eu-west-1"
PSEUDO = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::URLSuffix": "amazonaws.com"}


class Resolver:
    """Resolves Ref, Fn::GetAtt, Fn::Join, Fn::Sub and Fn::ImportValue across the app's templates."""

    def __init__(self, templates: dict[str, dict[str, Any]]) -> None:
        self.templates = templates
        self.exports = {
            output["Export"]["Name"]: (stack, output["Value"])
            for stack, template in templates.items()
            for output in template.get("Outputs", {}).values()
            if "Export" in output
        }

    def __call__(self, value: Any, stack: str) -> Any:
        if isinstance(value, list):
            return [self(v, stack) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1 or not next(iter(value)).startswith(("Ref", "Fn::")):
            return {k: self(v, stack) for k, v in value.items()}
        ((function, argument),) = value.items()
        if function == "Ref":
            return PSEUDO.get(argument) or self._ref(stack, argument)
        if function == "Fn::GetAtt":
            return self._attribute(stack, *argument)
        if function == "Fn::Join":
            return argument[0].join(str(self(part, stack)) for part in argument[1])
        if function == "Fn::Sub":
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(self({"Ref": m.group(1)}, stack)), argument)
        if function == "Fn::ImportValue":
            origin, exported = self.exports[argument]
            return self(exported, origin)
        raise AssertionError(f"unresolved {function} in {value}")

    def _resource(self, stack: str, logical: str) -> dict[str, Any]:
        resource: dict[str, Any] = self.templates[stack]["Resources"][logical]
        return resource

    def _ref(self, stack: str, logical: str) -> str:
        resource = self._resource(stack, logical)
        kind, properties = resource["Type"], resource.get("Properties", {})
        if kind == "AWS::CloudWatch::Alarm":
            return str(properties["AlarmName"])
        if kind == "AWS::SNS::Topic":
            return f"arn:aws:sns:{REGION}:{ACCOUNT}:{logical}"
        if kind == "AWS::KMS::Key":
            return "0a1b2c3d-1111-2222-3333-444455556666"
        if kind == "AWS::S3::Bucket":
            return logical.lower()
        return logical

    def _attribute(self, stack: str, logical: str, attribute: str) -> str:
        kind = self._resource(stack, logical)["Type"]
        arns = {
            "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT}:role/{logical}",
            "AWS::CloudWatch::Alarm": f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{self._ref(stack, logical)}",
            "AWS::KMS::Key": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0a1b2c3d-1111-2222-3333-444455556666",
            "AWS::Logs::LogGroup": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{logical}:*",
            "AWS::S3::Bucket": f"arn:aws:s3:::{logical.lower()}",
        }
        if attribute == "Arn":
            return arns[kind]
        return logical  # ModelName, EndpointConfigName: the generated physical name


def api_calls(templates: dict[str, dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(service, operation, parameters) for each resource CloudFormation turns into these calls."""
    resolve = Resolver(templates)
    calls: list[tuple[str, str, dict[str, Any]]] = []
    for stack, template in templates.items():
        resources = template["Resources"]
        for logical, resource in resources.items():
            kind = resource["Type"]
            props = resolve(resource.get("Properties", {}), stack)
            if kind == "AWS::SageMaker::Model":
                calls.append(("sagemaker", "CreateModel", {"ModelName": logical, **props}))
            elif kind == "AWS::SageMaker::EndpointConfig":
                calls.append(("sagemaker", "CreateEndpointConfig", {"EndpointConfigName": logical, **props}))
            elif kind == "AWS::SageMaker::Endpoint":
                retain = props.pop("RetainAllVariantProperties", None)
                calls.append(("sagemaker", "CreateEndpoint", props))
                update = {k: v for k, v in props.items() if k != "Tags"}  # tags change through AddTags
                calls.append(("sagemaker", "UpdateEndpoint", {**update, "RetainAllVariantProperties": retain}))
            elif kind == "AWS::ApplicationAutoScaling::ScalableTarget":
                tags = {t["Key"]: t["Value"] for t in props.pop("Tags", [])}  # a list in CloudFormation, a map here
                calls.append(("application-autoscaling", "RegisterScalableTarget", {**props, "Tags": tags}))
            elif kind == "AWS::ApplicationAutoScaling::ScalingPolicy":
                target = resolve(resources[props.pop("ScalingTargetId")]["Properties"], stack)  # Ref: its logical ID
                keys = ("ServiceNamespace", "ResourceId", "ScalableDimension")
                calls.append(("application-autoscaling", "PutScalingPolicy", {**props, **{k: target[k] for k in keys}}))
            elif kind == "AWS::CloudWatch::Alarm":
                calls.append(("cloudwatch", "PutMetricAlarm", props))
            elif kind == "AWS::CloudWatch::Dashboard":
                calls.append(("cloudwatch", "PutDashboard", props))
    return calls

"""The kit's stacks through a whole lifecycle in moto's CloudFormation: create, update (a new image, a new
artifact), delete, create again, and a failed first create rolled back and retried. moto stands in for
AWS's control plane; where it lacks a resource type, that resource is skipped (listed by a test)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.parsers import ResponseParserError  # moto relays the logs error to CloudFormation raw
from moto.cloudformation.parsing import get_model_map

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from aws_cdk import App

from app import build
from kit.artifacts.builder import package
from tests.support.aws import mocked_aws
from tests.support.stacks import context

REGION = "eu-west-1"
ACCOUNT = "123456789012"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/optimus-serving"
LOG_GROUP = "/aws/sagemaker/Endpoints/optimus-h1"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("packages")
    h1 = str(package(["h1", "tissue-seg"], root / "H1", demo=True).parent)
    return {"H1": h1, "M": h1}  # only the demo stack's defaults read them: the endpoints here are kit://


def synthesize(artifacts: dict[str, str], outdir: Path, **overrides: Any) -> dict[str, str]:
    """Template bodies by stack name, for one endpoint (h1) from an uploaded artifact and a pushed image."""
    settings = {
        "endpoints": {"h1": {"models": ["h1", "tissue-seg"], "artifact": "kit://h1/v1/"}},
        "image": f"{IMAGE}:0.1.0",
        "instanceType": "ml.g4dn.xlarge",  # moto 5.2.5's list of instance types predates ml.g5
        **overrides,
    }
    ctx = context(artifacts, **settings)
    app = App(context=ctx, outdir=str(outdir))
    build(app)
    app.synth()
    return {p.name.split(".")[0]: p.read_text() for p in outdir.glob("*.template.json")}


@pytest.fixture(scope="module")
def templates(artifacts: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """v1, and v2 with a new image and a new artifact prefix."""
    return {
        "v1": synthesize(artifacts, tmp_path_factory.mktemp("v1")),
        "v2": synthesize(
            artifacts,
            tmp_path_factory.mktemp("v2"),
            image=f"{IMAGE}:0.2.0",
            endpoints={"h1": {"models": ["h1", "tissue-seg"], "artifact": "kit://h1/v2/"}},
        ),
    }


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.Session]:
    with mocked_aws(monkeypatch, REGION) as session:
        # what `cdk bootstrap` leaves: the templates check its version
        session.client("ssm").put_parameter(Name="/cdk-bootstrap/hnb659fds/version", Value="30", Type="String")
        yield session


def for_moto(body: str) -> str:
    """moto 5.2.5 defects worked around: it reads a KMS key's tags as TagKey/TagValue and an SSM parameter's
    as a list (CloudFormation: Key/Value, and a map), and it generates repository names with upper-case
    letters, which its own ECR then refuses."""
    template = json.loads(body)
    lacking = {k: r for k, r in template["Resources"].items() if r["Type"] not in get_model_map()}
    template = _without(template, lacking)
    for logical, resource in template["Resources"].items():
        resource["DependsOn"] = [d for d in resource.get("DependsOn", []) if d not in lacking]
        if resource["Type"] in ("AWS::KMS::Key", "AWS::SSM::Parameter"):
            resource["Properties"].pop("Tags", None)
        if resource["Type"] == "AWS::ECR::Repository":
            resource["Properties"]["RepositoryName"] = logical.lower()
    return json.dumps(template)


def _without(value: Any, lacking: dict[str, Any]) -> Any:
    """The template less the resources moto lacks, references to them replaced by their physical names."""
    if isinstance(value, list):
        return [_without(v, lacking) for v in value]
    if not isinstance(value, dict):
        return value
    if value.get("Ref") in lacking:
        return lacking[value["Ref"]]["Properties"].get("AlarmName", value["Ref"])
    if "Fn::GetAtt" in value and value["Fn::GetAtt"][0] in lacking:
        name = lacking[value["Fn::GetAtt"][0]]["Properties"]["AlarmName"]
        return f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}"
    return {k: _without(v, lacking) for k, v in value.items() if k not in lacking}


def deploy(session: boto3.Session, stack: str, body: str) -> None:
    body = for_moto(body)
    cloudformation = session.client("cloudformation")
    existing = [
        s["StackName"] for s in cloudformation.list_stacks()["StackSummaries"] if s["StackStatus"] != "DELETE_COMPLETE"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # moto's "not supported" warnings: listed by their own test
        if stack in existing:
            cloudformation.update_stack(StackName=stack, TemplateBody=body, Capabilities=["CAPABILITY_NAMED_IAM"])
        else:
            cloudformation.create_stack(StackName=stack, TemplateBody=body, Capabilities=["CAPABILITY_NAMED_IAM"])


def destroy(session: boto3.Session, stack: str) -> None:
    session.client("cloudformation").delete_stack(StackName=stack)


def model_of_endpoint(session: boto3.Session) -> dict[str, Any]:
    """The container of the one model, after checking there is one endpoint and one endpoint config.

    moto names endpoints after the stack (ignoring EndpointName) and, on an update, replaces a model without
    updating the endpoint config that names it: the chain model -> config -> endpoint is CloudFormation's
    own, which moto does not reproduce, so the model is found by listing."""
    sagemaker = session.client("sagemaker")
    assert (
        len(sagemaker.list_endpoints()["Endpoints"]) == len(sagemaker.list_endpoint_configs()["EndpointConfigs"]) == 1
    )
    (model,) = sagemaker.list_models()["Models"]
    container: dict[str, Any] = sagemaker.describe_model(ModelName=model["ModelName"])["PrimaryContainer"]
    return container


def log_groups(session: boto3.Session) -> list[str]:
    found = session.client("logs").describe_log_groups(logGroupNamePrefix="/aws/sagemaker/Endpoints/")["logGroups"]
    return [g["logGroupName"] for g in found]


def test_create_update_delete_create_again(cloud: boto3.Session, templates: dict[str, dict[str, str]]) -> None:
    deploy(cloud, "OptimusFoundation", templates["v1"]["OptimusFoundation"])
    deploy(cloud, "OptimusEndpoints", templates["v1"]["OptimusEndpoints"])
    container = model_of_endpoint(cloud)
    assert container["Image"] == f"{IMAGE}:0.1.0"
    assert log_groups(cloud) == [LOG_GROUP]

    deploy(cloud, "OptimusEndpoints", templates["v2"]["OptimusEndpoints"])  # new image, new artifact
    container = model_of_endpoint(cloud)
    assert container["Image"] == f"{IMAGE}:0.2.0"
    assert container["ModelDataSource"]["S3DataSource"]["S3Uri"].endswith("/h1/v2/")

    destroy(cloud, "OptimusEndpoints")
    # moto deletes a RetainExceptOnCreate resource on delete (CloudFormation keeps it): stand in for what a real
    # destroy keeps, then take docs/deploying.md's path of deleting it before the redeploy.
    logs = cloud.client("logs")
    if not log_groups(cloud):
        logs.create_log_group(logGroupName=LOG_GROUP)
    with pytest.raises(ResponseParserError, match="ResourceAlreadyExistsException"):
        deploy(cloud, "OptimusEndpoints", templates["v1"]["OptimusEndpoints"])
    destroy(cloud, "OptimusEndpoints")
    logs.delete_log_group(logGroupName=LOG_GROUP)  # docs/deploying.md, "Removal" (or --import-existing-resources)
    deploy(cloud, "OptimusEndpoints", templates["v1"]["OptimusEndpoints"])
    assert model_of_endpoint(cloud)["Image"] == f"{IMAGE}:0.1.0"


def _fail_endpoint_creation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The container never becomes healthy: CreateEndpoint's resource fails, after the log group is created."""
    endpoint = get_model_map()["AWS::SageMaker::Endpoint"]

    def unhealthy(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the primary container did not pass the ping health check")

    monkeypatch.setattr(endpoint, "create_from_cloudformation_json", unhealthy)


@pytest.mark.parametrize("deletion_policy", ["RetainExceptOnCreate", "Retain"])
def test_failed_first_create_rolls_back_and_the_retry_succeeds(
    cloud: boto3.Session, templates: dict[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch, deletion_policy: str
) -> None:
    """With the kit's RetainExceptOnCreate the retry succeeds; with the former Retain, the rolled-back create
    leaves the named log group behind and the retry fails, as it did in real accounts."""
    template = json.loads(templates["v1"]["OptimusEndpoints"])
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Logs::LogGroup":
            assert resource["DeletionPolicy"] == "RetainExceptOnCreate"
            resource["DeletionPolicy"] = deletion_policy
    body = json.dumps(template)
    deploy(cloud, "OptimusFoundation", templates["v1"]["OptimusFoundation"])
    with monkeypatch.context() as failing:
        _fail_endpoint_creation(failing)
        with pytest.raises(RuntimeError, match="ping health check"):
            deploy(cloud, "OptimusEndpoints", body)
    assert log_groups(cloud) == [LOG_GROUP]  # created before the endpoint failed
    destroy(cloud, "OptimusEndpoints")  # the rollback: CloudFormation removes what the create made, but Retain
    if deletion_policy == "Retain":
        assert log_groups(cloud) == [LOG_GROUP]
        with pytest.raises(ResponseParserError, match="ResourceAlreadyExistsException"):
            deploy(cloud, "OptimusEndpoints", body)
    else:
        assert log_groups(cloud) == []
        deploy(cloud, "OptimusEndpoints", body)
        assert model_of_endpoint(cloud)["Image"] == f"{IMAGE}:0.1.0"


def test_resource_types_moto_lacks(templates: dict[str, dict[str, str]]) -> None:
    """What the lifecycle above skips: named here so that README's status table can say so."""
    types = {r["Type"] for body in templates["v1"].values() for r in json.loads(body)["Resources"].values()}
    lacking = sorted(t for t in types if t not in get_model_map())
    assert lacking == LACKING, lacking


LACKING = [  # moto 5.2.5
    "AWS::ApplicationAutoScaling::ScalableTarget",
    "AWS::ApplicationAutoScaling::ScalingPolicy",
    "AWS::CloudWatch::Alarm",
    "AWS::S3::BucketPolicy",
    "AWS::SNS::TopicPolicy",
]

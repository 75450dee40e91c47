"""`kit preflight` against moto (IAM, CloudFormation, S3, KMS, logs, EC2, SageMaker, Application Auto Scaling)
and botocore's Stubber where moto lacks the call (Service Quotas' list, ECR's manifest media type)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from kit.__main__ import main
from kit.artifacts.upload import upload_artifact
from kit.deploy.preflight import DOCKER_V2, SCALING_ROLE, Check, image_default_torch, packages, preflight
from model_code.manifest import AotiPackage, Manifest
from stacks.config import KitConfig, load_config
from stacks.key_policy import key_policy_statements
from tests.support.aws import mocked_aws

REGION, ACCOUNT = "eu-west-1", "123456789012"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/optimus-serving:0.1.0"
STACK = '{"Resources": {"B": {"Type": "AWS::S3::Bucket"}}, "Outputs": {"ArtifactBucket": {"Value": {"Ref": "B"}}}}'


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, artifact: Path) -> Iterator[boto3.Session]:
    """An account ready to deploy: bootstrapped, the scaling role, the foundation stack, an uploaded artifact."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mocked_aws(monkeypatch, REGION) as session:
        cloudformation = session.client("cloudformation")
        cloudformation.create_stack(StackName="CDKToolkit", TemplateBody=STACK.replace("ArtifactBucket", "Bucket"))
        cloudformation.create_stack(StackName="OptimusFoundation", TemplateBody=STACK)
        session.client("iam").create_role(
            RoleName=SCALING_ROLE, AssumeRolePolicyDocument="{}", Path="/aws-service-role/"
        )
        upload_artifact(artifact, f"s3://{artifact_bucket(session)}/h1/v1/", session)
        yield session


def artifact_bucket(session: boto3.Session) -> str:
    stack = session.client("cloudformation").describe_stacks(StackName="OptimusFoundation")["Stacks"][0]
    return str(stack["Outputs"][0]["OutputValue"])


def config(**overrides: Any) -> KitConfig:
    context = {
        "endpoints": {"h1": {"models": ["h1", "tissue-seg"], "artifact": "kit://h1/v1/"}},
        "image": IMAGE,
        **overrides,
    }
    return load_config(context)


def stubbed(session: boto3.Session, quota: float = 16, media_type: str = DOCKER_V2) -> dict[str, Any]:
    quotas, ecr = session.client("service-quotas"), session.client("ecr")
    quota_stub, ecr_stub = Stubber(quotas), Stubber(ecr)
    listed = {"QuotaName": "ml.g5.xlarge for endpoint usage", "QuotaCode": "L-1928E07B", "Value": quota}
    quota_stub.add_response("list_service_quotas", {"Quotas": [listed]}, {"ServiceCode": "sagemaker"})
    image = {"imageDetails": [{"imageManifestMediaType": media_type, "imageTags": ["0.1.0"]}]}
    ecr_stub.add_response(
        "describe_images",
        image,
        {"registryId": ACCOUNT, "repositoryName": "optimus-serving", "imageIds": [{"imageTag": "0.1.0"}]},
    )
    quota_stub.activate()
    ecr_stub.activate()
    return {"service-quotas": quotas, "ecr": ecr}


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name.split(" ")[0] if c.name.startswith("quota") else c.name: c for c in checks}


def test_a_ready_account_passes_every_check(aws: boto3.Session) -> None:
    checks = preflight(config(), aws, stubbed(aws))
    assert [c for c in checks if not c.passed] == []
    assert sorted(c.name for c in checks) == sorted(
        [
            "quota 'ml.g5.xlarge for endpoint usage'", "CDK bootstrap", "autoscaling service-linked role",
            f"image {IMAGE}", "artifact of h1", "log group /aws/sagemaker/Endpoints/optimus-h1",
            "instance type of optimus-h1",
        ]
    )  # fmt: skip
    quota = next(c for c in checks if c.name.startswith("quota"))
    assert quota.detail == "16 available, 8 needed (h1: maxInstances 4 x 2 fleet(s) in an update)"


def test_each_problem_fails_with_its_fix(aws: boto3.Session, artifact: Path) -> None:
    aws.client("iam").delete_role(RoleName=SCALING_ROLE)
    aws.client("cloudformation").delete_stack(StackName="CDKToolkit")
    bucket = artifact_bucket(aws)
    weights = next(rel for rel in json.loads((artifact / "manifest.json").read_text())["sha256"])
    aws.client("s3").put_object(Bucket=bucket, Key=f"h1/v1/{weights}", Body=b"other", Metadata={"sha256": "0" * 64})
    aws.client("logs").create_log_group(logGroupName="/aws/sagemaker/Endpoints/optimus-h1")  # a destroy kept it
    checks = {
        c.name: c
        for c in preflight(
            config(), aws, stubbed(aws, quota=0, media_type="application/vnd.oci.image.manifest.v1+json")
        )
    }
    assert not any(c.passed for c in checks.values() if not c.name.startswith("instance type"))
    assert "--quota-code L-1928E07B --desired-value 8" in checks["quota 'ml.g5.xlarge for endpoint usage'"].fix
    assert checks["CDK bootstrap"].fix.startswith("node_modules/.bin/cdk bootstrap")
    assert "create-service-linked-role" in checks["autoscaling service-linked role"].fix
    assert (
        "SageMaker refuses" in checks[f"image {IMAGE}"].detail
        and "oci-mediatypes=false" in checks[f"image {IMAGE}"].fix
    )
    assert f"{weights}: sha256 {'0' * 64} in S3" in checks["artifact of h1"].detail
    assert "--import-existing-resources" in checks["log group /aws/sagemaker/Endpoints/optimus-h1"].fix


def test_imported_key_policy_is_checked(aws: boto3.Session) -> None:
    kms = aws.client("kms")
    statements = key_policy_statements(config(), ACCOUNT, REGION)
    good = kms.create_key(Policy=json.dumps({"Version": "2012-10-17", "Statement": statements}))["KeyMetadata"]["Arn"]
    short = json.dumps({"Version": "2012-10-17", "Statement": statements[:1]})
    bad = kms.create_key(Policy=short)["KeyMetadata"]["Arn"]
    for key, passed in ((good, True), (bad, False)):
        (check,) = [c for c in preflight(config(kmsKeyArn=key), aws, stubbed(aws)) if c.name.startswith("key policy")]
        assert check.passed is passed
    assert (
        check.detail == "lacks EndpointLogGroups, AlarmsToEncryptedTopic"
        and "logs.eu-west-1.amazonaws.com" in check.fix
    )


def test_subnets_in_one_zone_and_an_instance_type_change_fail(aws: boto3.Session) -> None:
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
        for i in range(2)
    ]
    sagemaker = aws.client("sagemaker")
    sagemaker.create_model(
        ModelName="m", ExecutionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/r", PrimaryContainer={"Image": IMAGE}
    )
    variant = {
        "VariantName": "AllTraffic",
        "ModelName": "m",
        "InstanceType": "ml.g4dn.xlarge",
        "InitialInstanceCount": 1,
    }
    sagemaker.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[variant])
    sagemaker.create_endpoint(EndpointName="optimus-h1", EndpointConfigName="c")
    aws.client("application-autoscaling").register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId="endpoint/optimus-h1/variant/AllTraffic",
        ScalableDimension="sagemaker:variant:DesiredInstanceCount", MinCapacity=1, MaxCapacity=4,
    )  # fmt: skip
    cfg = config(vpcSubnetIds=subnets, vpcSecurityGroupIds=["sg-0123456789abcdef0"])
    checks = {c.name: c for c in preflight(cfg, aws, stubbed(aws))}
    assert not checks["VPC subnets"].passed and "two Availability Zones" in checks["VPC subnets"].fix
    change = checks["instance type of optimus-h1"]
    assert not change.passed and "-c autoscaling=false" in change.fix
    assert "ml.g4dn.xlarge -> ml.g5.xlarge" in change.detail


def test_the_command_exits_1_with_json(aws: boto3.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    clients = stubbed(aws, quota=2)
    real = boto3.Session.client
    monkeypatch.setattr(boto3.Session, "client", lambda self, name, **kw: clients.get(name) or real(self, name, **kw))
    endpoints = json.dumps({"h1": {"models": ["h1", "tissue-seg"], "artifact": "kit://h1/v1/"}})
    report = tmp_path / "preflight.json"
    status = main(["preflight", "--json", str(report), "-c", f"image={IMAGE}", "-c", f"endpoints={endpoints}"])
    out = capsys.readouterr().out
    assert status == 1 and "FAIL quota 'ml.g5.xlarge for endpoint usage': 2 available, 8 needed" in out
    assert "6/7 checks passed; failed: quota" in out
    assert [c["passed"] for c in json.loads(report.read_text())].count(False) == 1
    assert main(["preflight", "-c", "maxInstance=4"]) == 2
    assert "unknown context key(s) maxInstance" in capsys.readouterr().err


def test_quota_counts_an_async_endpoints_own_maximum_and_its_blue_green_updates(aws: boto3.Session) -> None:
    endpoints = {
        "h1": {"models": ["h1", "tissue-seg"], "artifact": "kit://h1/v1/"},
        "slides": {"models": ["h1", "tissue-seg"], "artifact": "kit://h1/v1/", "async": {"maxInstances": 10}},
    }
    checks = preflight(config(endpoints=endpoints, deployment="rolling", minInstances=2), aws, stubbed(aws))
    quota = next(c for c in checks if c.name.startswith("quota"))
    assert not quota.passed  # 4 + 1 (rolling) + 10 x 2 (the async endpoint updates blue/green) = 25 > 16
    assert quota.detail == (
        "16 available, 25 needed (h1: maxInstances 4 x 1 fleet(s) + slides: maxInstances 10 x 2 fleet(s) "
        "in an update (+1 each, rolling))"
    )


def with_package(artifact: Path, **package: Any) -> Manifest:
    """The demo artifact's manifest with tissue-seg described as an AOTInductor package."""
    manifest = Manifest.model_validate_json((artifact / "manifest.json").read_text())
    facts = {"device": "cuda", "cuda_arch": "sm_86", "cpu_isa": None, "shapes_from": "probe"} | package
    entries = [
        e.model_copy(update={"format": "aoti-package", "package": AotiPackage(**facts)})
        if e.name == "tissue-seg"
        else e
        for e in manifest.models
    ]
    return manifest.model_copy(update={"models": entries})


def test_packages_are_reported_and_checked_against_the_gpu_and_the_image_torch(artifact: Path) -> None:
    image_torch = image_default_torch()
    fits = with_package(artifact, probed_with_torch=f"{image_torch}+cu128")
    notes, problems = packages(fits, config())
    assert notes == [
        f"tissue-seg: AOTInductor package for sm_86, float32, loaded and probed under torch {image_torch}+cu128"
    ]
    assert problems == []
    hopper = with_package(artifact, cuda_arch="sm_90", probed_with_torch="2.9.1")
    _, problems = packages(hopper, config())
    assert problems == [
        "tissue-seg holds sm_90 kernels, ml.g5.xlarge's NVIDIA A10G is sm_86",
        f"tissue-seg was loaded under torch 2.9.1, the image has torch {image_torch}",
    ]
    assert packages(hopper, config(instanceType="ml.p5.48xlarge", torchVersion="2.9.1"))[1] == []
    unloaded = with_package(artifact, probed_with_torch=None, shapes_from="model_metadata.json")
    notes, problems = packages(unloaded, config())
    assert "never loaded (packaged without its GPU)" in notes[0] and problems == []


def test_preflight_fails_an_uploaded_artifact_whose_package_does_not_fit(aws: boto3.Session, artifact: Path) -> None:
    bucket = artifact_bucket(aws)
    manifest = with_package(artifact, cuda_arch="sm_90", probed_with_torch="2.9.1")
    aws.client("s3").put_object(Bucket=bucket, Key="h1/v1/manifest.json", Body=manifest.model_dump_json().encode())
    check = by_name(preflight(config(), aws, stubbed(aws)))["artifact of h1"]
    assert not check.passed and "holds sm_90 kernels" in check.detail and "torchVersion" in check.fix


def test_a_missing_artifact_names_what_is_not_there(aws: boto3.Session, artifact: Path) -> None:
    """Each not-found by name (it once said only 's3://BUCKET/h1/v1/: Not Found', or S3's words for the manifest)."""
    bucket = artifact_bucket(aws)
    weights = next(rel for rel in json.loads((artifact / "manifest.json").read_text())["sha256"])
    aws.client("s3").delete_object(Bucket=bucket, Key=f"h1/v1/{weights}")
    endpoints = {
        "h1": {"models": ["h1", "tissue-seg"], "artifact": "kit://h1/v1/"},
        "h2": {"models": ["h1"], "artifact": "kit://h1/v2/"},
        "h3": {"models": ["h1"], "artifact": "kit://h1/model.tar.gz"},
    }
    checks = by_name(preflight(config(endpoints=endpoints), aws, stubbed(aws)))
    assert f"{weights}: not in S3" in checks["artifact of h1"].detail
    assert checks["artifact of h2"].detail == f"s3://{bucket}/h1/v2/: no manifest.json there"
    assert checks["artifact of h3"].detail == f"s3://{bucket}/h1/model.tar.gz: no such object"
    assert not any(checks[f"artifact of {name}"].passed for name in endpoints)
    assert checks["artifact of h2"].fix.startswith("python -m kit upload build/h2/model s3://")


def test_an_endpoint_that_cannot_be_described_is_not_taken_for_one_not_deployed(aws: boto3.Session) -> None:
    """AccessDenied on DescribeEndpoint is raised (the CLI names it), not passed as "not deployed yet"."""
    from botocore.exceptions import ClientError

    from kit.deploy.preflight import Context, instance_type

    sagemaker = aws.client("sagemaker")
    assert instance_type(Context(config(), aws, {"sagemaker": sagemaker}), "h1").detail == "not deployed yet"
    with Stubber(sagemaker) as stub:
        stub.add_client_error("describe_endpoint", "AccessDeniedException", "not authorized: DescribeEndpoint")
        with pytest.raises(ClientError, match="AccessDenied"):
            instance_type(Context(config(), aws, {"sagemaker": sagemaker}), "h1")


@pytest.mark.parametrize(
    ("says", "passed", "words"),
    [
        ('echo \'[["Backing Filesystem","extfs"],["Supports d_type","true"]]\'', True, "Docker v2 manifest"),
        ('echo \'[["driver-type","io.containerd.snapshotter.v1"]]\'', False, "OCI index that SageMaker refuses"),
        ("echo 'Cannot connect to the Docker daemon' >&2; exit 1", False, "Cannot connect to the Docker daemon"),
    ],
    ids=["classic-store", "containerd-store", "no-daemon"],
)
def test_an_image_asset_is_checked_against_the_docker_that_builds_it(
    aws: boto3.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, says: str, passed: bool, words: str
) -> None:
    """image=asset: cdk deploy pushes what the local Docker (CDK_DOCKER) stores; from containerd's image store, an
    OCI index with an attestation, which SageMaker refuses at CreateModel."""
    docker = tmp_path / "docker"
    docker.write_text(f'#!/bin/sh\n[ "$1 $2 $3" = "info --format {{{{json .DriverStatus}}}}" ] || exit 9\n{says}\n')
    docker.chmod(0o755)
    monkeypatch.setenv("CDK_DOCKER", str(docker))
    check = by_name(preflight(config(image="asset"), aws, stubbed(aws)))["image asset build"]
    assert check.passed is passed and words in check.detail, check
    assert passed or check.fix


def test_an_image_asset_without_docker_fails_naming_it(aws: boto3.Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDK_DOCKER", "no-such-docker")
    check = by_name(preflight(config(image="asset"), aws, stubbed(aws)))["image asset build"]
    assert not check.passed and "no no-such-docker here" in check.detail


def test_subnets_without_a_route_to_s3_fail_and_a_gateway_endpoint_passes(aws: boto3.Session) -> None:
    """A VPC-attached model downloads its artifact from S3: without a route the create waits 30 minutes, then
    rolls back."""
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{zone}")["Subnet"]
        for i, zone in enumerate("ab")
    ]
    cfg = config(vpcSubnetIds=[s["SubnetId"] for s in subnets], vpcSecurityGroupIds=["sg-0123456789abcdef0"])
    check = by_name(preflight(cfg, aws, stubbed(aws)))["S3 from the VPC"]
    assert not check.passed and "2 subnet(s) have no route to S3" in check.detail and "gateway endpoint" in check.fix
    main = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["RouteTables"][0]["RouteTableId"]
    ec2.create_vpc_endpoint(VpcId=vpc, ServiceName=f"com.amazonaws.{REGION}.s3", RouteTableIds=[main])
    checks = by_name(preflight(cfg, aws, stubbed(aws)))
    assert checks["S3 from the VPC"].passed and checks["VPC subnets"].passed

"""Deploy helpers against moto's S3, CloudFormation and SageMaker (AWS's control plane cannot run here)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from kit import KitError
from kit.__main__ import main
from kit.artifacts.upload import upload_artifact
from kit.deploy.wait import wait_in_service
from kit.endpoints.stack import endpoints_from_stack
from kit.errors import explain
from model_code.manifest import read_manifest
from tests.support.aws import mocked_aws

REGION = "eu-west-1"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.Session]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mocked_aws(monkeypatch, REGION) as session:
        session.client("s3").create_bucket(Bucket="models", CreateBucketConfiguration={"LocationConstraint": REGION})
        yield session


def test_upload_directory_to_prefix_with_checksums(aws: boto3.Session, artifact: Path) -> None:
    written = upload_artifact(artifact, "s3://models/demo/v1/", aws)
    manifest = read_manifest(artifact)
    assert sorted(written) == sorted(f"s3://models/demo/v1/{rel}" for rel in [*manifest.sha256, "manifest.json"])
    s3 = aws.client("s3")
    for rel, digest in manifest.sha256.items():
        head = s3.head_object(Bucket="models", Key=f"demo/v1/{rel}")
        assert head["Metadata"]["sha256"] == digest


def test_upload_tarball_to_key(aws: boto3.Session, artifact: Path) -> None:
    tarball = artifact.parent / "model.tar.gz"
    assert upload_artifact(tarball, "s3://models/demo/", aws) == ["s3://models/demo/model.tar.gz"]
    assert (
        aws.client("s3").head_object(Bucket="models", Key="demo/model.tar.gz")["ContentLength"]
        == tarball.stat().st_size
    )


def test_tampered_directory_is_refused_before_upload(aws: boto3.Session, artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    copy.mkdir()
    for path in artifact.rglob("*"):
        if path.is_file():
            target = copy / path.relative_to(artifact)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (copy / "h1" / "weights.safetensors").write_bytes(b"tampered")
    from model_code.errors import ArtifactError

    with pytest.raises(ArtifactError, match="does not match the manifest"):
        upload_artifact(copy, "s3://models/bad/", aws)
    assert "Contents" not in aws.client("s3").list_objects_v2(Bucket="models", Prefix="bad/")


def test_upload_refuses_bad_targets(aws: boto3.Session, artifact: Path) -> None:
    with pytest.raises(KitError, match="prefix ending in '/'"):
        upload_artifact(artifact, "s3://models/demo", aws)
    with pytest.raises(KitError, match="is not s3://BUCKET/KEY"):
        upload_artifact(artifact, "models/demo/", aws)
    with pytest.raises(KitError, match="'s3://models/' is not s3://BUCKET/KEY: it names no key"):
        upload_artifact(artifact.parent / "model.tar.gz", "s3://models/", aws)  # it once sent Key=''
    with pytest.raises(KitError, match="does not exist"):
        upload_artifact(artifact / "nope.tar.gz", "s3://models/x", aws)


def test_endpoints_from_stack_outputs(aws: boto3.Session) -> None:
    template = {
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {
            "H1EndpointName": {"Value": "optimus-h1"},
            "H1Models": {"Value": "h1,tissue-seg"},
            "MEndpointName": {"Value": "optimus-m"},
            "MModels": {"Value": "m-optimus,tissue-seg"},
        },
    }
    aws.client("cloudformation").create_stack(StackName="OptimusEndpoints", TemplateBody=json.dumps(template))
    assert endpoints_from_stack("OptimusEndpoints", aws) == {
        "optimus-h1": ["h1", "tissue-seg"],
        "optimus-m": ["m-optimus", "tissue-seg"],
    }
    aws.client("cloudformation").create_stack(
        StackName="Other",
        TemplateBody=json.dumps({"Resources": template["Resources"], "Outputs": {"X": {"Value": "y"}}}),
    )
    with pytest.raises(KitError, match="no <Name>EndpointName outputs"):
        endpoints_from_stack("Other", aws)


def _endpoint(aws: boto3.Session) -> None:
    sagemaker = aws.client("sagemaker")
    role = "arn:aws:iam::123456789012:role/sagemaker"
    sagemaker.create_model(
        ModelName="m",
        ExecutionRoleArn=role,
        PrimaryContainer={"Image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/x:1"},
    )
    sagemaker.create_endpoint_config(
        EndpointConfigName="c",
        # moto's list of instance types predates ml.g5; the helper does not look at the type.
        ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": "m", "InstanceType": "ml.g4dn.xlarge", "InitialInstanceCount": 1}
        ],
    )
    sagemaker.create_endpoint(EndpointName="optimus-h1", EndpointConfigName="c")


def test_wait_returns_once_in_service(aws: boto3.Session) -> None:
    _endpoint(aws)
    assert wait_in_service("optimus-h1", aws, timeout_s=5, poll_s=0.01)["EndpointStatus"] == "InService"


def _stubbed(statuses: list[dict[str, str]]) -> boto3.Session:
    """moto cannot make an endpoint fail or hang: a botocore Stubber answers DescribeEndpoint instead."""
    client = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(client)
    for status in statuses:
        stubber.add_response(
            "describe_endpoint",
            {
                "EndpointName": "optimus-h1",
                "EndpointArn": "arn:aws:sagemaker:eu-west-1:123456789012:endpoint/optimus-h1",
                "EndpointConfigName": "c",
                "CreationTime": "2026-01-01T00:00:00Z",
                "LastModifiedTime": "2026-01-01T00:00:00Z",
                **status,
            },
        )
    stubber.activate()

    class Session:
        def client(self, name: str) -> object:
            assert name == "sagemaker"
            return client

    return Session()  # type: ignore[return-value]


def test_wait_reports_sagemakers_failure_reason() -> None:
    session = _stubbed(
        [
            {"EndpointStatus": "Creating"},
            {"EndpointStatus": "Failed", "FailureReason": "The primary container did not pass the ping health check."},
        ]
    )
    with pytest.raises(
        KitError, match="optimus-h1 is Failed: The primary container did not pass the ping health check"
    ):
        wait_in_service("optimus-h1", session, timeout_s=5, poll_s=0.01)


def test_wait_gives_up_after_the_timeout() -> None:
    session = _stubbed([{"EndpointStatus": "Creating"}] * 3)
    with pytest.raises(KitError, match=r"still Creating after 0\.02 s"):
        wait_in_service("optimus-h1", session, timeout_s=0.02, poll_s=0.015)


def _stack(aws: boto3.Session) -> None:
    outputs = {"H1EndpointName": {"Value": "optimus-h1"}, "H1Models": {"Value": "h1,tissue-seg"}}
    template = {"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}, "Outputs": outputs}
    aws.client("cloudformation").create_stack(StackName="OptimusEndpoints", TemplateBody=json.dumps(template))


def test_cli_upload_and_wait(aws: boto3.Session, artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upload", str(artifact.parent / "model.tar.gz"), "s3://models/v2/", "--region", REGION]) == 0
    assert "uploaded and verified s3://models/v2/model.tar.gz" in capsys.readouterr().out
    _endpoint(aws)
    assert main(["wait", "--endpoint", "optimus-h1", "--region", REGION, "--poll", "0.01"]) == 0
    assert "optimus-h1 is InService" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["smoke", "--stack", "NoSuchStack"], "DescribeStacks: Stack with id NoSuchStack does not exist"),
        (["wait", "--endpoint", "nowhere"], "DescribeEndpoint: Could not find endpoint"),
        (
            ["upload", "ARTIFACT", "s3://no-such-bucket/x/"],
            "does not exist (NoSuchBucket): check the name and --region",
        ),
    ],
)
def test_cli_names_what_is_missing_in_one_line(
    aws: boto3.Session, artifact: Path, capsys: pytest.CaptureFixture[str], args: list[str], said: str
) -> None:
    args = [str(artifact.parent / "model.tar.gz") if a == "ARTIFACT" else a for a in args]
    assert main([*args, "--region", REGION]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and said in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises((ClientError, S3UploadFailedError)):  # --debug: the real exception and its traceback
        main([*args, "--region", REGION, "--debug"])


def test_cli_smoke_reads_the_stack(aws: boto3.Session, capsys: pytest.CaptureFixture[str]) -> None:
    """The stack's endpoints exist in no moto runtime: every model's metadata check fails, exit 1."""
    _stack(aws)
    assert main(["smoke", "--stack", "OptimusEndpoints", "--region", REGION, "--requests", "2"]) == 1
    out = capsys.readouterr().out
    assert "FAIL optimus-h1 h1          metadata" in out and "FAIL optimus-h1 tissue-seg  metadata" in out


def test_access_denied_names_the_credentials() -> None:
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "not authorized"}}, "DescribeStacks")
    message, status = explain(denied)  # type: ignore[misc]
    assert status == 2 and message.startswith("DescribeStacks: not authorized (AccessDenied): these credentials")
    missing = ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadObject")  # S3's HEAD: no body
    assert explain(missing) == ("HeadObject: Not Found (404): check the name and --region", 2)
    throttled = ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "DescribeEndpoint")
    assert explain(throttled) == ("DescribeEndpoint: slow down (ThrottlingException)", 1)
    assert explain(ValueError("a bug")) is None

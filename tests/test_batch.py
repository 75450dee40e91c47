"""`kit batch` against moto (CloudFormation outputs, S3, SageMaker's transform jobs): the request validated
against botocore's model, the input and output kept to the role's prefixes, a failed job's reason."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from kit.__main__ import main
from kit.cohorts.batch import job_request
from kit.cohorts.deployment import find_deployment
from tests.support.aws import mocked_aws
from tests.support.cohort_aws import BUCKET, KEY_ARN, REGION, deploy
from tests.support.service_model import request_errors

INPUT = f"s3://{BUCKET}/optimus-h1/batch/input/run1/"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.Session]:
    with mocked_aws(monkeypatch, REGION) as session:
        deploy(session)
        s3 = session.client("s3")
        for i in range(3):
            s3.put_object(Bucket=BUCKET, Key=f"optimus-h1/batch/input/run1/slide-{i}.jsonl", Body=b'{"x": 0}\n')
        monkeypatch.setattr("kit.cohorts.batch.session", lambda args: session)
        yield session


def batch(*extra: str) -> int:
    return main(["batch", "--endpoint", "h1", "--input", INPUT, "--poll", "0", "--job-name", "job-1", *extra])


def test_transform_job_on_the_stacks_model(aws: boto3.Session, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[dict[str, Any]] = []
    aws.events.register("provide-client-params.sagemaker.CreateTransformJob", lambda params, **_: calls.append(params))
    assert batch("--instance-count", "2") == 0
    # moto 5.2.5's models always say EnableNetworkIsolation False (the stack's say True): the line reports it
    assert "model H1Model-abc (network isolation OFF)" in capsys.readouterr().out
    aws.events.register(
        "after-call.sagemaker.DescribeModel", lambda parsed, **_: parsed.update(EnableNetworkIsolation=True)
    )
    calls.clear()
    assert batch("--instance-count", "2", "--job-name", "job-1") == 0
    out = capsys.readouterr().out
    assert "started job-1: 3 file(s) on 2 x ml.g5.xlarge, model H1Model-abc (network isolation on)" in out
    assert "job-1 completed" in out
    (request,) = calls
    assert request["ModelName"] == "H1Model-abc" and request["BatchStrategy"] == "MultiRecord"
    assert request["TransformInput"]["SplitType"] == "Line"
    assert request["TransformInput"]["ContentType"] == "application/jsonlines"
    assert request["TransformOutput"] == {
        "S3OutputPath": f"s3://{BUCKET}/optimus-h1/batch/output/job-1/",
        "Accept": "application/jsonlines",
        "AssembleWith": "Line",
        "KmsKeyId": KEY_ARN,
    }
    assert request["TransformResources"] == {
        "InstanceType": "ml.g5.xlarge", "InstanceCount": 2, "TransformAmiVersion": "al2-ami-sagemaker-batch-gpu-535"
    }  # fmt: skip
    assert request["MaxConcurrentTransforms"] * request["MaxPayloadInMB"] <= 100
    assert request_errors("sagemaker", "CreateTransformJob", request) == []


def test_ebs_instance_types_get_the_volume_key() -> None:
    args = argparse.Namespace(
        max_concurrent=4, max_payload_mb=25, instance_type="ml.p3.2xlarge", instance_count=1, ami_version="a-1"
    )
    deployment = argparse.Namespace(key_arn=KEY_ARN, model_name="m", endpoint_name="e")
    request = job_request(deployment, "j", INPUT, INPUT, args)  # type: ignore[arg-type]
    assert request["TransformResources"]["VolumeKmsKeyId"] == KEY_ARN


def test_a_failed_job_reports_sagemakers_reason(aws: boto3.Session, capsys: pytest.CaptureFixture[str]) -> None:
    # moto's jobs complete at once: SageMaker's answer for a failed one, over moto's
    failed = {"TransformJobStatus": "Failed", "FailureReason": "ClientError: 415"}
    aws.events.register("after-call.sagemaker.DescribeTransformJob", lambda parsed, **_: parsed.update(failed))
    assert batch() == 1
    err = capsys.readouterr().err
    assert "transform job job-1 Failed: ClientError: 415 (logs: /aws/sagemaker/TransformJobs" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--max-concurrent", "20", "--max-payload-mb", "6"), "--max-concurrent 20 x --max-payload-mb 6 is over 100"),
        (("--input", f"s3://{BUCKET}/elsewhere/"), "the model's role reads only s3://"),
        (("--output", f"s3://{BUCKET}/elsewhere/"), "the model's role writes only under"),
        (("--input", f"s3://{BUCKET}/optimus-h1/batch/input/empty/"), "no files there"),
        (("--instance-count", "101"), "--instance-count 101: 1 to 100"),
        (("--endpoint", "nope"), "has no endpoint 'nope' (it has optimus-h1, optimus-h1-slides)"),
    ],
)
def test_refusals_name_the_option(
    aws: boto3.Session, extra: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert batch(*extra) == 2
    assert message in capsys.readouterr().err


def test_deployment_by_entry_or_endpoint_name(aws: boto3.Session) -> None:
    by_entry = find_deployment(aws, "OptimusEndpoints", "h1-slides")
    assert by_entry == find_deployment(aws, "OptimusEndpoints", "optimus-h1-slides")
    assert by_entry.serving == "async" and by_entry.uri("AsyncInput") == f"s3://{BUCKET}/optimus-h1-slides/async/input/"
    assert set(by_entry.topics) == {"AsyncSuccessTopic", "AsyncErrorTopic"}
    assert find_deployment(aws, "OptimusEndpoints", "h1").topics == {}

"""Async endpoints in the stacks: AsyncInferenceConfig in the results bucket, a role that writes only its own
prefixes, scaling on the backlog down to zero (woken by a step policy), queue alarms and dashboard, outputs
for batch transform; a real-time and an async endpoint side by side from one artifact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from aws_cdk import App
from aws_cdk.assertions import Template

from app import build
from kit.artifacts.builder import package
from stacks.config import ConfigError, load_config
from stacks.endpoint_role import INPUTS, OUTPUTS
from tests.support.stacks import context

RESULTS = {"Fn::ImportValue": "optimus-results-bucket"}


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Template, dict[str, Any], Path]:
    """h1 real-time and h1-slides async from the same artifact; m async with its own settings."""
    root = tmp_path_factory.mktemp("packages")
    h1 = str(package(["h1", "tissue-seg"], root / "H1", demo=True).parent)
    m = str(package(["m-optimus", "tissue-seg"], root / "M", demo=True).parent)
    endpoints = {
        "h1": {"models": ["h1", "tissue-seg"], "artifact": h1},
        "h1-slides": {"models": ["h1", "tissue-seg"], "artifact": h1, "async": True},
        "m": {
            "models": ["m-optimus", "tissue-seg"],
            "artifact": m,
            "async": {"maxConcurrentInvocationsPerInstance": 2, "minInstances": 1, "maxInstances": 8,
                      "backlogPerInstance": 3, "backlogAgeAlarmS": 7200},
        },
    }  # fmt: skip
    outdir = tmp_path_factory.mktemp("cdk.out")
    app = App(context=context({"H1": h1, "M": m}, endpoints=endpoints), outdir=str(outdir))
    _, stack = build(app)
    app.synth()  # cdk-nag's AwsSolutions and HIPAA packs: any unacknowledged finding raises here
    template = Template.from_stack(stack)
    return template, template.to_json(), outdir


def of(template: dict[str, Any], kind: str, logical_prefix: str) -> dict[str, Any]:
    (found,) = [
        r["Properties"] for k, r in template["Resources"].items() if r["Type"] == kind and k.startswith(logical_prefix)
    ]
    return found  # type: ignore[no-any-return]


def in_results(key: str) -> dict[str, Any]:
    return {"Fn::Join": ["", ["s3://", RESULTS, f"/{key}"]]}


def test_cfn_lint_reports_nothing(synthesized: tuple[Template, dict[str, Any], Path]) -> None:
    templates = sorted(str(p) for p in synthesized[2].glob("*.template.json"))
    lint = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), *templates], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_async_config_writes_to_the_results_bucket_encrypted_and_notifies(
    synthesized: tuple[Template, dict[str, Any], Path],
) -> None:
    template = synthesized[1]
    config = of(template, "AWS::SageMaker::EndpointConfig", "H1SlidesConfig")
    output = config["AsyncInferenceConfig"]["OutputConfig"]
    assert output["S3OutputPath"] == in_results("optimus-h1-slides/async/output/")
    assert output["S3FailurePath"] == in_results("optimus-h1-slides/async/failures/")
    assert "Key" in json.dumps(output["KmsKeyId"])
    topics = output["NotificationConfig"]
    assert topics["SuccessTopic"]["Ref"].startswith("H1SlidesAsyncSuccess")
    assert topics["ErrorTopic"]["Ref"].startswith("H1SlidesAsyncError")
    assert config["AsyncInferenceConfig"]["ClientConfig"] == {"MaxConcurrentInvocationsPerInstance": 1}
    (variant,) = config["ProductionVariants"]
    assert variant["InitialInstanceCount"] == 1 and "RoutingConfig" not in variant
    m = of(template, "AWS::SageMaker::EndpointConfig", "MConfig")
    assert m["AsyncInferenceConfig"]["ClientConfig"] == {"MaxConcurrentInvocationsPerInstance": 2}
    realtime = of(template, "AWS::SageMaker::EndpointConfig", "H1Config")
    assert "AsyncInferenceConfig" not in realtime
    assert realtime["ProductionVariants"][0]["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
    for topic in ("H1SlidesAsyncSuccess", "H1SlidesAsyncError"):
        assert "KmsMasterKeyId" in of(template, "AWS::SNS::Topic", topic)
        policy = json.dumps(of(template, "AWS::SNS::TopicPolicy", topic))
        assert '"aws:SecureTransport": "false"' in policy and '"Effect": "Deny"' in policy


def test_role_reads_inputs_and_writes_only_its_own_output_prefixes(
    synthesized: tuple[Template, dict[str, Any], Path],
) -> None:
    template = synthesized[1]
    for logical, name in (("H1Slides", "optimus-h1-slides"), ("H1", "optimus-h1")):
        policy = of(template, "AWS::IAM::ManagedPolicy", f"{logical}ExecutionPolicy")
        statements = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
        writers = [s for s in statements.values() if "s3:PutObject" in json.dumps(s["Action"])]
        assert [w["Sid"] for w in writers] == ["WriteResults"]
        prefixes = [r["Fn::Join"][1][-1] for r in statements["WriteResults"]["Resource"]]
        assert prefixes == [f"/{name}/{p}*" for p in OUTPUTS]
        assert all(RESULTS in r["Fn::Join"][1] for r in statements["WriteResults"]["Resource"])
        assert [r["Fn::Join"][1][-1] for r in statements["ReadRequests"]["Resource"]] == [
            f"/{name}/{p}*" for p in INPUTS
        ]
        assert statements["ListBatchInput"]["Condition"] == {"StringLike": {"s3:prefix": [f"{name}/batch/input/*"]}}
        assert statements["EncryptResults"]["Action"] == ["kms:Encrypt", "kms:GenerateDataKey"]
        notify = statements.get("NotifyOutcomes")
        if logical == "H1":
            assert notify is None  # a real-time endpoint has no topics
        else:
            assert notify is not None and notify["Action"] == "sns:Publish"
            refs = sorted(r["Ref"] for r in notify["Resource"])
            assert refs[0].startswith("H1SlidesAsyncError") and refs[1].startswith("H1SlidesAsyncSuccess")


def test_async_scales_on_backlog_to_zero_and_wakes_on_backlog_without_capacity(
    synthesized: tuple[Template, dict[str, Any], Path],
) -> None:
    template = synthesized[1]
    target = of(template, "AWS::ApplicationAutoScaling::ScalableTarget", "H1SlidesScaling")
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 4)
    m_target = of(template, "AWS::ApplicationAutoScaling::ScalableTarget", "MScaling")
    assert (m_target["MinCapacity"], m_target["MaxCapacity"]) == (1, 8)
    backlog = of(template, "AWS::ApplicationAutoScaling::ScalingPolicy", "H1SlidesScalingBacklog")
    tracking = backlog["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["CustomizedMetricSpecification"] == {
        "Dimensions": [{"Name": "EndpointName", "Value": "optimus-h1-slides"}],
        "MetricName": "ApproximateBacklogSizePerInstance",
        "Namespace": "AWS/SageMaker",
        "Statistic": "Average",
    }
    assert tracking["TargetValue"] == 2
    assert (
        of(template, "AWS::ApplicationAutoScaling::ScalingPolicy", "MScalingBacklog")[
            "TargetTrackingScalingPolicyConfiguration"
        ]["TargetValue"]
        == 3
    )
    wake = of(template, "AWS::ApplicationAutoScaling::ScalingPolicy", "H1SlidesWakeFromZero")
    assert wake["PolicyType"] == "StepScaling"
    assert wake["StepScalingPolicyConfiguration"]["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}
    ]
    alarm = of(template, "AWS::CloudWatch::Alarm", "H1SlidesBacklogWithoutCapacity")
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity" and alarm["Threshold"] == 1
    assert alarm["Dimensions"] == [{"Name": "EndpointName", "Value": "optimus-h1-slides"}]
    assert alarm["AlarmActions"] == [{"Ref": next(k for k in template["Resources"] if k.startswith("H1SlidesWake"))}]
    policies = [
        r["Properties"]["PolicyName"]
        for k, r in template["Resources"].items()
        if k.startswith("H1Slides") and r["Type"] == "AWS::ApplicationAutoScaling::ScalingPolicy"
    ]
    assert len(policies) == 2, "no invocation-based policies on an async endpoint (it publishes no such metric)"


def test_async_alarms_rollback_and_dashboard(synthesized: tuple[Template, dict[str, Any], Path]) -> None:
    template = synthesized[1]
    names = {
        r["Properties"]["AlarmName"]
        for k, r in template["Resources"].items()
        if k.startswith("H1Slides") and r["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert names == {
        "optimus-h1-slides-5xx", "optimus-h1-slides-gpu-memory", "optimus-h1-slides-invocation-failures",
        "optimus-h1-slides-old-backlog", "optimus-h1-slides-backlog-without-capacity",
    }  # fmt: skip
    old = of(template, "AWS::CloudWatch::Alarm", "MOldBacklog")
    assert (old["MetricName"], old["Threshold"]) == ("ApproximateAgeOfOldestRequest", 7200)
    endpoint = of(template, "AWS::SageMaker::Endpoint", "H1SlidesEndpoint")
    rollback = [a["AlarmName"]["Ref"] for a in endpoint["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]]
    assert [r.startswith(("H1SlidesErrors5xx", "H1SlidesInvocationFailures")) for r in rollback] == [True, True]
    routing = endpoint["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing["Type"] == "ALL_AT_ONCE"
    body = json.dumps(of(template, "AWS::CloudWatch::Dashboard", "Dashboard"))
    for metric in ("ApproximateBacklogSize", "ApproximateBacklogSizePerInstance", "TimeInBacklog",
                   "ApproximateAgeOfOldestRequest", "TotalProcessingTime", "InvocationFailures"):  # fmt: skip
        assert f'\\"{metric}\\"' in body, metric


def test_realtime_and_async_share_one_artifact_and_output_what_batch_needs(
    synthesized: tuple[Template, dict[str, Any], Path],
) -> None:
    template = synthesized[1]
    h1, slides = (of(template, "AWS::SageMaker::Model", f"{n}Model") for n in ("H1", "H1Slides"))
    assert h1["PrimaryContainer"]["ModelDataUrl"] == slides["PrimaryContainer"]["ModelDataUrl"]
    outputs = template["Outputs"]
    assert outputs["H1SlidesServing"]["Value"] == "async" and outputs["H1Serving"]["Value"] == "real-time"
    assert outputs["H1SlidesAsyncInput"]["Value"] == "optimus-h1-slides/async/input/"
    assert outputs["H1SlidesAsyncOutput"]["Value"] == "optimus-h1-slides/async/output/"
    assert outputs["H1BatchInput"]["Value"] == "optimus-h1/batch/input/"
    assert outputs["H1BatchOutput"]["Value"] == "optimus-h1/batch/output/"
    assert outputs["H1ModelName"]["Value"]["Fn::GetAtt"][1] == "ModelName"
    assert outputs["H1ExecutionRoleArn"]["Value"]["Fn::GetAtt"][1] == "Arn"
    assert outputs["FoundationStack"]["Value"] == "OptimusFoundation"
    assert "H1AsyncInput" not in outputs


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"minInstances": 5, "maxInstances": 2}, r"endpoints.h1.async: minInstances \(5\) is more than maxInstances"),
        ({"minInstances": 6}, r"minInstances \(6\) is more than maxInstances \(4\)"),
        ({"queue": 3}, r"endpoints.h1.async.queue: Extra inputs are not permitted"),
        ({"maxConcurrentInvocationsPerInstance": 0}, r"maxConcurrentInvocationsPerInstance: Input should be greater"),
        ("yes", r"endpoints.h1.async"),
    ],
)
def test_async_settings_errors_name_the_key(block: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({"endpoints": {"h1": {"models": ["h1"], "artifact": "kit://h1/v1/", "async": block}}})


def test_async_flag_and_block() -> None:
    config = load_config({"endpoints": {"a": {"models": ["h1"], "artifact": "kit://a/", "async": True},
                                        "b": {"models": ["h1"], "artifact": "kit://a/", "async": False}}})  # fmt: skip
    assert config.endpoints["a"].serving_async is not None and config.endpoints["a"].serving_async.minInstances == 0
    assert config.endpoints["b"].serving_async is None
    assert config.max_instances(config.endpoints["a"]) == 4

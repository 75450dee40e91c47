"""Every SageMaker, Application Auto Scaling and CloudWatch resource of the synthesized templates, as the API
call CloudFormation makes for it, validated against botocore's own service model: required members, types,
enums, lengths, ranges and patterns. The closest check of these resources that runs without an account."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from aws_cdk import App

from app import build
from kit.artifacts.builder import package
from tests.support.cfn_calls import api_calls
from tests.support.service_model import request_errors
from tests.support.stacks import context


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("packages")
    artifacts = {
        "H1": str(package(["h1", "tissue-seg"], root / "H1", demo=True).parent),
        "M": str(package(["m-optimus", "tissue-seg"], root / "M", demo=True).parent),
    }
    outdir = tmp_path_factory.mktemp("cdk.out")
    endpoints = {  # real-time, and async (scaling to zero) from the same artifact
        "h1": {"models": ["h1", "tissue-seg"], "artifact": artifacts["H1"]},
        "h1-slides": {"models": ["h1", "tissue-seg"], "artifact": artifacts["H1"], "async": {"maxInstances": 10}},
        "m": {"models": ["m-optimus", "tissue-seg"], "artifact": artifacts["M"]},
    }
    app = App(
        context=context(artifacts, instanceType="ml.p3.2xlarge", alarmEmail="a@example.com", endpoints=endpoints),
        outdir=str(outdir),
    )
    build(app)
    app.synth()
    return {p.name.split(".")[0]: json.loads(p.read_text()) for p in Path(outdir).glob("*.template.json")}


def test_every_call_is_valid_for_botocores_service_model(templates: dict[str, dict[str, Any]]) -> None:
    calls = api_calls(templates)
    assert Counter(operation for _, operation, _ in calls) == {
        "CreateModel": 3, "CreateEndpointConfig": 3, "CreateEndpoint": 3, "UpdateEndpoint": 3,
        "RegisterScalableTarget": 3, "PutScalingPolicy": 6, "PutMetricAlarm": 15, "PutDashboard": 1,
    }  # fmt: skip
    problems = [
        f"{operation}: {e}" for service, operation, params in calls for e in request_errors(service, operation, params)
    ]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_what_a_real_account_would_refuse(templates: dict[str, dict[str, Any]]) -> None:
    """The validation above can fail: a wrong enum, a missing member, a value out of range each show up."""
    calls = {operation: params for _, operation, params in api_calls(templates)}
    (async_config,) = [
        p for _, op, p in api_calls(templates) if op == "CreateEndpointConfig" and "AsyncInferenceConfig" in p
    ]
    broken = [
        ("sagemaker", "CreateEndpointConfig", {**calls["CreateEndpointConfig"], "ProductionVariants": [
            {**calls["CreateEndpointConfig"]["ProductionVariants"][0],
             "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING"}}]}),
        ("sagemaker", "CreateModel", {k: v for k, v in calls["CreateModel"].items() if k != "ModelName"}),
        ("sagemaker", "CreateModel", {**calls["CreateModel"], "ExecutionRoleArn": "optimus-role"}),
        ("cloudwatch", "PutMetricAlarm", {**calls["PutMetricAlarm"], "EvaluationPeriods": 0}),
        ("sagemaker", "CreateEndpointConfig", {**async_config, "AsyncInferenceConfig": {
            **async_config["AsyncInferenceConfig"], "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 1001}}}),
        ("sagemaker", "CreateEndpointConfig", {**async_config, "AsyncInferenceConfig": {"OutputConfig": {
            **async_config["AsyncInferenceConfig"]["OutputConfig"], "S3OutputPath": "results/optimus-h1-slides/"}}}),
        ("sagemaker", "CreateEndpoint", {**calls["CreateEndpoint"], "DeploymentConfig": {"BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 7200}}}}),
    ]  # fmt: skip
    for service, operation, params in broken:
        assert request_errors(service, operation, params), operation


def test_async_calls_carry_the_queue_settings(templates: dict[str, dict[str, Any]]) -> None:
    """What the validated calls say for the async endpoint: resolved paths, topics and key, scaling to zero."""
    calls = api_calls(templates)
    (config,) = [p for _, op, p in calls if op == "CreateEndpointConfig" and "AsyncInferenceConfig" in p]
    output = config["AsyncInferenceConfig"]["OutputConfig"]
    bucket = output["S3OutputPath"].split("/")[2]
    assert output["S3OutputPath"] == f"s3://{bucket}/optimus-h1-slides/async/output/"
    assert output["S3FailurePath"] == f"s3://{bucket}/optimus-h1-slides/async/failures/"
    assert output["KmsKeyId"].startswith("arn:aws:kms:") and output["NotificationConfig"]["ErrorTopic"].startswith(
        "arn:aws:sns:"
    )
    (target,) = [p for _, op, p in calls if op == "RegisterScalableTarget" and "h1-slides" in p["ResourceId"]]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 10)
    steps = [p for _, op, p in calls if op == "PutScalingPolicy" and p["PolicyType"] == "StepScaling"]
    assert [p["ResourceId"] for p in steps] == ["endpoint/optimus-h1-slides/variant/AllTraffic"]


def test_dashboard_body_is_json_with_the_instance_metrics(templates: dict[str, dict[str, Any]]) -> None:
    (dashboard,) = [p for _, operation, p in api_calls(templates) if operation == "PutDashboard"]
    body = json.loads(dashboard["DashboardBody"])
    metrics = {m[1] for widget in body["widgets"] for m in widget["properties"].get("metrics", [])}
    assert {
        "GPUUtilization",
        "GPUMemoryUtilization",
        "CPUUtilization",
        "MemoryUtilization",
        "DiskUtilization",
    } <= metrics

"""The CDK app: cdk-nag clean synthesis, cfn-lint, every resource property the kit promises, config errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from aws_cdk import App
from aws_cdk.assertions import Match, Template

from app import build
from kit.artifacts.builder import package
from stacks.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
ECR_IMAGE = "111122223333.dkr.ecr.eu-west-1.amazonaws.com/optimus-serving:0.1.0"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("packages")
    package(["h1", "tissue-seg"], root / "H1", demo=True)
    package(["m-optimus", "tissue-seg"], root / "M", demo=True)
    return {"H1": str(root / "H1"), "M": str(root / "M")}


def context(artifacts: dict[str, str], **overrides: Any) -> dict[str, Any]:
    base = json.loads((REPO / "cdk.json").read_text())["context"]
    base["endpoints"] = {
        "h1": {"models": ["h1", "tissue-seg"], "artifact": artifacts["H1"]},
        "m": {"models": ["m-optimus", "tissue-seg"], "artifact": artifacts["M"]},
    }
    base.update(overrides)
    return base


@pytest.fixture(scope="module")
def synthesized(
    artifacts: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Template, Template, Path]]:
    """The default app, synthesized with cdk-nag's AwsSolutions and HIPAA packs: any finding fails here."""
    outdir = tmp_path_factory.mktemp("cdk.out")
    app = App(context=context(artifacts, alarmEmail="oncall@example.com"), outdir=str(outdir))
    foundation, endpoints = build(app)
    app.synth()
    yield Template.from_stack(foundation), Template.from_stack(endpoints), outdir


def resources(template: Template, kind: str) -> dict[str, Any]:
    return template.find_resources(kind)


def test_synthesis_has_no_unacknowledged_nag_findings(synthesized: tuple[Template, Template, Path]) -> None:
    # The fixture's app.synth() raises on any unacknowledged finding; the report file holds the last pack's.
    report = json.loads((synthesized[2] / "validation-report.json").read_text())
    for pack in report["pluginReports"]:
        assert pack["conclusion"] == "success" and not pack.get("violations")
        for suppressed in pack.get("suppressedViolations", []):
            for construct in suppressed["violatingConstructs"]:
                assert construct["constructPath"].startswith(("OptimusFoundation/", "OptimusEndpoints/"))


def test_without_acknowledgements_both_packs_fail_synthesis(
    artifacts: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("stacks.foundation", "stacks.endpoint"):
        monkeypatch.setattr(f"{module}.acknowledge", lambda *args, reason: None)
    app = App(context=context(artifacts), outdir=str(tmp_path))
    build(app)
    with pytest.raises(RuntimeError, match="ValidationFailed") as caught:
        app.synth()
    findings = re.findall(r"(\S+)\s+\S+\n\s+Acknowledge with '([^']+)'", str(caught.value))
    assert sorted(findings) == sorted(
        [
            ("OptimusEndpoints/H1/ExecutionPolicy/Resource", "AwsSolutions::AwsSolutions-IAM5[Resource::*]"),
            ("OptimusEndpoints/M/ExecutionPolicy/Resource", "AwsSolutions::AwsSolutions-IAM5[Resource::*]"),
            ("OptimusFoundation/AccessLogs/Resource", "HIPAA.Security::HIPAA.Security-S3BucketReplicationEnabled"),
            ("OptimusFoundation/Artifacts/Resource", "HIPAA.Security::HIPAA.Security-S3BucketReplicationEnabled"),
            ("OptimusFoundation/AccessLogs/Resource", "HIPAA.Security::HIPAA.Security-S3DefaultEncryptionKMS"),
            (
                "OptimusEndpoints/H1/Config",
                "HIPAA.Security::HIPAA.Security-SageMakerEndpointConfigurationKMSKeyConfigured",
            ),
            (
                "OptimusEndpoints/M/Config",
                "HIPAA.Security::HIPAA.Security-SageMakerEndpointConfigurationKMSKeyConfigured",
            ),
        ]
    ), "every acknowledgement in stacks/ answers exactly one of these findings"


def test_cfn_lint_reports_nothing(synthesized: tuple[Template, Template, Path]) -> None:
    templates = sorted(str(p) for p in synthesized[2].glob("*.template.json"))
    assert len(templates) == 2
    lint = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), *templates], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_key_buckets_and_repository(synthesized: tuple[Template, Template, Path]) -> None:
    foundation = synthesized[0]
    foundation.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    foundation.has_resource("AWS::KMS::Key", {"DeletionPolicy": "Retain"})
    foundation.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [
                    Match.object_like({"ServerSideEncryptionByDefault": Match.object_like({"SSEAlgorithm": "aws:kms"})})
                ]
            },
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "VersioningConfiguration": {"Status": "Enabled"},
            "LoggingConfiguration": Match.object_like({"DestinationBucketName": Match.any_value()}),
        },
    )
    assert all(b["DeletionPolicy"] == "Retain" for b in resources(foundation, "AWS::S3::Bucket").values())
    policies = json.dumps(resources(foundation, "AWS::S3::BucketPolicy"))
    assert policies.count('"aws:SecureTransport": "false"') == 2  # TLS only, both buckets
    foundation.has_resource_properties(
        "AWS::ECR::Repository",
        {
            "ImageScanningConfiguration": {"ScanOnPush": True},
            "ImageTagMutability": "IMMUTABLE",
            "LifecyclePolicy": Match.object_like(
                {"LifecyclePolicyText": Match.string_like_regexp("imageCountMoreThan")}
            ),
            "EncryptionConfiguration": Match.object_like({"EncryptionType": "KMS"}),
        },
    )
    foundation.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})
    foundation.has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "oncall@example.com"}
    )


def test_execution_roles_are_least_privilege(synthesized: tuple[Template, Template, Path]) -> None:
    endpoints = synthesized[1]
    policies = resources(endpoints, "AWS::IAM::ManagedPolicy")
    assert len(policies) == 2
    assert not resources(endpoints, "AWS::IAM::Policy"), "no inline policies"
    for policy in policies.values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        actions = [a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]
        assert not [a for a in actions if "*" in a], "no wildcard actions"
        by_sid = {s["Sid"]: s for s in statements}
        assert set(by_sid) == {"PullImage", "EcrLogin", "ReadModelData", "DecryptModelDataAndImage", "WriteLogs"}
        assert by_sid["EcrLogin"]["Resource"] == "*" and by_sid["EcrLogin"]["Action"] == "ecr:GetAuthorizationToken"
        assert "GetAtt" in json.dumps(by_sid["WriteLogs"]["Resource"])  # this endpoint's log group only
        model_object = json.dumps(by_sid["ReadModelData"]["Resource"])  # this endpoint's model object only
        assert "*" not in model_object and model_object.endswith('.gz"]]}')
    roles = resources(endpoints, "AWS::IAM::Role")
    assert len(roles) == 2 and all(
        r["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]
        == {"Service": "sagemaker.amazonaws.com"}
        for r in roles.values()
    )


def test_models_endpoint_configs_and_endpoints(synthesized: tuple[Template, Template, Path]) -> None:
    endpoints = synthesized[1]
    endpoints.resource_count_is("AWS::SageMaker::Model", 2)
    endpoints.has_resource_properties(
        "AWS::SageMaker::Model",
        {
            "EnableNetworkIsolation": True,
            "PrimaryContainer": {
                "Image": Match.any_value(),
                "ModelDataUrl": Match.any_value(),
                "Environment": {"OPTIMUS_MODELS": "h1,tissue-seg", "SAGEMAKER_HOSTED": "1"},
            },
        },
    )
    configs = resources(endpoints, "AWS::SageMaker::EndpointConfig")
    for config in configs.values():
        variant = config["Properties"]["ProductionVariants"][0]
        assert variant["InstanceType"] == "ml.g5.xlarge" and variant["InitialInstanceCount"] == 1
        assert variant["InferenceAmiVersion"] == "al2-ami-sagemaker-inference-gpu-3-1"
        assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] >= 600
        assert variant["ModelDataDownloadTimeoutInSeconds"] >= 600
        assert "KmsKeyId" not in config["Properties"]  # ml.g5 NVMe: CreateEndpointConfig refuses a key
    names = sorted(e["Properties"]["EndpointName"] for e in resources(endpoints, "AWS::SageMaker::Endpoint").values())
    assert names == ["optimus-h1", "optimus-m"]
    endpoints.has_resource_properties(
        "AWS::Logs::LogGroup",
        {"LogGroupName": "/aws/sagemaker/Endpoints/optimus-h1", "RetentionInDays": 365, "KmsKeyId": Match.any_value()},
    )


def test_autoscaling_follows_tiles_per_second(synthesized: tuple[Template, Template, Path]) -> None:
    endpoints = synthesized[1]
    endpoints.has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalableTarget",
        {
            "ResourceId": "endpoint/optimus-h1/variant/AllTraffic",
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            "ServiceNamespace": "sagemaker",
            "MinCapacity": 1,
            "MaxCapacity": 4,
        },
    )
    for target in resources(endpoints, "AWS::ApplicationAutoScaling::ScalableTarget").values():
        assert "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint" in json.dumps(
            target["Properties"]["RoleARN"]
        )
    endpoints.has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalingPolicy",
        {
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                "TargetValue": 2100,  # 50 tiles/s x 60 s x 0.7
                "ScaleInCooldown": 600,
                "ScaleOutCooldown": 120,
            },
        },
    )


def test_alarms_dashboard_outputs_and_parameters(synthesized: tuple[Template, Template, Path]) -> None:
    endpoints = synthesized[1]
    alarms = resources(endpoints, "AWS::CloudWatch::Alarm")
    metrics = sorted(a["Properties"]["MetricName"] for a in alarms.values())
    assert metrics == sorted(["Invocation5XXErrors", "ModelLatency", "InvocationsPerInstance"] * 2)
    assert all(a["Properties"]["AlarmActions"] and a["Properties"]["OKActions"] for a in alarms.values())
    latency = next(a for a in alarms.values() if a["Properties"]["MetricName"] == "ModelLatency")
    assert latency["Properties"]["ExtendedStatistic"] == "p95" and latency["Properties"]["Threshold"] == 5_000_000
    endpoints.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    outputs = endpoints.to_json()["Outputs"]
    assert outputs["H1EndpointName"]["Value"] == "optimus-h1" and outputs["MModels"]["Value"] == "m-optimus,tissue-seg"
    endpoints.has_resource_properties(
        "AWS::SSM::Parameter", {"Name": "/optimus/m/models", "Value": "m-optimus,tissue-seg"}
    )
    endpoints.has_resource_properties(
        "AWS::SSM::Parameter", {"Name": "/optimus/h1/endpoint-name", "Value": "optimus-h1"}
    )


def _stacks(ctx: dict[str, Any], tmp_path: Path) -> tuple[Template, Template]:
    app = App(context=ctx, outdir=str(tmp_path))
    foundation, endpoints = build(app)
    return Template.from_stack(foundation), Template.from_stack(endpoints)


def test_existing_image_s3_prefix_vpc_and_key(artifacts: dict[str, str], tmp_path: Path) -> None:
    ctx = context(
        artifacts,
        image=ECR_IMAGE,
        endpoints={"h1": {"models": ["h1", "tissue-seg"], "artifact": "s3://my-models/h1/v1/"}},
        vpcSubnetIds=["subnet-0123456789abcdef0"],
        vpcSecurityGroupIds=["sg-0123456789abcdef0"],
        kmsKeyArn="arn:aws:kms:eu-west-1:111122223333:key/0a1b2c3d-1111-2222-3333-444455556666",
        minInstances="2",
        maxInstances="6",
    )
    foundation, endpoints = _stacks(ctx, tmp_path)
    foundation.resource_count_is("AWS::KMS::Key", 0)
    endpoints.has_resource_properties(
        "AWS::SageMaker::Model",
        {
            "PrimaryContainer": {
                "Image": ECR_IMAGE,
                "ModelDataSource": {
                    "S3DataSource": {
                        "S3Uri": "s3://my-models/h1/v1/",
                        "S3DataType": "S3Prefix",
                        "CompressionType": "None",
                    }
                },
                "Environment": Match.any_value(),
            },
            "VpcConfig": {"Subnets": ["subnet-0123456789abcdef0"], "SecurityGroupIds": ["sg-0123456789abcdef0"]},
        },
    )
    statements = next(iter(resources(endpoints, "AWS::IAM::ManagedPolicy").values()))["Properties"]["PolicyDocument"][
        "Statement"
    ]
    by_sid = {s["Sid"]: s for s in statements}
    assert json.dumps(by_sid["PullImage"]["Resource"]).endswith(
        ':ecr:eu-west-1:111122223333:repository/optimus-serving"]]}'
    )
    assert by_sid["ListModelPrefix"]["Condition"] == {"StringLike": {"s3:prefix": ["h1/v1/*"]}}
    assert "VpcNetworkInterfaces" in by_sid
    endpoints.has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalableTarget", {"MinCapacity": 2, "MaxCapacity": 6}
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"endpoints": {"h1": {"models": ["h9"], "artifact": "s3://b/k.tar.gz"}}}, "unknown model 'h9'"),
        ({"instanceType": "ml.m5.xlarge"}, "has no NVIDIA GPU"),
        ({"instanceType": "g5.xlarge"}, "not a SageMaker instance type"),
        ({"minInstances": "5", "maxInstances": "2"}, "minInstances (5) is more than maxInstances (2)"),
        ({"image": "docker.io/library/python:3"}, "neither 'asset' nor an ECR image URI"),
        ({"vpcSubnetIds": ["subnet-0123456789abcdef0"]}, "vpcSubnetIds and vpcSecurityGroupIds go together"),
        ({"vpcSubnetIds": ["subnet-1"], "vpcSecurityGroupIds": ["sg-12345678"]}, "'subnet-1' is not an ID"),
        ({"endpoints": {"h1": {"models": ["h1"], "artifact": "s3://"}}}, "is not s3://BUCKET/KEY"),
        ({"endpoints": {"H 1": {"models": ["h1"], "artifact": "s3://b/k"}}}, "endpoint name 'H 1'"),
        ({"maxInstances": "many"}, "maxInstances"),
        ({"kmsKeyArn": "alias/mine"}, "is not a KMS key ARN"),
    ],
)
def test_config_errors_name_the_key(artifacts: dict[str, str], overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(context(artifacts, **overrides))
    assert message in str(caught.value)


def test_missing_or_wrong_artifact_is_refused(artifacts: dict[str, str], tmp_path: Path) -> None:
    missing = context(artifacts, endpoints={"h1": {"models": ["h1"], "artifact": str(tmp_path / "nothing")}})
    with pytest.raises(ConfigError, match="run `python -m kit package --models h1"):
        _stacks(missing, tmp_path / "a")
    wrong = context(artifacts, endpoints={"h1": {"models": ["h1", "m-optimus"], "artifact": artifacts["H1"]}})
    with pytest.raises(ConfigError, match=r"does not hold \['m-optimus'\]"):
        _stacks(wrong, tmp_path / "b")


def test_app_py_synthesizes_offline_with_overrides(artifacts: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, "CDK_OUTDIR": str(tmp_path)}
    env.pop("AWS_PROFILE", None)
    h1 = json.dumps({"h1": {"models": ["h1", "tissue-seg"], "artifact": artifacts["H1"]}})
    done = subprocess.run(
        [sys.executable, "app.py", "-c", f"endpoints={h1}", "-c", "maxInstances=3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    template = json.loads((tmp_path / "OptimusEndpoints.template.json").read_text())
    targets = [r for r in template["Resources"].values() if r["Type"] == "AWS::ApplicationAutoScaling::ScalableTarget"]
    assert [t["Properties"]["MaxCapacity"] for t in targets] == [3]
    bad = subprocess.run(
        [sys.executable, "app.py", "-c", "minInstances=9"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2 and "minInstances (9) is more than maxInstances (4)" in bad.stderr

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

from aws_cdk import App, Stack
from aws_cdk.assertions import Annotations, Match, Template

from app import build
from kit.artifacts.builder import package
from stacks import names
from stacks.config import KEYS, ConfigError, load_config
from stacks.endpoint_role import INPUTS, OUTPUTS
from stacks.endpoints import image_asset
from tests.support.stacks import context

REPO = Path(__file__).resolve().parents[1]
ECR_IMAGE = "111122223333.dkr.ecr.eu-west-1.amazonaws.com/optimus-serving:0.1.0"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("packages")
    package(["h1", "tissue-seg"], root / "H1", demo=True)
    package(["m-optimus", "tissue-seg"], root / "M", demo=True)
    return {"H1": str(root / "H1"), "M": str(root / "M")}


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
    for module in ("stacks.foundation", "stacks.endpoint", "stacks.endpoint_role"):
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
            ("OptimusFoundation/Results/Resource", "HIPAA.Security::HIPAA.Security-S3BucketReplicationEnabled"),
            ("OptimusFoundation/AccessLogs/Resource", "HIPAA.Security::HIPAA.Security-S3DefaultEncryptionKMS"),
            *(
                (
                    f"OptimusEndpoints/{name.upper()}/ExecutionPolicy/Resource",
                    "AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::optimus-results-bucket/"
                    f"optimus-{name}/{prefix}*]",
                )
                for name in ("h1", "m")
                for prefix in (*INPUTS, *OUTPUTS)
            ),
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
    foundation.has_resource("AWS::KMS::Key", {"DeletionPolicy": "RetainExceptOnCreate"})
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
    kept = [*resources(foundation, "AWS::S3::Bucket").values()]
    kept += resources(foundation, "AWS::S3::BucketPolicy").values()
    assert len(kept) == 6 and all(r["DeletionPolicy"] == "RetainExceptOnCreate" for r in kept)  # their policies too
    policies = json.dumps(resources(foundation, "AWS::S3::BucketPolicy"))
    assert policies.count('"aws:SecureTransport": "false"') == 3  # TLS only, every bucket
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
        assert set(by_sid) == {
            "PullImage", "EcrLogin", "ReadModelData", "DecryptModelDataAndImage", "WriteLogs", "InstanceMetrics",
            "RollbackAlarms", "ReadRequests", "ListBatchInput", "WriteResults", "EncryptResults",
        }  # fmt: skip
        assert by_sid["EcrLogin"]["Resource"] == "*" and by_sid["EcrLogin"]["Action"] == "ecr:GetAuthorizationToken"
        assert "GetAtt" in json.dumps(by_sid["WriteLogs"]["Resource"])  # this endpoint's log group only
        assert "logs:CreateLogGroup" in by_sid["WriteLogs"]["Action"]
        assert by_sid["InstanceMetrics"]["Condition"] == {
            "StringEquals": {"cloudwatch:namespace": "/aws/sagemaker/Endpoints"}
        }
        assert by_sid["RollbackAlarms"]["Action"] == "cloudwatch:DescribeAlarms"
        assert len(by_sid["RollbackAlarms"]["Resource"]) == 3 and ":alarm:" in json.dumps(by_sid["RollbackAlarms"])
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
                "Environment": {"OPTIMUS_MODELS": "h1,tissue-seg", "SAGEMAKER_HOSTED": "1", "MAX_RESPONSE_MB": "6"},
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
        assert variant["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
        assert "KmsKeyId" not in config["Properties"]  # ml.g5: local NVMe, hardware-encrypted
    found = resources(endpoints, "AWS::SageMaker::Endpoint")
    assert sorted(e["Properties"]["EndpointName"] for e in found.values()) == ["optimus-h1", "optimus-m"]
    for endpoint in found.values():
        assert endpoint["Properties"]["RetainAllVariantProperties"] is True  # updates keep the scaled count
        deployment = endpoint["Properties"]["DeploymentConfig"]
        routing = deployment["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
        assert routing == {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 600}
        alarms = [a["AlarmName"]["Ref"] for a in deployment["AutoRollbackConfiguration"]["Alarms"]]
        names = sorted(endpoints.to_json()["Resources"][a]["Properties"]["AlarmName"] for a in alarms)
        name = endpoint["Properties"]["EndpointName"]
        assert names == [f"{name}-5xx", f"{name}-latency", f"{name}-model-errors"]
    logs = resources(endpoints, "AWS::Logs::LogGroup")
    assert sorted(g["Properties"]["LogGroupName"] for g in logs.values()) == [
        "/aws/sagemaker/Endpoints/optimus-h1", "/aws/sagemaker/Endpoints/optimus-m",
    ]  # fmt: skip
    for group in logs.values():
        assert group["Properties"]["RetentionInDays"] == 365 and group["Properties"]["KmsKeyId"]
        # Kept on update and delete, but removed when its own creation rolls back: a failed first deploy
        # leaves nothing that blocks the next one.
        assert (group["DeletionPolicy"], group["UpdateReplacePolicy"]) == ("RetainExceptOnCreate", "Retain")


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
                "TargetValue": 1680,  # 40 tiles/s x 60 s x 0.7
                "ScaleInCooldown": 600,
                "ScaleOutCooldown": 120,
            },
        },
    )


def test_alarms_dashboard_outputs_and_parameters(synthesized: tuple[Template, Template, Path]) -> None:
    endpoints = synthesized[1]
    alarms = resources(endpoints, "AWS::CloudWatch::Alarm")
    metrics = sorted(a["Properties"]["MetricName"] for a in alarms.values())
    assert metrics == sorted(
        [
            "Invocation5XXErrors",
            "InvocationModelErrors",
            "ModelLatency",
            "GPUMemoryUtilization",
            "InvocationsPerInstance",
        ]
        * 2
    )
    assert all(a["Properties"]["AlarmActions"] and a["Properties"]["OKActions"] for a in alarms.values())
    assert all(a["Properties"]["AlarmName"].startswith(("optimus-h1-", "optimus-m-")) for a in alarms.values())
    latency = next(a for a in alarms.values() if a["Properties"]["MetricName"] == "ModelLatency")
    assert latency["Properties"]["ExtendedStatistic"] == "p95" and latency["Properties"]["Threshold"] == 5_000_000
    gpu = next(a for a in alarms.values() if a["Properties"]["MetricName"] == "GPUMemoryUtilization")
    assert gpu["Properties"]["Namespace"] == "/aws/sagemaker/Endpoints" and gpu["Properties"]["Threshold"] == 90
    endpoints.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    dashboard = json.dumps(endpoints.to_json()["Resources"])
    for metric in ("GPUUtilization", "GPUMemoryUtilization", "CPUUtilization", "MemoryUtilization", "DiskUtilization"):
        assert f'\\"{metric}\\"' in dashboard, metric
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


ARTIFACT_KEY = "arn:aws:kms:eu-west-1:111122223333:key/99999999-1111-2222-3333-444455556666"
SUBNETS = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]


def test_existing_image_s3_prefix_vpc_and_key(artifacts: dict[str, str], tmp_path: Path) -> None:
    ctx = context(
        artifacts,
        image=ECR_IMAGE,
        endpoints={"h1": {"models": ["h1", "tissue-seg"], "artifact": "s3://my-models/h1/v1/"}},
        artifactKmsKeyArn=ARTIFACT_KEY,
        vpcSubnetIds=SUBNETS,
        vpcSecurityGroupIds=["sg-0123456789abcdef0"],
        kmsKeyArn="arn:aws:kms:eu-west-1:111122223333:key/0a1b2c3d-1111-2222-3333-444455556666",
        minInstances="2",
        maxInstances="6",
        networkIsolation="false",
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
            "VpcConfig": {"Subnets": SUBNETS, "SecurityGroupIds": ["sg-0123456789abcdef0"]},
            "EnableNetworkIsolation": False,
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
    assert by_sid["DecryptModelDataKey"]["Resource"] == ARTIFACT_KEY
    assert by_sid["DecryptModelDataKey"]["Condition"] == {
        "StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}
    }
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
        (
            {"vpcSubnetIds": SUBNETS[:1], "vpcSecurityGroupIds": ["sg-0123456789abcdef0"]},
            "vpcSubnetIds: SageMaker needs at least two subnets, in different Availability Zones",
        ),
        ({"endpoints": {"h1": {"models": ["h1"], "artifact": "s3://"}}}, "is not s3://BUCKET/KEY"),
        (
            {"endpoints": {"h1": {"models": ["h1"], "artifact": "s3://theirs/h1/"}}},
            "endpoints.h1.artifact: 's3://theirs/h1/' is outside the kit's bucket, so the endpoint's role cannot know "
            "its key: set artifactKmsKeyArn",
        ),
        ({"endpoints": {"h1": {"models": ["h1"], "artifact": "kit://"}}}, "names no key"),
        ({"artifactKmsKeyArn": "mine"}, "is not a KMS key ARN or 'sse-s3'"),
        ({"deployment": "canary"}, "deployment 'canary' moves one instance of at least two at a time"),
        ({"deployment": "linear"}, "deployment: Input should be 'blue-green', 'canary' or 'rolling'"),
        ({"prefix": "Optimus Stage"}, "prefix: 'Optimus Stage': lower-case letters"),
        ({"torchVersion": "latest"}, "'latest' is not a torch release"),
        ({"maxInstance": "4"}, "unknown context key(s) maxInstance; the kit's keys are: endpoints, prefix,"),
        ({"endpoints": {"H 1": {"models": ["h1"], "artifact": "s3://b/k"}}}, "endpoint name 'H 1'"),
        ({"maxInstances": "many"}, "maxInstances"),
        ({"kmsKeyArn": "alias/mine"}, "is not a KMS key ARN"),
        ({"cohortJobs": {"inputs": ["s3://slides/"]}}, "cohortJobs.inputs: 's3://slides/': give"),
        ({"cohortJobs": {"inputs": ["s3://slides/*"]}}, "a whole bucket or a wildcard"),
        ({"cohortJobs": {"inputs": ["s3://slides/cohorts"]}}, "a folder, ending in '/'"),
        ({"cohortJobs": {"inputs": ["s3://10.0.0.1/cohorts/"]}}, "'10.0.0.1' is not an S3 bucket name"),
        (
            {
                "endpoints": {"h1": {"models": ["h1"], "artifact": "s3://theirs-s3alias/h1/"}},
                "artifactKmsKeyArn": "sse-s3",
            },
            "endpoints.h1.artifact: 's3://theirs-s3alias/h1/' is not s3://BUCKET/KEY: 'theirs-s3alias' is not an S3 "
            "bucket name: no prefix",
        ),
        ({"cohortJobs": {"inputs": []}}, "cohortJobs.inputs: List should have at least 1 item"),
        ({"cohortJobs": {"inputs": ["s3://s/c/"], "output": "s3://out/"}}, "cohortJobs.output: 's3://out/'"),
        ({"cohortJobs": '{"inputs": ["s3://s/c/"], "inputKmsKeyArns": ["k"]}'}, "'k' is not a KMS key ARN"),
    ],
)
def test_config_errors_name_the_key(artifacts: dict[str, str], overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(context(artifacts, **overrides))
    assert message in str(caught.value)


def test_missing_artifact_is_an_error_of_the_endpoints_stack_only(artifacts: dict[str, str], tmp_path: Path) -> None:
    missing = context(artifacts, endpoints={"h1": {"models": ["h1"], "artifact": str(tmp_path / "nothing")}})
    app = App(context=missing, outdir=str(tmp_path / "a"))
    foundation, endpoints = build(app)
    app.synth()  # cdk-nag passes; the CLI refuses to deploy the stack carrying the error
    Annotations.from_stack(endpoints).has_error("*", Match.string_like_regexp("run `python -m kit package --models h1"))
    assert not Annotations.from_stack(foundation).find_error("*", Match.any_value())
    Template.from_stack(foundation).resource_count_is("AWS::S3::Bucket", 3)


def test_wrong_artifact_is_refused(artifacts: dict[str, str], tmp_path: Path) -> None:
    wrong = context(artifacts, endpoints={"h1": {"models": ["h1", "m-optimus"], "artifact": artifacts["H1"]}})
    with pytest.raises(ConfigError, match=r"does not hold \['m-optimus'\]"):
        _stacks(wrong, tmp_path / "b")


def test_every_key_is_known_and_documented() -> None:
    """cdk.json's keys are the kit's (or the CDK's own, `@...`), and each of the kit's has its row in the docs."""
    given = json.loads((REPO / "cdk.json").read_text())["context"]
    assert [key for key in given if not key.startswith("@") and key not in KEYS] == []
    documented = (REPO / "docs" / "configuration.md").read_text()
    assert [key for key in KEYS if f"`{key}`" not in documented] == [], "every key in docs/configuration.md's table"


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


def test_alarm_topic_and_key_policies_let_cloudwatch_and_logs_in_for_this_kit_only(
    synthesized: tuple[Template, Template, Path],
) -> None:
    foundation = synthesized[0]
    topic_policy = next(iter(resources(foundation, "AWS::SNS::TopicPolicy").values()))
    statements = {s["Sid"]: s for s in topic_policy["Properties"]["PolicyDocument"]["Statement"]}
    publish = statements["CloudWatchAlarmsPublish"]
    assert publish["Effect"] == "Allow" and publish["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert publish["Condition"]["StringEquals"] == {"aws:SourceAccount": "123456789012"}
    assert json.dumps(publish["Condition"]["ArnLike"]).endswith(
        ':cloudwatch:eu-west-1:123456789012:alarm:optimus-*"]]}}'
    )
    assert statements["DenyInsecureTransport"]["Effect"] == "Deny"
    key = next(iter(resources(foundation, "AWS::KMS::Key").values()))
    by_sid = {s.get("Sid"): s for s in key["Properties"]["KeyPolicy"]["Statement"]}
    logs = by_sid["EndpointLogGroups"]
    assert logs["Principal"] == {"Service": "logs.eu-west-1.amazonaws.com"}
    assert logs["Condition"] == {
        "ArnLike": {
            "kms:EncryptionContext:aws:logs:arn": (
                "arn:aws:logs:eu-west-1:123456789012:log-group:/aws/sagemaker/Endpoints/optimus-*"
            )
        }
    }
    alarms = by_sid["AlarmsToEncryptedTopic"]
    assert alarms["Condition"]["StringEquals"] == {"aws:SourceAccount": "123456789012"}
    assert alarms["Condition"]["ArnLike"] == {
        "aws:SourceArn": "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:optimus-*"
    }
    unconditioned = [s for s in key["Properties"]["KeyPolicy"]["Statement"] if "Service" in s["Principal"]]
    assert all("Condition" in s for s in unconditioned), "no service principal without a confused-deputy condition"


def test_buckets_abort_uploads_and_expire_old_log_versions_repository_keeps_deployable_images(
    synthesized: tuple[Template, Template, Path],
) -> None:
    foundation = synthesized[0]
    buckets = resources(foundation, "AWS::S3::Bucket")
    for bucket in buckets.values():
        rules = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
        assert any(r.get("AbortIncompleteMultipartUpload") == {"DaysAfterInitiation": 7} for r in rules)
    logs = next(b for b in buckets.values() if "LoggingConfiguration" not in b["Properties"])
    assert logs["Properties"]["LifecycleConfiguration"]["Rules"][0]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": 30
    }
    repository = next(iter(resources(foundation, "AWS::ECR::Repository").values()))
    rules = json.loads(repository["Properties"]["LifecyclePolicy"]["LifecyclePolicyText"])["rules"]
    for rule in rules:  # only untagged images or CI's ci-* builds ever expire
        selection = rule["selection"]
        assert selection["tagStatus"] == "untagged" or selection.get("tagPrefixList") == ["ci-"], selection


def _all_physical_names(foundation: Template, endpoints: Template) -> list[str]:
    names = []
    for template in (foundation, endpoints):
        for resource in template.to_json()["Resources"].values():
            for key in ("EndpointName", "DashboardName", "AliasName", "Name", "LogGroupName", "AlarmName"):
                value = resource.get("Properties", {}).get(key)
                if isinstance(value, str):
                    names.append(value)
    return names


def test_prefix_names_every_physical_name(artifacts: dict[str, str], tmp_path: Path) -> None:
    """stage and prod side by side in one account and region: no physical name in common."""
    stage_app = App(context=context(artifacts, prefix="optimus-stage"), outdir=str(tmp_path / "stage"))
    stage = build(stage_app)
    prod = _stacks(context(artifacts), tmp_path / "prod")
    assert [s.stack_name for s in stage] == ["OptimusStageFoundation", "OptimusStageEndpoints"]
    stage_names = _all_physical_names(*(Template.from_stack(s) for s in stage))
    prod_names = _all_physical_names(*prod)
    assert len(stage_names) == len(prod_names) == 1 + 2 * (1 + 2 + 1 + 5) + 1  # alias; per endpoint; dashboard
    assert not set(stage_names) & set(prod_names)
    assert all("optimus-stage" in name for name in stage_names), stage_names


def test_instance_types_without_local_storage_get_the_key_canary_and_rolling(
    artifacts: dict[str, str], tmp_path: Path
) -> None:
    _, endpoints = _stacks(
        context(artifacts, instanceType="ml.p3.2xlarge", deployment="canary", minInstances="2"), tmp_path / "a"
    )
    for config in resources(endpoints, "AWS::SageMaker::EndpointConfig").values():
        assert "Fn::ImportValue" in json.dumps(config["Properties"]["KmsKeyId"])  # the kit's key, from the foundation
    for endpoint in resources(endpoints, "AWS::SageMaker::Endpoint").values():
        routing = endpoint["Properties"]["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
        assert routing["Type"] == "CANARY" and routing["CanarySize"] == {"Type": "INSTANCE_COUNT", "Value": 1}
    _, endpoints = _stacks(context(artifacts, deployment="rolling", minInstances="2"), tmp_path / "b")
    for endpoint in resources(endpoints, "AWS::SageMaker::Endpoint").values():
        deployment = endpoint["Properties"]["DeploymentConfig"]
        assert deployment["RollingUpdatePolicy"]["MaximumBatchSize"] == {"Type": "INSTANCE_COUNT", "Value": 1}
        assert len(deployment["AutoRollbackConfiguration"]["Alarms"]) == 3


def test_scaling_has_a_high_resolution_concurrency_policy_and_can_be_turned_off(
    synthesized: tuple[Template, Template, Path], artifacts: dict[str, str], tmp_path: Path
) -> None:
    policies = resources(synthesized[1], "AWS::ApplicationAutoScaling::ScalingPolicy")
    fast = [
        p["Properties"]["TargetTrackingScalingPolicyConfiguration"]
        for p in policies.values()
        if p["Properties"]["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"][
            "PredefinedMetricType"
        ]
        == "SageMakerVariantConcurrentRequestsPerModelHighResolution"
    ]
    assert len(fast) == 2 and all(p["TargetValue"] == 22 for p in fast)
    _, endpoints = _stacks(context(artifacts, autoscaling="false"), tmp_path)
    endpoints.resource_count_is("AWS::ApplicationAutoScaling::ScalableTarget", 0)


def test_image_context_is_container_and_model_code_only(tmp_path: Path) -> None:
    """README.md or cdk.json edits change no image hash (so replace no endpoint); a model_code edit does."""
    for part in ("container", "model_code"):
        subprocess.run(["cp", "-r", str(REPO / part), str(tmp_path / part)], check=True)
    for name in (".dockerignore", "README.md", "cdk.json"):
        (tmp_path / name).write_text((REPO / name).read_text())

    def image_hash(torch_version: str | None = None) -> str:
        return image_asset(Stack(App()), tmp_path, torch_version).asset_hash

    before = image_hash()
    (tmp_path / "README.md").write_text("edited\n")
    (tmp_path / "cdk.json").write_text("{}\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_new.py").write_text("x = 1\n")
    assert image_hash() == before
    assert image_hash("2.9.1") != before  # TORCH_VERSION is a build argument
    (tmp_path / "model_code" / "catalogue.py").write_text("# changed\n")
    assert image_hash() != before


def test_torch_version_is_the_image_build_argument(artifacts: dict[str, str], tmp_path: Path) -> None:
    app = App(context=context(artifacts, torchVersion="2.9.1"), outdir=str(tmp_path))
    build(app)
    assembly = app.synth()
    assets = json.loads((Path(assembly.directory) / "OptimusEndpoints.assets.json").read_text())
    (image,) = assets["dockerImages"].values()
    assert image["source"]["dockerBuildArgs"] == {"TORCH_VERSION": "2.9.1"}
    assert image["source"]["dockerFile"] == "container/Dockerfile"


def test_image_in_another_region_is_refused(artifacts: dict[str, str], tmp_path: Path) -> None:
    ctx = context(artifacts, image=ECR_IMAGE.replace("eu-west-1", "us-east-1"))
    with pytest.raises(ConfigError, match=r"image: .* is in us-east-1, the endpoints deploy to eu-west-1"):
        _stacks(ctx, tmp_path)


def test_kit_bucket_artifact_reads_the_foundation_bucket(artifacts: dict[str, str], tmp_path: Path) -> None:
    ctx = context(artifacts, endpoints={"h0": {"models": ["h0", "tissue-seg"], "artifact": "kit://h0/v1/"}})
    app = App(context=ctx, outdir=str(tmp_path))
    _, endpoints = build(app)
    app.synth()  # cdk-nag: the prefix acknowledgement matches the cross-stack bucket reference
    model = next(iter(resources(Template.from_stack(endpoints), "AWS::SageMaker::Model").values()))
    uri = json.dumps(model["Properties"]["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"])
    assert "Fn::ImportValue" in uri and "/h0/v1/" in uri


def test_app_without_artifacts_synthesizes_and_prints_an_imported_keys_statements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fresh clone (no build/) synthesizes: the foundation is deployable, the endpoints stack carries the error."""
    import app

    key = "arn:aws:kms:eu-west-1:123456789012:key/0a1b2c3d-1111-2222-3333-444455556666"
    endpoints = json.dumps({"h1": {"models": ["h1"], "artifact": str(tmp_path / "not-built")}})
    monkeypatch.setenv("CDK_OUTDIR", str(tmp_path / "out"))
    monkeypatch.setattr(sys, "argv", ["app.py", "-c", f"endpoints={endpoints}", "-c", f"kmsKeyArn={key}"])
    assert app.main() == 0
    err = capsys.readouterr().err
    assert "error (OptimusEndpoints only, not deployable until fixed): endpoints.h1: artifact" in err
    statements = json.loads(err[err.index("[") :])
    assert [s["Sid"] for s in statements] == ["AllowIamPolicies", "EndpointLogGroups", "AlarmsToEncryptedTopic"]
    assert (tmp_path / "out" / "OptimusFoundation.template.json").is_file()


def test_cohort_jobs_get_a_least_privilege_role_and_the_outputs_the_kit_reads(
    artifacts: dict[str, str], tmp_path: Path
) -> None:
    """Synthesized under cdk-nag (build adds both packs; a finding fails synthesis): read the inputs, write the
    output prefix only, the kit's key, SageMaker's training-job logs and metrics, the image."""
    jobs = {"inputs": ["s3://customer-slides/cohorts/", "s3://customer-slides/more/", "s3://other-slides/plco/"]}
    key = "arn:aws:kms:eu-west-1:123456789012:key/0a1b2c3d-1111-2222-3333-444455556666"
    app = App(context=context(artifacts, cohortJobs={**jobs, "inputKmsKeyArns": [key]}), outdir=str(tmp_path))
    foundation, endpoints = build(app)
    app.synth()
    template = Template.from_stack(endpoints)
    (policy,) = [p for p in resources(template, "AWS::IAM::ManagedPolicy").values() if "ReadSlides" in json.dumps(p)]
    by_sid = {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    assert set(by_sid) == {
        "PullImage", "EcrLogin", "ReadSlides", "ListSlides0", "ListSlides1", "ReadArtifacts", "ListArtifacts",
        "ReadWriteOutputs", "ListOutputs", "UseKitKey", "WriteLogs", "JobMetrics", "DecryptSlides",
    }  # fmt: skip
    slides = json.dumps(by_sid["ReadSlides"]["Resource"])
    assert (
        "customer-slides/cohorts/*" in slides
        and "other-slides/plco/*" in slides
        and by_sid["ReadSlides"]["Action"] == "s3:GetObject"
    )
    assert by_sid["ListSlides0"]["Condition"] == {"StringLike": {"s3:prefix": ["cohorts/*", "more/*"]}}
    writes = [s for s in by_sid.values() if "s3:PutObject" in json.dumps(s["Action"])]
    assert writes == [by_sid["ReadWriteOutputs"]]  # the output prefix only
    output = json.dumps(by_sid["ReadWriteOutputs"]["Resource"])
    assert "optimus-results-bucket" in output and '/cohorts/*"' in output  # default: the results bucket's cohorts/
    assert "s3:DeleteObject" not in json.dumps(policy)
    assert "/aws/sagemaker/TrainingJobs" in json.dumps(by_sid["WriteLogs"]["Resource"])
    assert by_sid["JobMetrics"]["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": "/aws/sagemaker/TrainingJobs"}
    }
    assert by_sid["DecryptSlides"]["Resource"] == key
    outputs = template.to_json()["Outputs"]
    assert outputs["CohortJobInputs"]["Value"] == ",".join(jobs["inputs"])
    assert {"CohortJobRoleArn", "CohortJobImageUri"} <= set(outputs)
    assert "CohortJobOutput" in Template.from_stack(foundation).to_json()["Outputs"]
    explicit = App(
        context=context(artifacts, cohortJobs={**jobs, "output": "s3://features/study/"}), outdir=str(tmp_path / "x")
    )
    _, stack = build(explicit)
    assert "features/study/*" in json.dumps(Template.from_stack(stack).to_json())


def test_every_output_the_kit_reads_is_one_the_stacks_write(artifacts: dict[str, str], tmp_path: Path) -> None:
    """The contract of stacks/names.py: the kit reads outputs by these names (kit/cohorts/deployment.py,
    kit/endpoints/stack.py, kit/cohorts/job.py); a real-time and an async endpoint, with cohort jobs."""
    endpoints = {
        "h1": {"models": ["h1", "tissue-seg"], "artifact": artifacts["H1"]},
        "h1-slides": {"models": ["h1", "tissue-seg"], "artifact": artifacts["H1"], "async": True},
    }
    jobs = {"inputs": ["s3://study-slides/cohort/"]}
    foundation, stack = _stacks(context(artifacts, endpoints=endpoints, cohortJobs=jobs), tmp_path)
    written = set(stack.to_json()["Outputs"])
    per_endpoint = [names.ENDPOINT_NAME, names.MODELS, names.MODEL_NAME, names.ROLE_ARN, names.SERVING]
    for entry, extra in (("h1", names.PREFIXES[:2]), ("h1-slides", (*names.PREFIXES, *names.TOPICS))):
        expected = {names.title(entry) + key for key in (*per_endpoint, *extra)}
        assert expected <= written, f"{entry}: the kit reads {sorted(expected - written)}, which the stack lacks"
    assert {names.FOUNDATION_STACK, names.COHORT_JOB_ROLE_ARN, names.COHORT_JOB_IMAGE_URI, names.COHORT_JOB_INPUTS} <= (
        written
    )
    read_from_foundation = {names.RESULTS_BUCKET, names.ARTIFACT_BUCKET, names.KEY_ARN, names.COHORT_JOB_OUTPUT}
    assert read_from_foundation <= set(foundation.to_json()["Outputs"])
    assert names.log_group("optimus-h1") in json.dumps(stack.to_json())  # the log group preflight looks for

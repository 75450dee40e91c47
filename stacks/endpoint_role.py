"""The execution role of an endpoint's model, and what it shares with the cohort-job role (stacks/cohort_job.py):
a role SageMaker assumes with one managed policy, pulling the image, bucket ARNs.

The endpoint's role holds only what SageMaker needs to start the model and watch its updates (pull its image,
read its data, write its logs and instance metrics, read its rollback alarms), and what batch transform and
async requests need: read the endpoint's input prefixes of the results bucket, write its output prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from stacks.config import KitConfig
from stacks.nag import acknowledge, nag_resource

if TYPE_CHECKING:
    from stacks.endpoint import ModelEndpoint

# The endpoint's prefixes in the results bucket, under PREFIX-NAME/: read by its role (inputs) or written (the rest).
INPUTS = ("async/input/", "batch/input/")
OUTPUTS = ("async/output/", "async/failures/", "batch/output/")
PREFIXES = INPUTS + OUTPUTS
INSTANCE_METRICS = "/aws/sagemaker/Endpoints"  # CPU, memory, disk, GPU and GPU memory of the instances


@dataclass(frozen=True)
class ImageRef:
    """A container image the role may pull: its URI and its repository's ARN."""

    uri: str
    repository_arn: str


@dataclass(frozen=True)
class ArtifactRef:
    """Model data: a model.tar.gz object, or an uncompressed prefix (SageMaker reads it without unpacking)."""

    bucket: str
    key: str
    kms_key_arn: str | None  # the key that encrypts it, where the role needs kms:Decrypt on another key

    @property
    def is_prefix(self) -> bool:
        return self.key.endswith("/")

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def execution_role(
    endpoint: ModelEndpoint, config: KitConfig, image: ImageRef, artifact: ArtifactRef, key: kms.IKey
) -> iam.Role:
    """ExecutionRole and ExecutionPolicy of the endpoint, with the statements its serving adds."""
    stack = Stack.of(endpoint)
    bucket = bucket_arn(stack, artifact.bucket)
    model_objects = f"{bucket}/{artifact.key}*" if artifact.is_prefix else f"{bucket}/{artifact.key}"
    results = f"{bucket_arn(stack, endpoint.results_bucket)}/"
    statements = [
        *pull_image(image),
        iam.PolicyStatement(sid="ReadModelData", actions=["s3:GetObject"], resources=[model_objects]),
        iam.PolicyStatement(sid="DecryptModelDataAndImage", actions=["kms:Decrypt"], resources=[key.key_arn]),
        iam.PolicyStatement(
            sid="WriteLogs",
            actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            resources=[endpoint.log_group.log_group_arn],
        ),
        iam.PolicyStatement(
            sid="InstanceMetrics",
            actions=["cloudwatch:PutMetricData"],
            resources=["*"],
            conditions={"StringEquals": {"cloudwatch:namespace": INSTANCE_METRICS}},
        ),
        iam.PolicyStatement(
            sid="RollbackAlarms",
            actions=["cloudwatch:DescribeAlarms"],
            resources=[
                f"arn:{stack.partition}:cloudwatch:{stack.region}:{stack.account}:alarm:{alarm.alarm_name}"
                for alarm in endpoint.rollback_alarms
            ],
        ),
        iam.PolicyStatement(
            sid="ReadRequests", actions=["s3:GetObject"], resources=[results + endpoint.prefix(p) + "*" for p in INPUTS]
        ),
        iam.PolicyStatement(
            sid="ListBatchInput",
            actions=["s3:ListBucket"],
            resources=[bucket_arn(stack, endpoint.results_bucket)],
            conditions={"StringLike": {"s3:prefix": [f"{endpoint.prefix('batch/input/')}*"]}},
        ),
        iam.PolicyStatement(
            sid="WriteResults",
            actions=["s3:PutObject", "s3:AbortMultipartUpload"],
            resources=[results + endpoint.prefix(p) + "*" for p in OUTPUTS],
        ),
        # kms:Encrypt too: SageMaker requires it of the role for TransformOutput.KmsKeyId (kit batch sets it).
        iam.PolicyStatement(
            sid="EncryptResults", actions=["kms:Encrypt", "kms:GenerateDataKey"], resources=[key.key_arn]
        ),
        *endpoint.serving.role_statements(),
    ]
    if artifact.kms_key_arn:
        statements.append(
            iam.PolicyStatement(
                sid="DecryptModelDataKey",
                actions=["kms:Decrypt"],
                resources=[artifact.kms_key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}},
            )
        )
    if artifact.is_prefix:
        statements.append(
            iam.PolicyStatement(
                sid="ListModelPrefix",
                actions=["s3:ListBucket"],
                resources=[bucket],
                conditions={"StringLike": {"s3:prefix": [f"{artifact.key}*"]}},
            )
        )
    if config.vpcSubnetIds:
        statements.append(_network_interfaces())
    role, policy = sagemaker_role(
        endpoint,
        "Execution",
        statements,
        description=f"SageMaker execution role of endpoint {endpoint.endpoint_name}",
        star_reason="ecr:GetAuthorizationToken and cloudwatch:PutMetricData (limited by a namespace condition) "
        "have no resource-level permissions, nor (with a VPC) do the EC2 network-interface actions SageMaker "
        "needs before the interfaces exist.",
    )
    if artifact.is_prefix:
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[Resource::{nag_resource(stack.resolve(model_objects))}]",
            reason="An uncompressed model is every object under this endpoint's own model prefix.",
        )
    acknowledge(
        policy,
        *(
            f"AwsSolutions-IAM5[Resource::{nag_resource(stack.resolve(results + endpoint.prefix(p)))}*]"
            for p in PREFIXES
        ),
        reason="Requests and results are objects SageMaker names (one per request or input file), under this "
        "endpoint's own input and output prefixes of the results bucket.",
    )
    return role


def _network_interfaces() -> iam.PolicyStatement:
    """The EC2 actions SageMaker needs to put the model's instances in the deployer's VPC."""
    return iam.PolicyStatement(
        sid="VpcNetworkInterfaces",
        actions=[
            "ec2:CreateNetworkInterface",
            "ec2:CreateNetworkInterfacePermission",
            "ec2:DeleteNetworkInterface",
            "ec2:DeleteNetworkInterfacePermission",
            "ec2:DescribeNetworkInterfaces",
            "ec2:DescribeVpcs",
            "ec2:DescribeDhcpOptions",
            "ec2:DescribeSubnets",
            "ec2:DescribeSecurityGroups",
        ],
        resources=["*"],
    )


def pull_image(image: ImageRef) -> list[iam.PolicyStatement]:
    """Pull the image from its repository, after the ECR login (which has no resource-level permission)."""
    return [
        iam.PolicyStatement(
            sid="PullImage",
            actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
            resources=[image.repository_arn],
        ),
        iam.PolicyStatement(sid="EcrLogin", actions=["ecr:GetAuthorizationToken"], resources=["*"]),
    ]


def sagemaker_role(
    scope: Construct, name: str, statements: list[iam.PolicyStatement], *, description: str, star_reason: str
) -> tuple[iam.Role, iam.ManagedPolicy]:
    """A role SageMaker assumes, with one managed policy (NAMEPolicy, NAMERole); `star_reason` acknowledges its
    `Resource *` statements."""
    policy = iam.ManagedPolicy(scope, f"{name}Policy", statements=statements)
    role = iam.Role(
        scope,
        f"{name}Role",
        assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
        description=description,
        managed_policies=[policy],
    )
    acknowledge(policy, "AwsSolutions-IAM5[Resource::*]", reason=star_reason)
    return role, policy


def bucket_arn(stack: Stack, bucket: str) -> str:
    return f"arn:{stack.partition}:s3:::{bucket}"

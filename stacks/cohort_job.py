"""The role of cohort training jobs (`kit cohort run`): read the slides under the cohort input prefixes of the
context (`cohortJobs.inputs`), read the kit's artifacts, read and write only the output prefix (outputs and
checkpoints, which SageMaker syncs both ways), the kit's key, the training-job logs and metrics, the image.

SageMaker assumes it for the job's instances; `kit cohort run` names it in CreateTrainingJob and reads what
it needs from the stack outputs (CohortJobRoleArn, CohortJobImageUri, CohortJobInputs, and the foundation's
CohortJobOutput)."""

from __future__ import annotations

from collections import defaultdict

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from stacks.config import CohortJobsConfig
from stacks.endpoint_role import ImageRef, bucket_arn, pull_image, sagemaker_role
from stacks.nag import acknowledge, nag_resource
from stacks.s3_uri import split

LOG_GROUP = "/aws/sagemaker/TrainingJobs"  # SageMaker's, shared by every training job of the account and region
METRICS = "/aws/sagemaker/TrainingJobs"


class CohortJobRole(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        jobs: CohortJobsConfig,
        output: str,
        image: ImageRef,
        artifact_bucket: str,
        key: kms.IKey,
        prefix: str,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        inputs = [split(uri) for uri in jobs.inputs]
        out_bucket, out_prefix = split(output)  # its bucket may be the results bucket's token
        logs = f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:{LOG_GROUP}"
        slides = [f"{bucket_arn(stack, b)}/{p}*" for b, p in inputs]
        outputs = f"{bucket_arn(stack, out_bucket)}/{out_prefix}*"
        artifacts = f"{bucket_arn(stack, artifact_bucket)}/*"
        listed: dict[str, list[str]] = defaultdict(list)
        for bucket, key_prefix in inputs:
            listed[bucket].append(f"{key_prefix}*")
        statements = [
            *pull_image(image),
            iam.PolicyStatement(sid="ReadSlides", actions=["s3:GetObject"], resources=slides),
            *(
                iam.PolicyStatement(
                    sid=f"ListSlides{index}",
                    actions=["s3:ListBucket"],
                    resources=[bucket_arn(stack, bucket)],
                    conditions={"StringLike": {"s3:prefix": prefixes}},
                )
                for index, (bucket, prefixes) in enumerate(sorted(listed.items()))
            ),
            iam.PolicyStatement(sid="ReadArtifacts", actions=["s3:GetObject"], resources=[artifacts]),
            iam.PolicyStatement(
                sid="ListArtifacts", actions=["s3:ListBucket"], resources=[bucket_arn(stack, artifact_bucket)]
            ),
            iam.PolicyStatement(
                sid="ReadWriteOutputs",
                actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[outputs],
            ),
            iam.PolicyStatement(
                sid="ListOutputs",
                actions=["s3:ListBucket"],
                resources=[bucket_arn(stack, out_bucket)],
                conditions={"StringLike": {"s3:prefix": [f"{out_prefix}*"]}},
            ),
            iam.PolicyStatement(
                # kms:Encrypt: SageMaker requires it for OutputDataConfig.KmsKeyId (kit cohort run sets it)
                sid="UseKitKey",
                actions=["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"],
                resources=[key.key_arn],
            ),
            iam.PolicyStatement(
                sid="WriteLogs",
                actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                resources=[logs, f"{logs}:log-stream:*"],
            ),
            iam.PolicyStatement(
                sid="JobMetrics",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringEquals": {"cloudwatch:namespace": METRICS}},
            ),
        ]
        if jobs.inputKmsKeyArns:
            statements.append(
                iam.PolicyStatement(
                    sid="DecryptSlides",
                    actions=["kms:Decrypt"],
                    resources=jobs.inputKmsKeyArns,
                    conditions={"StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}},
                )
            )
        self.role, policy = sagemaker_role(
            self,
            "",
            statements,
            description=f"{prefix} cohort training jobs: read the cohort inputs and the artifacts, write {output}",
            star_reason="ecr:GetAuthorizationToken and cloudwatch:PutMetricData (limited by a namespace condition) "
            "have no resource-level permissions.",
        )
        acknowledge(
            policy,
            *(f"AwsSolutions-IAM5[Resource::{nag_resource(stack.resolve(r))}]" for r in slides),
            reason="A cohort is every slide under the input prefixes the deployer named (cohortJobs.inputs); "
            "a bucket-wide input is refused.",
        )
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[Resource::{nag_resource(stack.resolve(outputs))}]",
            reason="Outputs, status lines and checkpoints are objects the job names, one per slide, under the one "
            "output prefix.",
        )
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[Resource::{nag_resource(stack.resolve(artifacts))}]",
            reason="The kit's artifact bucket holds only model artifacts `kit upload` put there; a job's artifact "
            "is chosen when it starts (--artifact kit://KEY/).",
        )
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[Resource::{nag_resource(stack.resolve(logs))}:log-stream:*]",
            reason="SageMaker names one log stream per training job and host in its own log group.",
        )

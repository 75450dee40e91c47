"""What outlives any one endpoint: the KMS key, the artifact bucket (and its access-log bucket), the ECR
repository and the alarm topic. Deployed first, so artifacts and images can be put there before the
endpoints that use them. None of them is named: a retained bucket, repository or key never blocks a redeploy."""

from __future__ import annotations

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from stacks import names
from stacks.config import KitConfig
from stacks.key_policy import alarm_pattern, key_policy_statements
from stacks.nag import acknowledge, checkov_skip

COHORT_OUTPUT = "cohorts/"  # cohort jobs' default output prefix in the results bucket
MULTIPART_ABORT = Duration.days(7)  # an interrupted multi-GB upload leaves parts that are billed until aborted
# Kept on an update's replacement and a destroy (they hold weights, images, results, the key to them), deleted
# when the create that made them rolls back: a failed first deploy leaves no key, bucket or repository behind.
KEPT = RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE


class FoundationStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, config: KitConfig, **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        self.config = config
        self.key = self._key(config)
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            # S3 server access logging delivers only to buckets encrypted with S3-managed keys.
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            lifecycle_rules=[
                s3.LifecycleRule(
                    expiration=Duration.days(365),
                    noncurrent_version_expiration=Duration.days(30),
                    abort_incomplete_multipart_upload_after=MULTIPART_ABORT,
                )
            ],
            removal_policy=KEPT,
        )
        acknowledge(
            self.access_logs,
            "HIPAA.Security-S3DefaultEncryptionKMS",
            reason="S3 server access logging delivers only to buckets encrypted with S3-managed keys (SSE-S3); "
            "the logs hold request metadata, never model data.",
        )
        checkov_skip(
            self.access_logs,
            "CKV_AWS_18",
            reason="This is the access-log bucket: logging its own accesses into itself would log every log delivery, "
            "without end; the artifact and results buckets log here.",
        )
        self.artifacts = self._private_bucket("Artifacts", "artifacts/")
        # Slides sent to async endpoints and batch transform, and what comes back: per endpoint, its role may read
        # only PREFIX-NAME/{async,batch}/input/ and write only its output (and failure) prefixes
        # (stacks/endpoint_role.py).
        self.results = self._private_bucket("Results", "results/", noncurrent_version_expiration=Duration.days(30))
        for bucket in (self.access_logs, self.artifacts, self.results):  # kept with its TLS-only Deny and grants
            assert bucket.policy is not None  # enforce_ssl made it
            bucket.policy.apply_removal_policy(KEPT)
        acknowledge(
            self.access_logs,
            self.artifacts,
            self.results,
            "HIPAA.Security-S3BucketReplicationEnabled",
            reason="Model weights, logs and results are re-creatable (from the vendor's release, the slides); "
            "cross-region replication is the customer's choice and doubles storage of multi-GB objects.",
        )
        self.repository = ecr.Repository(
            self,
            "Images",
            image_scan_on_push=True,
            image_tag_mutability=ecr.TagMutability.IMMUTABLE,
            encryption=ecr.RepositoryEncryption.KMS,
            encryption_key=self.key,
            # Never expires an image a deployed endpoint can use: tags are immutable and only untagged images and
            # CI's throwaway `ci-*` builds expire. Deploy release tags (or stage tags), never `ci-*`.
            lifecycle_rules=[
                ecr.LifecycleRule(
                    description="untagged images", tag_status=ecr.TagStatus.UNTAGGED, max_image_age=Duration.days(7)
                ),
                ecr.LifecycleRule(
                    description="CI's ci-* test builds: the last 20",
                    tag_status=ecr.TagStatus.TAGGED,
                    tag_prefix_list=["ci-"],
                    max_image_count=20,
                ),
            ],
            removal_policy=KEPT,
        )
        self.alarms = sns.Topic(self, "Alarms", master_key=self.key, display_name=f"{config.prefix} endpoint alarms")
        # A topic policy replaces SNS's default one: without this Allow, CloudWatch alarms cannot publish.
        self.alarms.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.alarms.topic_arn],
                conditions={
                    "StringEquals": {"aws:SourceAccount": self.account},
                    "ArnLike": {
                        "aws:SourceArn": f"arn:{self.partition}:cloudwatch:{self.region}:{self.account}:alarm:"
                        + alarm_pattern(config)
                    },
                },
            )
        )
        self.alarms.add_to_resource_policy(
            iam.PolicyStatement(
                sid="DenyInsecureTransport",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["sns:Publish"],
                resources=[self.alarms.topic_arn],
                conditions={"Bool": {"aws:SecureTransport": "false"}},
            )
        )
        if config.alarmEmail:
            self.alarms.add_subscription(subscriptions.EmailSubscription(config.alarmEmail))
        # Exported under a name of ours: the endpoints stack reads it for kit:// artifacts (and cdk-nag can name it).
        self.artifact_bucket_export = f"{config.prefix}-artifact-bucket"
        CfnOutput(
            self, names.ARTIFACT_BUCKET, value=self.artifacts.bucket_name, export_name=self.artifact_bucket_export
        )
        self.results_bucket_export = f"{config.prefix}-results-bucket"
        CfnOutput(self, names.RESULTS_BUCKET, value=self.results.bucket_name, export_name=self.results_bucket_export)
        CfnOutput(self, "ImageRepositoryUri", value=self.repository.repository_uri)
        CfnOutput(self, names.KEY_ARN, value=self.key.key_arn)
        CfnOutput(self, "AlarmTopicArn", value=self.alarms.topic_arn)
        if config.cohortJobs:  # where cohort jobs write: here, since the default is this stack's bucket
            output = config.cohortJobs.output or f"s3://{self.results.bucket_name}/{COHORT_OUTPUT}"
            CfnOutput(self, names.COHORT_JOB_OUTPUT, value=output)

    def _key(self, config: KitConfig) -> kms.IKey:
        if config.kmsKeyArn:
            return kms.Key.from_key_arn(self, "Key", config.kmsKeyArn)
        key = kms.Key(
            self,
            "Key",
            description="Optimus SageMaker kit: model artifacts, images, logs, alarms",
            enable_key_rotation=True,
            removal_policy=KEPT,
        )
        key.add_alias(f"alias/{config.prefix}-sagemaker-kit")
        # The endpoint log groups and the alarm topic use this key; the CDK's own statement delegates to IAM.
        for statement in key_policy_statements(config, self.account, self.region)[1:]:
            key.add_to_resource_policy(iam.PolicyStatement.from_json(statement))
        return key

    def _private_bucket(
        self, name: str, log_prefix: str, noncurrent_version_expiration: Duration | None = None
    ) -> s3.Bucket:
        """KMS-encrypted with the kit's key, TLS only, no public access, versioned, access-logged, retained;
        multipart uploads aborted after MULTIPART_ABORT (and old versions expired, if given)."""
        return s3.Bucket(
            self,
            name,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix=log_prefix,
            lifecycle_rules=[
                s3.LifecycleRule(
                    abort_incomplete_multipart_upload_after=MULTIPART_ABORT,
                    noncurrent_version_expiration=noncurrent_version_expiration,
                )
            ],
            removal_policy=KEPT,
        )

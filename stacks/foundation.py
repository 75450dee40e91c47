"""What outlives any one endpoint: the KMS key, the artifact bucket (and its access-log bucket), the ECR
repository and the alarm topic. Deployed first, so artifacts and images can be put there before the
endpoints that use them."""

from __future__ import annotations

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from stacks.config import KitConfig
from stacks.nag import acknowledge


class FoundationStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, config: KitConfig, **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        self.key = self._key(config)
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            # S3 server access logging delivers only to buckets encrypted with S3-managed keys.
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(365))],
            removal_policy=RemovalPolicy.RETAIN,
        )
        acknowledge(
            self.access_logs,
            "HIPAA.Security-S3DefaultEncryptionKMS",
            reason="S3 server access logging delivers only to buckets encrypted with S3-managed keys (SSE-S3); "
            "the logs hold request metadata, never model data.",
        )
        self.artifacts = s3.Bucket(
            self,
            "Artifacts",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="artifacts/",
            removal_policy=RemovalPolicy.RETAIN,
        )
        acknowledge(
            self.access_logs,
            self.artifacts,
            "HIPAA.Security-S3BucketReplicationEnabled",
            reason="Model weights and logs are re-creatable from the vendor's release; cross-region replication "
            "is the customer's choice and doubles storage of multi-GB artifacts.",
        )
        self.repository = ecr.Repository(
            self,
            "Images",
            image_scan_on_push=True,
            image_tag_mutability=ecr.TagMutability.IMMUTABLE,
            encryption=ecr.RepositoryEncryption.KMS,
            encryption_key=self.key,
            lifecycle_rules=[
                ecr.LifecycleRule(
                    description="untagged layers", tag_status=ecr.TagStatus.UNTAGGED, max_image_age=Duration.days(7)
                ),
                ecr.LifecycleRule(description="keep the last 20 images", max_image_count=20),
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.alarms = sns.Topic(self, "Alarms", master_key=self.key, display_name="Optimus endpoint alarms")
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
        # CloudWatch alarms publish to the encrypted topic.
        self.key.grant_encrypt_decrypt(iam.ServicePrincipal("cloudwatch.amazonaws.com"))
        if config.alarmEmail:
            self.alarms.add_subscription(subscriptions.EmailSubscription(config.alarmEmail))
        CfnOutput(self, "ArtifactBucket", value=self.artifacts.bucket_name)
        CfnOutput(self, "ImageRepositoryUri", value=self.repository.repository_uri)
        CfnOutput(self, "KeyArn", value=self.key.key_arn)
        CfnOutput(self, "AlarmTopicArn", value=self.alarms.topic_arn)

    def _key(self, config: KitConfig) -> kms.IKey:
        if config.kmsKeyArn:
            return kms.Key.from_key_arn(self, "Key", config.kmsKeyArn)
        key = kms.Key(
            self,
            "Key",
            description="Optimus SageMaker kit: model artifacts, images, logs, alarms",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        key.add_alias("alias/optimus-sagemaker-kit")
        # Endpoint log groups are encrypted with this key.
        key.grant_encrypt_decrypt(iam.ServicePrincipal(f"logs.{self.region}.amazonaws.com"))
        return key

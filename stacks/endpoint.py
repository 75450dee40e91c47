"""One SageMaker endpoint serving one model package: execution role, model, endpoint config, endpoint,
log group, autoscaling on invocations per instance, and alarms.

L1 resources for the SageMaker model, endpoint config and endpoint: the L2 constructs (in the alpha
module) cannot set InferenceAmiVersion, the model-download timeout or uncompressed S3 model data,
which these endpoints need. Everything around them uses the stable L2 constructs.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_sns as sns
from constructs import Construct

from stacks.config import KitConfig
from stacks.nag import acknowledge

VARIANT = "AllTraffic"


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

    @property
    def is_prefix(self) -> bool:
        return self.key.endswith("/")

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class ModelEndpoint(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name: str,
        models: list[str],
        config: KitConfig,
        image: ImageRef,
        artifact: ArtifactRef,
        key: kms.IKey,
        alarm_topic: sns.ITopic,
    ) -> None:
        super().__init__(scope, construct_id)
        self.endpoint_name = f"optimus-{name}"
        self.models = models
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            log_group_name=f"/aws/sagemaker/Endpoints/{self.endpoint_name}",
            encryption_key=key,
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.role = self._role(config, image, artifact, key)
        model = sagemaker.CfnModel(
            self,
            "Model",
            execution_role_arn=self.role.role_arn,
            enable_network_isolation=True,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=image.uri,
                # SAGEMAKER_HOSTED: the server ignores on-premise bearer tokens (IAM guards InvokeEndpoint).
                environment={"OPTIMUS_MODELS": ",".join(models), "SAGEMAKER_HOSTED": "1"},
                # A model.tar.gz object, or an uncompressed prefix SageMaker reads without unpacking.
                model_data_url=None if artifact.is_prefix else artifact.uri,
                model_data_source=_uncompressed(artifact) if artifact.is_prefix else None,
            ),
            vpc_config=sagemaker.CfnModel.VpcConfigProperty(
                subnets=config.vpcSubnetIds, security_group_ids=config.vpcSecurityGroupIds
            )
            if config.vpcSubnetIds
            else None,
        )
        endpoint_config = sagemaker.CfnEndpointConfig(
            self,
            "Config",
            production_variants=[
                sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                    variant_name=VARIANT,
                    model_name=model.attr_model_name,
                    instance_type=config.instanceType,
                    initial_instance_count=config.minInstances,
                    inference_ami_version=config.inferenceAmiVersion,
                    container_startup_health_check_timeout_in_seconds=config.startupTimeoutS,
                    model_data_download_timeout_in_seconds=config.startupTimeoutS,
                )
            ],
        )
        acknowledge(
            endpoint_config,
            "HIPAA.Security-SageMakerEndpointConfigurationKMSKeyConfigured",
            reason=f"{config.instanceType} has local NVMe storage encrypted by a hardware module; "
            "CreateEndpointConfig fails when KmsKeyId is set for such an instance type.",
        )
        endpoint = sagemaker.CfnEndpoint(
            self,
            "Endpoint",
            endpoint_name=self.endpoint_name,
            endpoint_config_name=endpoint_config.attr_endpoint_config_name,
        )
        endpoint.node.add_dependency(self.log_group)
        self._autoscaling(config, endpoint)
        self.alarms = self._alarms(config, alarm_topic)

    def _role(self, config: KitConfig, image: ImageRef, artifact: ArtifactRef, key: kms.IKey) -> iam.Role:
        """Only what SageMaker needs to start this model: pull its image, read its data, write its logs."""
        bucket = f"arn:{Stack.of(self).partition}:s3:::{artifact.bucket}"
        model_objects = f"{bucket}/{artifact.key}*" if artifact.is_prefix else f"{bucket}/{artifact.key}"
        statements = [
            iam.PolicyStatement(
                sid="PullImage",
                actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
                resources=[image.repository_arn],
            ),
            iam.PolicyStatement(sid="EcrLogin", actions=["ecr:GetAuthorizationToken"], resources=["*"]),
            iam.PolicyStatement(
                sid="ReadModelData",
                actions=["s3:GetObject"],
                resources=[model_objects],
            ),
            iam.PolicyStatement(sid="DecryptModelDataAndImage", actions=["kms:Decrypt"], resources=[key.key_arn]),
            iam.PolicyStatement(
                sid="WriteLogs",
                actions=["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                resources=[self.log_group.log_group_arn],
            ),
        ]
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
            statements.append(
                iam.PolicyStatement(
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
            )
        policy = iam.ManagedPolicy(self, "ExecutionPolicy", statements=statements)
        role = iam.Role(
            self,
            "ExecutionRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description=f"SageMaker execution role of endpoint {self.endpoint_name}",
            managed_policies=[policy],
        )
        acknowledge(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            reason="ecr:GetAuthorizationToken has no resource-level permissions, nor (with a VPC) do the EC2 "
            "network-interface actions SageMaker needs before the interfaces exist.",
        )
        if artifact.is_prefix:
            acknowledge(
                policy,
                f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::{artifact.bucket}/{artifact.key}*]",
                reason="An uncompressed model is every object under this endpoint's own model prefix.",
            )
        return role

    def _autoscaling(self, config: KitConfig, endpoint: sagemaker.CfnEndpoint) -> None:
        # Application Auto Scaling acts on SageMaker through its service-linked role (created on first use).
        stack = Stack.of(self)
        service_role = iam.Role.from_role_arn(
            self,
            "ScalingServiceRole",
            f"arn:{stack.partition}:iam::{stack.account}:role/aws-service-role/sagemaker.application-autoscaling."
            "amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint",
        )
        target = appscaling.ScalableTarget(
            self,
            "Scaling",
            role=service_role,
            service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
            scalable_dimension="sagemaker:variant:DesiredInstanceCount",
            resource_id=f"endpoint/{self.endpoint_name}/variant/{VARIANT}",
            min_capacity=config.minInstances,
            max_capacity=config.maxInstances,
        )
        target.node.add_dependency(endpoint)
        target.scale_to_track_metric(
            "InvocationsPerInstance",
            target_value=config.target_invocations_per_instance,
            predefined_metric=appscaling.PredefinedMetric.SAGEMAKER_VARIANT_INVOCATIONS_PER_INSTANCE,
            scale_in_cooldown=Duration.seconds(config.scaleInCooldownS),
            scale_out_cooldown=Duration.seconds(config.scaleOutCooldownS),
        )

    def metric(self, name: str, statistic: str, minutes: int = 1) -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace="AWS/SageMaker",
            metric_name=name,
            dimensions_map={"EndpointName": self.endpoint_name, "VariantName": VARIANT},
            statistic=statistic,
            period=Duration.minutes(minutes),
        )

    def _alarms(self, config: KitConfig, topic: sns.ITopic) -> list[cloudwatch.Alarm]:
        alarms = [
            cloudwatch.Alarm(
                self,
                "Errors5xx",
                alarm_description=f"{self.endpoint_name}: 5xx answers (failed forward passes or crashes)",
                metric=self.metric("Invocation5XXErrors", "Sum", minutes=5),
                threshold=config.errorAlarmCount,
                evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            cloudwatch.Alarm(
                self,
                "Latency",
                alarm_description=f"{self.endpoint_name}: p95 model latency above {config.latencyAlarmMs:g} ms",
                metric=self.metric("ModelLatency", "p95"),
                threshold=config.latencyAlarmMs * 1000,  # ModelLatency is in microseconds
                evaluation_periods=5,
                datapoints_to_alarm=3,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            cloudwatch.Alarm(
                self,
                "AtMaxInstances",
                alarm_description=(
                    f"{self.endpoint_name}: invocations per instance 20% over the scaling target for 15 minutes: "
                    f"the endpoint is at maxInstances ({config.maxInstances}) or cannot scale out"
                ),
                metric=self.metric("InvocationsPerInstance", "Sum"),
                threshold=config.target_invocations_per_instance * 1.2,
                evaluation_periods=15,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
        ]
        for alarm in alarms:
            alarm.add_alarm_action(actions.SnsAction(topic))
            alarm.add_ok_action(actions.SnsAction(topic))
        return alarms


def _uncompressed(artifact: ArtifactRef) -> sagemaker.CfnModel.ModelDataSourceProperty:
    source = sagemaker.CfnModel.S3DataSourceProperty(
        s3_uri=artifact.uri, s3_data_type="S3Prefix", compression_type="None"
    )
    return sagemaker.CfnModel.ModelDataSourceProperty(s3_data_source=source)

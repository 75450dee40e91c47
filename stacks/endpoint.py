"""One SageMaker endpoint serving one model package: execution role, model, endpoint config, endpoint,
log group, autoscaling, and alarms (which also guard every update: a tripped alarm rolls it back).

An endpoint is real-time, or asynchronous (`"async"` in its entry): what differs between the two is its
serving (stacks/serving.py), chosen once here. Every endpoint's model also serves batch transform jobs,
whose role (the model's, stacks/endpoint_role.py) reads and writes only the endpoint's own prefixes of the
results bucket.

L1 resources for the SageMaker model, endpoint config and endpoint: the L2 constructs (in the alpha
module) cannot set InferenceAmiVersion, the model-download timeout, uncompressed S3 model data or a
deployment config, which these endpoints need. Everything around them uses the stable L2 constructs.

Physical names all start with the endpoint's name (PREFIX-NAME): alarms too, so that the role, the alarm
topic and the key can name them by pattern.
"""

from __future__ import annotations

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

from stacks import names
from stacks.config import AsyncConfig, KitConfig
from stacks.endpoint_role import INSTANCE_METRICS, ArtifactRef, ImageRef, execution_role
from stacks.nag import acknowledge
from stacks.serving import AsyncServing, RealtimeServing, Serving

# An update that trips one of these is rolled back (async endpoints publish no model errors and take minutes a slide).
ROLLBACK_ALARMS = ("Errors5xx", "ModelErrors", "Latency", "InvocationFailures")


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
        results_bucket: str,
        serving_async: AsyncConfig | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.endpoint_name = names.endpoint_name(config.prefix, name)
        self.models = models
        self.results_bucket = results_bucket
        self.serving: Serving = (
            AsyncServing(self, config, serving_async, key) if serving_async else RealtimeServing(self, config)
        )
        serving = self.serving
        # SageMaker writes to this fixed name, so the log group is named. Kept on update and delete (audit logs),
        # deleted when its own creation rolls back, so a failed first deploy never blocks the next one. After a
        # destroy, `cdk deploy --import-existing-resources` adopts it (docs/deploying.md, "Removal").
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            log_group_name=names.log_group(self.endpoint_name),
            encryption_key=key,
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
        )
        self.alarms = self._alarms(config, alarm_topic)
        self.rollback_alarms = [a for a in self.alarms if a.node.id in ROLLBACK_ALARMS]
        self.role = execution_role(self, config, image, artifact, key)
        self.model = model = sagemaker.CfnModel(
            self,
            "Model",
            execution_role_arn=self.role.role_arn,
            enable_network_isolation=config.networkIsolation,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=image.uri,
                # SAGEMAKER_HOSTED: the server ignores on-premise bearer tokens (IAM guards InvokeEndpoint).
                environment={"OPTIMUS_MODELS": ",".join(models), "SAGEMAKER_HOSTED": "1", **serving.environment},
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
                    variant_name=names.VARIANT,
                    model_name=model.attr_model_name,
                    instance_type=config.instanceType,
                    initial_instance_count=serving.initial_instances,
                    inference_ami_version=config.inferenceAmiVersion,
                    container_startup_health_check_timeout_in_seconds=config.startupTimeoutS,
                    model_data_download_timeout_in_seconds=config.startupTimeoutS,
                    routing_config=serving.routing,
                )
            ],
            kms_key_id=None if config.local_nvme else key.key_arn,
            async_inference_config=serving.async_inference_config,
        )
        if config.local_nvme:
            acknowledge(
                endpoint_config,
                "HIPAA.Security-SageMakerEndpointConfigurationKMSKeyConfigured",
                reason=f"{config.instanceType} keeps the model on local NVMe storage encrypted by a hardware module, "
                "which a KMS key on the endpoint config does not encrypt (SageMaker's API reference once said "
                "CreateEndpointConfig refuses one there); types without local storage get the kit's key.",
            )
        endpoint = sagemaker.CfnEndpoint(
            self,
            "Endpoint",
            endpoint_name=self.endpoint_name,
            endpoint_config_name=endpoint_config.attr_endpoint_config_name,
            # Updates keep the instance count autoscaling reached, and roll back when an alarm trips.
            retain_all_variant_properties=True,
            deployment_config=_deployment(serving.deployment, config, self.rollback_alarms),
        )
        endpoint.node.add_dependency(self.log_group)  # the alarms: by Ref, in the deployment config
        if config.autoscaling:
            serving.scale(self._scalable_target(endpoint))

    def prefix(self, what: str) -> str:
        """The key prefix of one of INPUTS or OUTPUTS (stacks/endpoint_role.py) in the results bucket:
        PREFIX-NAME/async/input/."""
        return f"{self.endpoint_name}/{what}"

    def results_uri(self, what: str) -> str:
        return f"s3://{self.results_bucket}/{self.prefix(what)}"

    def _scalable_target(self, endpoint: sagemaker.CfnEndpoint) -> appscaling.ScalableTarget:
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
            resource_id=f"endpoint/{self.endpoint_name}/variant/{names.VARIANT}",
            min_capacity=self.serving.min_instances,
            max_capacity=self.serving.max_instances,
        )
        target.node.add_dependency(endpoint)
        return target

    def metric(
        self, name: str, statistic: str, minutes: int = 1, namespace: str = "AWS/SageMaker"
    ) -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace=namespace,
            metric_name=name,
            dimensions_map={"EndpointName": self.endpoint_name, "VariantName": names.VARIANT},
            statistic=statistic,
            period=Duration.minutes(minutes),
        )

    def queue_metric(self, name: str, statistic: str, minutes: int = 1) -> cloudwatch.Metric:
        """An async endpoint's queue metrics (backlog, its age, capacity) carry the endpoint's name only."""
        return cloudwatch.Metric(
            namespace="AWS/SageMaker",
            metric_name=name,
            dimensions_map={"EndpointName": self.endpoint_name},
            statistic=statistic,
            period=Duration.minutes(minutes),
        )

    def instance_metric(self, name: str) -> cloudwatch.Metric:
        """CPU, memory, disk, GPU, GPU memory: percent, of one core or GPU (so up to 100 x cores or GPUs)."""
        return self.metric(name, "Average", namespace=INSTANCE_METRICS)

    def _alarms(self, config: KitConfig, topic: sns.ITopic) -> list[cloudwatch.Alarm]:
        """Those of every endpoint, then its serving's; each tells the alarm topic when it trips and clears."""
        alarms = [
            self.alarm(
                "Errors5xx", "5xx", "5xx answers (failed forward passes or crashes)",
                self.metric("Invocation5XXErrors", "Sum", minutes=5), config.errorAlarmCount,
            ),
            self.alarm(
                "GpuMemory", "gpu-memory", f"GPU memory over {config.gpuMemoryAlarmPercent:g}% (of one GPU), 5 minutes",
                self.instance_metric("GPUMemoryUtilization"), config.gpuMemoryAlarmPercent, periods=5,
            ),
            *self.serving.alarms(),
        ]  # fmt: skip
        for alarm in alarms:
            alarm.add_alarm_action(actions.SnsAction(topic))
            alarm.add_ok_action(actions.SnsAction(topic))
        return alarms

    def alarm(
        self,
        construct_id: str,
        suffix: str,
        description: str,
        metric: cloudwatch.Metric,
        threshold: float,
        *,
        periods: int = 1,
        datapoints: int | None = None,
    ) -> cloudwatch.Alarm:
        """ENDPOINT-SUFFIX: the metric at or over the threshold for `periods` periods (missing data is fine)."""
        return cloudwatch.Alarm(
            self,
            construct_id,
            alarm_name=f"{self.endpoint_name}-{suffix}",
            alarm_description=f"{self.endpoint_name}: {description}",
            metric=metric,
            threshold=threshold,
            evaluation_periods=periods,
            datapoints_to_alarm=datapoints,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )


def _deployment(
    deployment: str, config: KitConfig, alarms: list[cloudwatch.Alarm]
) -> sagemaker.CfnEndpoint.DeploymentConfigProperty:
    """How an update rolls out: a new fleet beside the old (blue/green, all traffic at once or a one-instance
    canary first) or one instance at a time (rolling); either way the rollback alarms are watched for
    deploymentBakeS after each step, and a tripped one rolls everything back."""
    one = sagemaker.CfnEndpoint.CapacitySizeProperty(type="INSTANCE_COUNT", value=1)
    bake = config.deploymentBakeS
    timeout = min(28800, max(600, 2 * config.startupTimeoutS + 2 * bake))
    rollback = sagemaker.CfnEndpoint.AutoRollbackConfigProperty(
        alarms=[sagemaker.CfnEndpoint.AlarmProperty(alarm_name=a.alarm_name) for a in alarms]
    )
    if deployment == "rolling":
        rolling = sagemaker.CfnEndpoint.RollingUpdatePolicyProperty(
            maximum_batch_size=one, wait_interval_in_seconds=bake, maximum_execution_timeout_in_seconds=timeout
        )
        return sagemaker.CfnEndpoint.DeploymentConfigProperty(
            rolling_update_policy=rolling, auto_rollback_configuration=rollback
        )
    canary = deployment == "canary"
    routing = sagemaker.CfnEndpoint.TrafficRoutingConfigProperty(
        type="CANARY" if canary else "ALL_AT_ONCE", wait_interval_in_seconds=bake, canary_size=one if canary else None
    )
    blue_green = sagemaker.CfnEndpoint.BlueGreenUpdatePolicyProperty(
        traffic_routing_configuration=routing,
        termination_wait_in_seconds=bake,
        maximum_execution_timeout_in_seconds=timeout,
    )
    return sagemaker.CfnEndpoint.DeploymentConfigProperty(
        blue_green_update_policy=blue_green, auto_rollback_configuration=rollback
    )


def _uncompressed(artifact: ArtifactRef) -> sagemaker.CfnModel.ModelDataSourceProperty:
    source = sagemaker.CfnModel.S3DataSourceProperty(
        s3_uri=artifact.uri, s3_data_type="S3Prefix", compression_type="None"
    )
    return sagemaker.CfnModel.ModelDataSourceProperty(s3_data_source=source)

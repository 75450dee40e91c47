"""One SageMaker endpoint serving one model package: execution role, model, endpoint config, endpoint,
log group, autoscaling, and alarms (which also guard every update: a tripped alarm rolls it back).

An endpoint is real-time, or asynchronous (`"async"` in its entry: whole slides, cohorts): requests queue,
SageMaker reads each from the results bucket and writes its answer (or failure) back there, tells two SNS
topics, and scales on the queue down to zero. Every endpoint's model also serves batch transform jobs,
whose role (the model's) reads and writes only the endpoint's own prefixes of the results bucket.

L1 resources for the SageMaker model, endpoint config and endpoint: the L2 constructs (in the alpha
module) cannot set InferenceAmiVersion, the model-download timeout, uncompressed S3 model data or a
deployment config, which these endpoints need. Everything around them uses the stable L2 constructs.

Physical names all start with the endpoint's name (PREFIX-NAME): alarms too, so that the role, the alarm
topic and the key can name them by pattern.
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

from model_code.settings import REALTIME_RESPONSE_MB
from stacks import names
from stacks.config import AsyncConfig, KitConfig
from stacks.nag import acknowledge, nag_resource

# An update that trips one of these is rolled back (async endpoints publish no model errors and take minutes a slide).
ROLLBACK_ALARMS = ("Errors5xx", "ModelErrors", "Latency", "InvocationFailures")
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
        self.serving_async = serving_async
        self.results_bucket = results_bucket
        self.topics = self._topics(key) if serving_async else {}
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
        self.role = self._role(config, image, artifact, key)
        self.model = model = sagemaker.CfnModel(
            self,
            "Model",
            execution_role_arn=self.role.role_arn,
            enable_network_isolation=config.networkIsolation,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=image.uri,
                # SAGEMAKER_HOSTED: the server ignores on-premise bearer tokens (IAM guards InvokeEndpoint).
                # MAX_RESPONSE_MB: a real-time answer must fit InvokeEndpoint's 6 MB payload; an async one goes to S3.
                environment={
                    "OPTIMUS_MODELS": ",".join(models),
                    "SAGEMAKER_HOSTED": "1",
                    **({} if serving_async else {"MAX_RESPONSE_MB": f"{REALTIME_RESPONSE_MB:g}"}),
                },
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
                    # An async endpoint starts with one instance; scaling takes it to its minimum (0 allowed).
                    initial_instance_count=max(1, serving_async.minInstances) if serving_async else config.minInstances,
                    inference_ami_version=config.inferenceAmiVersion,
                    container_startup_health_check_timeout_in_seconds=config.startupTimeoutS,
                    model_data_download_timeout_in_seconds=config.startupTimeoutS,
                    # A batching GPU server: send each request to the instance with the fewest in flight (an async
                    # endpoint's own queue hands requests to instances as they take them).
                    routing_config=None
                    if serving_async
                    else sagemaker.CfnEndpointConfig.RoutingConfigProperty(
                        routing_strategy="LEAST_OUTSTANDING_REQUESTS"
                    ),
                )
            ],
            kms_key_id=None if config.local_nvme else key.key_arn,
            async_inference_config=self._async_config(serving_async, key) if serving_async else None,
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
            # A queue has no canary share and its minimum may be 0: async endpoints update blue/green at once.
            deployment_config=_deployment(
                "blue-green" if serving_async else config.deployment, config, self.rollback_alarms
            ),
        )
        endpoint.node.add_dependency(self.log_group)  # the alarms: by Ref, in the deployment config
        if config.autoscaling:
            target = self._scalable_target(config, endpoint)
            if serving_async:
                self._scale_on_backlog(config, serving_async, target)
            else:
                self._scale_on_invocations(config, target)

    def prefix(self, what: str) -> str:
        """The key prefix of one of INPUTS or OUTPUTS in the results bucket: PREFIX-NAME/async/input/."""
        return f"{self.endpoint_name}/{what}"

    def results_uri(self, what: str) -> str:
        return f"s3://{self.results_bucket}/{self.prefix(what)}"

    def _topics(self, key: kms.IKey) -> dict[str, sns.Topic]:
        """SNS topics SageMaker tells when an async request succeeds or fails (the runner can follow them)."""
        return {
            outcome: sns.Topic(
                self,
                f"Async{outcome.capitalize()}",
                master_key=key,
                enforce_ssl=True,
                display_name=f"{self.endpoint_name} async requests: {outcome}",
            )
            for outcome in ("success", "error")
        }

    def _async_config(
        self, serving_async: AsyncConfig, key: kms.IKey
    ) -> sagemaker.CfnEndpointConfig.AsyncInferenceConfigProperty:
        return sagemaker.CfnEndpointConfig.AsyncInferenceConfigProperty(
            output_config=sagemaker.CfnEndpointConfig.AsyncInferenceOutputConfigProperty(
                s3_output_path=self.results_uri("async/output/"),
                s3_failure_path=self.results_uri("async/failures/"),
                kms_key_id=key.key_arn,
                notification_config=sagemaker.CfnEndpointConfig.AsyncInferenceNotificationConfigProperty(
                    success_topic=self.topics["success"].topic_arn, error_topic=self.topics["error"].topic_arn
                ),
            ),
            client_config=sagemaker.CfnEndpointConfig.AsyncInferenceClientConfigProperty(
                max_concurrent_invocations_per_instance=serving_async.maxConcurrentInvocationsPerInstance
            ),
        )

    def _role(self, config: KitConfig, image: ImageRef, artifact: ArtifactRef, key: kms.IKey) -> iam.Role:
        """Only what SageMaker needs to start this model and watch its updates: pull its image, read its data,
        write its logs and instance metrics, read its rollback alarms."""
        stack = Stack.of(self)
        bucket = bucket_arn(stack, artifact.bucket)
        model_objects = f"{bucket}/{artifact.key}*" if artifact.is_prefix else f"{bucket}/{artifact.key}"
        statements = [
            *pull_image(image),
            iam.PolicyStatement(
                sid="ReadModelData",
                actions=["s3:GetObject"],
                resources=[model_objects],
            ),
            iam.PolicyStatement(sid="DecryptModelDataAndImage", actions=["kms:Decrypt"], resources=[key.key_arn]),
            iam.PolicyStatement(
                sid="WriteLogs",
                actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                resources=[self.log_group.log_group_arn],
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
                    for alarm in self.rollback_alarms
                ],
            ),
        ]
        results = f"{bucket_arn(stack, self.results_bucket)}/"
        statements += [
            iam.PolicyStatement(
                sid="ReadRequests", actions=["s3:GetObject"], resources=[results + self.prefix(p) + "*" for p in INPUTS]
            ),
            iam.PolicyStatement(
                sid="ListBatchInput",
                actions=["s3:ListBucket"],
                resources=[bucket_arn(stack, self.results_bucket)],
                conditions={"StringLike": {"s3:prefix": [f"{self.prefix('batch/input/')}*"]}},
            ),
            iam.PolicyStatement(
                sid="WriteResults",
                actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[results + self.prefix(p) + "*" for p in OUTPUTS],
            ),
            iam.PolicyStatement(sid="EncryptResults", actions=["kms:GenerateDataKey"], resources=[key.key_arn]),
        ]
        if self.topics:
            statements.append(
                iam.PolicyStatement(
                    sid="NotifyOutcomes", actions=["sns:Publish"], resources=[t.topic_arn for t in self.topics.values()]
                )
            )
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
        role, policy = sagemaker_role(
            self,
            "Execution",
            statements,
            description=f"SageMaker execution role of endpoint {self.endpoint_name}",
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
                f"AwsSolutions-IAM5[Resource::{nag_resource(stack.resolve(results + self.prefix(p)))}*]"
                for p in PREFIXES
            ),
            reason="Requests and results are objects SageMaker names (one per request or input file), under this "
            "endpoint's own input and output prefixes of the results bucket.",
        )
        return role

    def _scalable_target(self, config: KitConfig, endpoint: sagemaker.CfnEndpoint) -> appscaling.ScalableTarget:
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
            min_capacity=self.serving_async.minInstances if self.serving_async else config.minInstances,
            max_capacity=(self.serving_async and self.serving_async.maxInstances) or config.maxInstances,
        )
        target.node.add_dependency(endpoint)
        return target

    def _scale_on_invocations(self, config: KitConfig, target: appscaling.ScalableTarget) -> None:
        policies: list[tuple[str, float, appscaling.PredefinedMetric]] = [
            (
                "InvocationsPerInstance",
                config.target_invocations_per_instance,
                appscaling.PredefinedMetric.SAGEMAKER_VARIANT_INVOCATIONS_PER_INSTANCE,
            )
        ]
        if config.concurrentRequestsPerInstance:
            # Requests in flight, sampled every 10 s: scales out within a minute of a burst, where invocations per
            # instance (1-minute metric, 3 breaching minutes) takes several. Scale-in needs both policies to agree.
            policies.append(
                (
                    "ConcurrentRequests",
                    config.concurrentRequestsPerInstance,
                    appscaling.PredefinedMetric.SAGEMAKER_VARIANT_CONCURRENT_REQUESTS_PER_MODEL_HIGH_RESOLUTION,
                )
            )
        for name, value, metric in policies:
            target.scale_to_track_metric(
                name,
                target_value=value,
                predefined_metric=metric,
                scale_in_cooldown=Duration.seconds(config.scaleInCooldownS),
                scale_out_cooldown=Duration.seconds(config.scaleOutCooldownS),
            )

    def _scale_on_backlog(
        self, config: KitConfig, serving_async: AsyncConfig, target: appscaling.ScalableTarget
    ) -> None:
        """Queued requests per instance, down to minInstances (0: none while the queue is empty); at zero
        instances that metric has nothing to divide by, so a step policy on HasBacklogWithoutCapacity adds the
        first instance as soon as a request waits."""
        target.scale_to_track_metric(
            "Backlog",
            target_value=serving_async.backlogPerInstance,
            custom_metric=self.queue_metric("ApproximateBacklogSizePerInstance", "Average"),
            scale_in_cooldown=Duration.seconds(config.scaleInCooldownS),
            scale_out_cooldown=Duration.seconds(config.scaleOutCooldownS),
        )
        wake = appscaling.StepScalingAction(
            self,
            "WakeFromZero",
            scaling_target=target,
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            cooldown=Duration.seconds(config.scaleOutCooldownS),
            metric_aggregation_type=appscaling.MetricAggregationType.MAXIMUM,
        )
        wake.add_adjustment(adjustment=1, lower_bound=0)
        alarm = cloudwatch.Alarm(
            self,
            "BacklogWithoutCapacity",
            alarm_name=f"{self.endpoint_name}-backlog-without-capacity",
            alarm_description=f"{self.endpoint_name}: requests wait and no instance runs: add one (scaling, no page)",
            metric=self.queue_metric("HasBacklogWithoutCapacity", "Maximum"),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(actions.ApplicationScalingAction(wake))

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
        alarms = [
            self._alarm(
                "Errors5xx", "5xx", "5xx answers (failed forward passes or crashes)",
                self.metric("Invocation5XXErrors", "Sum", minutes=5), config.errorAlarmCount,
            ),
            self._alarm(
                "GpuMemory", "gpu-memory", f"GPU memory over {config.gpuMemoryAlarmPercent:g}% (of one GPU), 5 minutes",
                self.instance_metric("GPUMemoryUtilization"), config.gpuMemoryAlarmPercent, periods=5,
            ),
        ]  # fmt: skip
        if self.serving_async:
            alarms += [
                self._alarm(
                    "InvocationFailures", "invocation-failures", "async requests that failed (see the failure prefix)",
                    self.metric("InvocationFailures", "Sum", minutes=5), config.errorAlarmCount,
                ),
                self._alarm(
                    "OldBacklog", "old-backlog",
                    f"the oldest queued request waits over {self.serving_async.backlogAgeAlarmS} s: the endpoint is at "
                    f"its maxInstances, cannot scale out, or its instances fail",
                    self.queue_metric("ApproximateAgeOfOldestRequest", "Maximum"),
                    self.serving_async.backlogAgeAlarmS, periods=5,
                ),
            ]  # fmt: skip
        else:
            alarms += [
                self._alarm(
                    "ModelErrors", "model-errors", "invocations the container answered with an error",
                    self.metric("InvocationModelErrors", "Sum", minutes=5), config.errorAlarmCount,
                ),
                self._alarm(
                    "Latency", "latency", f"p95 model latency above {config.latencyAlarmMs:g} ms",
                    self.metric("ModelLatency", "p95"), config.latencyAlarmMs * 1000,  # ModelLatency is in µs
                    periods=5, datapoints=3,
                ),
                self._alarm(
                    "AtMaxInstances", "at-max-instances",
                    f"invocations per instance 20% over the scaling target for 15 minutes: the endpoint is at "
                    f"maxInstances ({config.maxInstances}) or cannot scale out",
                    self.metric("InvocationsPerInstance", "Sum"), config.target_invocations_per_instance * 1.2,
                    periods=15,
                ),
            ]  # fmt: skip
        for alarm in alarms:
            alarm.add_alarm_action(actions.SnsAction(topic))
            alarm.add_ok_action(actions.SnsAction(topic))
        return alarms

    def _alarm(
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


def _uncompressed(artifact: ArtifactRef) -> sagemaker.CfnModel.ModelDataSourceProperty:
    source = sagemaker.CfnModel.S3DataSourceProperty(
        s3_uri=artifact.uri, s3_data_type="S3Prefix", compression_type="None"
    )
    return sagemaker.CfnModel.ModelDataSourceProperty(s3_data_source=source)

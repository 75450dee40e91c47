"""How an endpoint serves: real-time (InvokeEndpoint, tile by tile) or asynchronous (`"async"` in its entry:
whole slides, cohorts). ModelEndpoint chooses one of these once; each holds what differs between the two:
the container's environment, the variant's instance counts and routing, the endpoint config's async inference
config, how an update rolls out, the scaling policies, the alarms, the role's extra statements, the stack
outputs and the dashboard row.

An async endpoint's requests queue: SageMaker reads each from the results bucket, writes its answer (or
failure) back there, tells two SNS topics, and scales on the queue down to zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aws_cdk import Duration
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_sns as sns

from model_code.settings import REALTIME_RESPONSE_MB
from stacks import names
from stacks.config import AsyncConfig, KitConfig

if TYPE_CHECKING:
    from stacks.endpoint import ModelEndpoint

Metrics = Sequence[cloudwatch.IMetric]
Panel = tuple[str, Metrics] | tuple[str, Metrics, Metrics]  # a graph: title, left metrics[, right metrics]


class RealtimeServing:
    """InvokeEndpoint: each answer must fit its 6 MB payload; scales on invocations (and requests in flight)."""

    label = "real-time"
    async_inference_config = None

    def __init__(self, endpoint: ModelEndpoint, config: KitConfig) -> None:
        self.endpoint = endpoint
        self.config = config
        # MAX_RESPONSE_MB: the server refuses an answer InvokeEndpoint could not return.
        self.environment = {"MAX_RESPONSE_MB": f"{REALTIME_RESPONSE_MB:g}"}
        # A batching GPU server: send each request to the instance with the fewest in flight.
        self.routing = sagemaker.CfnEndpointConfig.RoutingConfigProperty(routing_strategy="LEAST_OUTSTANDING_REQUESTS")
        self.deployment = config.deployment
        self.initial_instances = self.min_instances = config.minInstances
        self.max_instances = config.maxInstances

    def alarms(self) -> list[cloudwatch.Alarm]:
        config, metric, alarm = self.config, self.endpoint.metric, self.endpoint.alarm
        return [
            alarm(
                "ModelErrors", "model-errors", "invocations the container answered with an error",
                metric("InvocationModelErrors", "Sum", minutes=5), config.errorAlarmCount,
            ),
            alarm(
                "Latency", "latency", f"p95 model latency above {config.latencyAlarmMs:g} ms",
                metric("ModelLatency", "p95"), config.latencyAlarmMs * 1000,  # ModelLatency is in µs
                periods=5, datapoints=3,
            ),
            alarm(
                "AtMaxInstances", "at-max-instances",
                f"invocations per instance 20% over the scaling target for 15 minutes: the endpoint is at "
                f"maxInstances ({config.maxInstances}) or cannot scale out",
                metric("InvocationsPerInstance", "Sum"), config.target_invocations_per_instance * 1.2,
                periods=15,
            ),
        ]  # fmt: skip

    def scale(self, target: appscaling.ScalableTarget) -> None:
        config = self.config
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

    def role_statements(self) -> list[iam.PolicyStatement]:
        return []

    def outputs(self) -> dict[str, str]:
        return {}

    def panels(self) -> list[Panel]:
        metric = self.endpoint.metric
        return [
            ("invocations (one per tile)", [metric("Invocations", "Sum"), metric("InvocationsPerInstance", "Sum")]),
            ("model latency (µs)", [metric("ModelLatency", "p50"), metric("ModelLatency", "p95")]),
            (
                "errors",
                [metric("Invocation4XXErrors", "Sum", minutes=5), metric("Invocation5XXErrors", "Sum", minutes=5)],
            ),
        ]


class AsyncServing:
    """Requests queue in the results bucket; answers and failures land there, and SNS topics tell of them."""

    label = "async"
    # A queue has no canary share and its minimum may be 0: async endpoints update blue/green at once.
    deployment = "blue-green"

    def __init__(self, endpoint: ModelEndpoint, config: KitConfig, settings: AsyncConfig, key: kms.IKey) -> None:
        self.endpoint = endpoint
        self.config = config
        self.settings = settings
        self.key = key
        # The answer goes to S3, so no response limit; the queue hands requests to instances as they take them.
        self.environment: dict[str, str] = {}
        self.routing = None
        # It starts with one instance; scaling takes it to its minimum (0 allowed).
        self.initial_instances = max(1, settings.minInstances)
        self.min_instances = settings.minInstances
        self.max_instances = settings.max_instances_or(config.maxInstances)
        self.topics = {  # SageMaker tells these when a request succeeds or fails (the runner can follow them)
            outcome: sns.Topic(
                endpoint,
                f"Async{outcome.capitalize()}",
                master_key=key,
                enforce_ssl=True,
                display_name=f"{endpoint.endpoint_name} async requests: {outcome}",
            )
            for outcome in ("success", "error")
        }

    @property
    def async_inference_config(self) -> sagemaker.CfnEndpointConfig.AsyncInferenceConfigProperty:
        return sagemaker.CfnEndpointConfig.AsyncInferenceConfigProperty(
            output_config=sagemaker.CfnEndpointConfig.AsyncInferenceOutputConfigProperty(
                s3_output_path=self.endpoint.results_uri("async/output/"),
                s3_failure_path=self.endpoint.results_uri("async/failures/"),
                kms_key_id=self.key.key_arn,
                notification_config=sagemaker.CfnEndpointConfig.AsyncInferenceNotificationConfigProperty(
                    success_topic=self.topics["success"].topic_arn, error_topic=self.topics["error"].topic_arn
                ),
            ),
            client_config=sagemaker.CfnEndpointConfig.AsyncInferenceClientConfigProperty(
                max_concurrent_invocations_per_instance=self.settings.maxConcurrentInvocationsPerInstance
            ),
        )

    def alarms(self) -> list[cloudwatch.Alarm]:
        metric, queue, alarm = self.endpoint.metric, self.endpoint.queue_metric, self.endpoint.alarm
        age = self.settings.backlogAgeAlarmS
        return [
            alarm(
                "InvocationFailures", "invocation-failures", "async requests that failed (see the failure prefix)",
                metric("InvocationFailures", "Sum", minutes=5), self.config.errorAlarmCount,
            ),
            alarm(
                "OldBacklog", "old-backlog",
                f"the oldest queued request waits over {age} s: the endpoint is at "
                f"its maxInstances, cannot scale out, or its instances fail",
                queue("ApproximateAgeOfOldestRequest", "Maximum"), age, periods=5,
            ),
        ]  # fmt: skip

    def scale(self, target: appscaling.ScalableTarget) -> None:
        """Queued requests per instance, down to minInstances (0: none while the queue is empty); at zero
        instances that metric has nothing to divide by, so a step policy on HasBacklogWithoutCapacity adds the
        first instance as soon as a request waits."""
        endpoint, config = self.endpoint, self.config
        target.scale_to_track_metric(
            "Backlog",
            target_value=self.settings.backlogPerInstance,
            custom_metric=endpoint.queue_metric("ApproximateBacklogSizePerInstance", "Average"),
            scale_in_cooldown=Duration.seconds(config.scaleInCooldownS),
            scale_out_cooldown=Duration.seconds(config.scaleOutCooldownS),
        )
        wake = appscaling.StepScalingAction(
            endpoint,
            "WakeFromZero",
            scaling_target=target,
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            cooldown=Duration.seconds(config.scaleOutCooldownS),
            metric_aggregation_type=appscaling.MetricAggregationType.MAXIMUM,
        )
        wake.add_adjustment(adjustment=1, lower_bound=0)
        alarm = cloudwatch.Alarm(
            endpoint,
            "BacklogWithoutCapacity",
            alarm_name=f"{endpoint.endpoint_name}-backlog-without-capacity",
            alarm_description=f"{endpoint.endpoint_name}: requests wait and no instance runs: add one "
            "(scaling, no page)",
            metric=endpoint.queue_metric("HasBacklogWithoutCapacity", "Maximum"),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(actions.ApplicationScalingAction(wake))

    def role_statements(self) -> list[iam.PolicyStatement]:
        topics = [t.topic_arn for t in self.topics.values()]
        return [iam.PolicyStatement(sid="NotifyOutcomes", actions=["sns:Publish"], resources=topics)]

    def outputs(self) -> dict[str, str]:
        """The async prefixes and topics, for `kit slides run --endpoint`."""
        _, _, async_input, async_output, async_failures = names.PREFIXES
        success, error = names.TOPICS
        prefix = self.endpoint.prefix
        return {
            async_input: prefix("async/input/"),
            async_output: prefix("async/output/"),
            async_failures: prefix("async/failures/"),
            success: self.topics["success"].topic_arn,
            error: self.topics["error"].topic_arn,
        }

    def panels(self) -> list[Panel]:
        """The queue (backlog, per instance), time in it, processing time, outcomes."""
        metric, queue = self.endpoint.metric, self.endpoint.queue_metric
        return [
            (
                "backlog (queued requests)",
                [queue("ApproximateBacklogSize", "Average"), queue("ApproximateBacklogSizePerInstance", "Average")],
                [queue("HasBacklogWithoutCapacity", "Maximum")],
            ),
            (
                "time in queue (ms; oldest request in s)",
                [metric("TimeInBacklog", "p50"), metric("TimeInBacklog", "p95")],
                [queue("ApproximateAgeOfOldestRequest", "Maximum")],
            ),
            (
                "processing time per request (ms)",
                [metric("TotalProcessingTime", "p50"), metric("TotalProcessingTime", "p95")],
            ),
            (
                "requests processed and failed",
                [
                    metric("InvocationsProcessed", "Sum", minutes=5),
                    metric("InvocationFailures", "Sum", minutes=5),
                    metric("Invocation5XXErrors", "Sum", minutes=5),
                ],
            ),
        ]


Serving = RealtimeServing | AsyncServing

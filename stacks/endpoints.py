"""The endpoints of the configured model packages, their image and model data, a dashboard, and where
operators find them (stack outputs, SSM parameters).

A local artifact not packaged yet is an error annotation of this stack, not an exception: the CDK CLI
refuses to deploy (or synthesize) this stack with the message, and the foundation stack is unaffected."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Annotations, CfnOutput, Fn, Stack, Token
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from stacks import names, s3_uri
from stacks.cohort_job import CohortJobRole
from stacks.config import (
    ECR_URI,
    KIT_BUCKET,
    SSE_S3,
    ConfigError,
    EndpointConfig,
    KitConfig,
    MissingArtifactError,
)
from stacks.endpoint import ModelEndpoint
from stacks.endpoint_role import ArtifactRef, ImageRef
from stacks.foundation import COHORT_OUTPUT, FoundationStack
from stacks.serving import Panel

REPO_ROOT = Path(__file__).resolve().parents[1]


def image_asset(scope: Construct, directory: Path, torch_version: str | None) -> ecr_assets.DockerImageAsset:
    """The serving image, built from container/Dockerfile. The build context is what .dockerignore lets through
    (container/ and model_code/ only), so no other edit changes the image's hash or replaces the endpoints."""
    return ecr_assets.DockerImageAsset(
        scope,
        "Image",
        directory=str(directory),
        file="container/Dockerfile",
        platform=ecr_assets.Platform.LINUX_AMD64,
        build_args={"TORCH_VERSION": torch_version} if torch_version else None,
    )


class EndpointsStack(Stack):
    def __init__(
        self, scope: Construct, construct_id: str, config: KitConfig, foundation: FoundationStack, **kwargs: object
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        self.problems: list[str] = []
        image = self._image(config)
        self.add_stack_dependency(foundation)
        results_bucket = Fn.import_value(foundation.results_bucket_export)
        self.endpoints: dict[str, ModelEndpoint] = {}
        for name, endpoint_config in config.endpoints.items():
            try:
                artifact = self._artifact(name, endpoint_config, config, foundation)
            except MissingArtifactError as exc:
                self.problems.append(f"endpoints.{name}: {exc}")
                Annotations.of(self).add_error(f"endpoints.{name}: {exc}")
                continue
            endpoint = ModelEndpoint(
                self,
                names.title(name),
                name=name,
                models=endpoint_config.models,
                config=config,
                image=image,
                artifact=artifact,
                key=foundation.key,
                alarm_topic=foundation.alarms,
                results_bucket=results_bucket,
                serving_async=endpoint_config.serving_async,
            )
            self.endpoints[name] = endpoint
            self._outputs(name, endpoint)
            ssm.StringParameter(
                self,
                f"{names.title(name)}NameParameter",
                parameter_name=f"/{config.prefix}/{name}/endpoint-name",
                string_value=endpoint.endpoint_name,
            )
            ssm.StringParameter(
                self,
                f"{names.title(name)}ModelsParameter",
                parameter_name=f"/{config.prefix}/{name}/models",
                string_value=",".join(endpoint.models),
            )
        if config.cohortJobs:
            self._cohort_jobs(config, image, foundation, results_bucket)
        # The results bucket is the foundation's output (an output made of an import is what cfn-lint warns of).
        CfnOutput(self, names.FOUNDATION_STACK, value=foundation.stack_name)
        self._dashboard(config)

    def _outputs(self, name: str, endpoint: ModelEndpoint) -> None:
        """What `kit slides run --endpoint` and `kit batch` read: the endpoint, its model and role (batch
        transform runs the model under its role), and its key prefixes in the results bucket (the foundation
        stack's ResultsBucket)."""
        title = names.title(name)
        batch_input, batch_output = names.PREFIXES[:2]
        outputs = {
            names.ENDPOINT_NAME: endpoint.endpoint_name,
            names.MODELS: ",".join(endpoint.models),
            names.MODEL_NAME: endpoint.model.attr_model_name,
            names.ROLE_ARN: endpoint.role.role_arn,
            names.SERVING: endpoint.serving.label,
            batch_input: endpoint.prefix("batch/input/"),
            batch_output: endpoint.prefix("batch/output/"),
            **endpoint.serving.outputs(),
        }
        for key, value in outputs.items():
            CfnOutput(self, title + key, value=value)

    def _cohort_jobs(self, config: KitConfig, image: ImageRef, foundation: FoundationStack, results: str) -> None:
        """The cohort-job role and what `kit cohort run` reads (the output prefix is the foundation's output)."""
        assert config.cohortJobs is not None
        jobs = CohortJobRole(
            self,
            "CohortJob",
            jobs=config.cohortJobs,
            output=config.cohortJobs.output or f"s3://{results}/{COHORT_OUTPUT}",
            image=image,
            artifact_bucket=Fn.import_value(foundation.artifact_bucket_export),
            key=foundation.key,
            prefix=config.prefix,
        )
        CfnOutput(self, names.COHORT_JOB_ROLE_ARN, value=jobs.role.role_arn)
        CfnOutput(self, names.COHORT_JOB_IMAGE_URI, value=image.uri)
        CfnOutput(self, names.COHORT_JOB_INPUTS, value=",".join(config.cohortJobs.inputs))

    def _image(self, config: KitConfig) -> ImageRef:
        if config.image == "asset":
            asset = image_asset(self, REPO_ROOT, config.torchVersion)
            return ImageRef(asset.image_uri, asset.repository.repository_arn)
        match = ECR_URI.match(config.image)
        assert match is not None  # validated in KitConfig
        account, region, _, repository, _ = match.groups()
        if not Token.is_unresolved(self.region) and region != self.region:
            raise ConfigError(
                f"image: '{config.image}' is in {region}, the endpoints deploy to {self.region}; SageMaker pulls "
                f"only from its own region: push the image to {self.region} (or enable ECR replication)"
            )
        return ImageRef(config.image, f"arn:{self.partition}:ecr:{region}:{account}:repository/{repository}")

    def _artifact(
        self, name: str, endpoint: EndpointConfig, config: KitConfig, foundation: FoundationStack
    ) -> ArtifactRef:
        """kit://KEY in the foundation's bucket, s3://BUCKET/KEY elsewhere (with its key), or the local
        model.tar.gz uploaded as a CDK file asset (to the bootstrap bucket, whose key S3 itself uses)."""
        if endpoint.artifact_in_kit_bucket:
            bucket = Fn.import_value(foundation.artifact_bucket_export)
            return ArtifactRef(bucket, endpoint.artifact.removeprefix(KIT_BUCKET), None)
        if endpoint.artifact_in_s3:
            key = None if config.artifactKmsKeyArn == SSE_S3 else config.artifactKmsKeyArn
            return ArtifactRef(*s3_uri.split(endpoint.artifact), key)  # as KitConfig checked it
        tarball = endpoint.local_tarball(REPO_ROOT)
        asset = s3_assets.Asset(self, f"{names.title(name)}ModelData", path=str(tarball))
        return ArtifactRef(asset.s3_bucket_name, asset.s3_object_key, None)

    def _dashboard(self, config: KitConfig) -> None:
        dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name=f"{config.prefix}-endpoints")
        for endpoint in self.endpoints.values():
            dashboard.add_widgets(*_graphs(endpoint, *endpoint.serving.panels()))
            gauge = endpoint.instance_metric
            dashboard.add_widgets(
                *_graphs(
                    endpoint,
                    ("GPU and GPU memory (% of one GPU)", [gauge("GPUUtilization"), gauge("GPUMemoryUtilization")]),
                    (
                        "CPU (% of one core), memory, disk (%)",
                        [gauge("CPUUtilization"), gauge("MemoryUtilization"), gauge("DiskUtilization")],
                    ),
                )
            )
            dashboard.add_widgets(
                cloudwatch.AlarmStatusWidget(
                    title=f"{endpoint.endpoint_name}: alarms", alarms=endpoint.alarms, width=24
                )
            )


def _graphs(endpoint: ModelEndpoint, *panels: Panel) -> list[cloudwatch.IWidget]:
    """A row of graphs, one per (title, left metrics[, right metrics]), titled with the endpoint's name."""
    return [
        cloudwatch.GraphWidget(
            title=f"{endpoint.endpoint_name}: {panel[0]}",
            left=panel[1],
            right=panel[2] if len(panel) > 2 else None,
            width=24 // len(panels),
        )
        for panel in panels
    ]

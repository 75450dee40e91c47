"""The endpoints of the configured model packages, their image and model data, a dashboard, and where
operators find them (stack outputs, SSM parameters)."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from stacks.config import ECR_URI, S3_URI, EndpointConfig, KitConfig
from stacks.endpoint import ArtifactRef, ImageRef, ModelEndpoint
from stacks.foundation import FoundationStack

REPO_ROOT = Path(__file__).resolve().parents[1]


class EndpointsStack(Stack):
    def __init__(
        self, scope: Construct, construct_id: str, config: KitConfig, foundation: FoundationStack, **kwargs: object
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        image = self._image(config)
        self.endpoints: dict[str, ModelEndpoint] = {}
        for name, endpoint_config in config.endpoints.items():
            endpoint = ModelEndpoint(
                self,
                _title(name),
                name=name,
                models=endpoint_config.models,
                config=config,
                image=image,
                artifact=self._artifact(name, endpoint_config),
                key=foundation.key,
                alarm_topic=foundation.alarms,
            )
            self.endpoints[name] = endpoint
            CfnOutput(self, f"{_title(name)}EndpointName", value=endpoint.endpoint_name)
            CfnOutput(self, f"{_title(name)}Models", value=",".join(endpoint.models))
            ssm.StringParameter(
                self,
                f"{_title(name)}NameParameter",
                parameter_name=f"/optimus/{name}/endpoint-name",
                string_value=endpoint.endpoint_name,
            )
            ssm.StringParameter(
                self,
                f"{_title(name)}ModelsParameter",
                parameter_name=f"/optimus/{name}/models",
                string_value=",".join(endpoint.models),
            )
        self._dashboard()

    def _image(self, config: KitConfig) -> ImageRef:
        if config.image == "asset":
            asset = ecr_assets.DockerImageAsset(
                self,
                "Image",
                directory=str(REPO_ROOT),
                file="container/Dockerfile",
                platform=ecr_assets.Platform.LINUX_AMD64,
            )
            return ImageRef(asset.image_uri, asset.repository.repository_arn)
        match = ECR_URI.match(config.image)
        assert match is not None  # validated in KitConfig
        account, region, _, repository, _ = match.groups()
        return ImageRef(config.image, f"arn:{self.partition}:ecr:{region}:{account}:repository/{repository}")

    def _artifact(self, name: str, endpoint: EndpointConfig) -> ArtifactRef:
        """An s3:// URI as given, or the local model.tar.gz uploaded as a CDK file asset."""
        match = S3_URI.match(endpoint.artifact)
        if match:
            return ArtifactRef(match.group(1), match.group(2))
        tarball = endpoint.local_tarball(REPO_ROOT)
        asset = s3_assets.Asset(self, f"{_title(name)}ModelData", path=str(tarball))
        return ArtifactRef(asset.s3_bucket_name, asset.s3_object_key)

    def _dashboard(self) -> None:
        dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name="optimus-endpoints")
        for endpoint in self.endpoints.values():
            title = endpoint.endpoint_name
            dashboard.add_widgets(
                cloudwatch.GraphWidget(
                    title=f"{title}: invocations (one per tile)",
                    left=[endpoint.metric("Invocations", "Sum"), endpoint.metric("InvocationsPerInstance", "Sum")],
                    width=8,
                ),
                cloudwatch.GraphWidget(
                    title=f"{title}: model latency (µs)",
                    left=[endpoint.metric("ModelLatency", "p50"), endpoint.metric("ModelLatency", "p95")],
                    width=8,
                ),
                cloudwatch.GraphWidget(
                    title=f"{title}: errors",
                    left=[
                        endpoint.metric("Invocation4XXErrors", "Sum", minutes=5),
                        endpoint.metric("Invocation5XXErrors", "Sum", minutes=5),
                    ],
                    width=8,
                ),
            )
            dashboard.add_widgets(
                cloudwatch.AlarmStatusWidget(title=f"{title}: alarms", alarms=endpoint.alarms, width=24)
            )


def _title(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))

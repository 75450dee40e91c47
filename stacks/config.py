"""The kit's deployment configuration: cdk.json context, overridable with `-c key=value`, validated.

Context values given on the command line arrive as strings; numbers and JSON objects are parsed here.
Every error names the context key and says what is expected.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from model_code.catalogue import MODELS, canonical_name
from model_code.manifest import MANIFEST

ECR_URI = re.compile(
    r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?/([a-z0-9._/-]+)(:[\w.-]+|@sha256:[0-9a-f]{64})$"
)
S3_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(.+)$")
INSTANCE_TYPE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
GPU_FAMILIES = ("ml.g4dn.", "ml.g5.", "ml.g6.", "ml.g6e.", "ml.p3.", "ml.p4d.", "ml.p5.")
KEYS = (
    "endpoints", "instanceType", "minInstances", "maxInstances", "tilesPerSecondPerInstance", "targetUtilisation",
    "scaleInCooldownS", "scaleOutCooldownS", "image", "vpcSubnetIds", "vpcSecurityGroupIds", "kmsKeyArn",
    "alarmEmail", "latencyAlarmMs", "errorAlarmCount", "inferenceAmiVersion", "startupTimeoutS", "tags",
    "account", "region",
)  # fmt: skip


class ConfigError(ValueError):
    """A context value the kit cannot deploy; the message names the key."""


class EndpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str]
    artifact: str  # kit package output (directory or model.tar.gz), or s3://bucket/key.tar.gz, or s3://bucket/prefix/

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        names = []
        for name in models:
            canonical = canonical_name(name)
            if canonical is None:
                raise ValueError(f"unknown model '{name}' (known: {', '.join(MODELS)})")
            names.append(canonical)
        if not names or len(set(names)) != len(names):
            raise ValueError("give each model once, and at least one")
        return names

    @property
    def artifact_in_s3(self) -> bool:
        return self.artifact.startswith("s3://")

    def local_tarball(self, root: Path) -> Path:
        """model.tar.gz of a local artifact, after checking it holds this endpoint's models."""
        path = (root / self.artifact).resolve()
        tarball = path if path.suffix == ".gz" else path / "model.tar.gz"
        model_dir = tarball.parent / "model"
        if not tarball.is_file() or not (model_dir / MANIFEST).is_file():
            raise ConfigError(
                f"artifact '{self.artifact}': no model.tar.gz and model/manifest.json there; "
                f"run `python -m kit package --models {','.join(self.models)} --out {self.artifact}`"
            )
        held = {m["name"] for m in json.loads((model_dir / MANIFEST).read_text())["models"]}
        missing = set(self.models) - held
        if missing:
            raise ConfigError(f"artifact '{self.artifact}' does not hold {sorted(missing)} (it holds {sorted(held)})")
        return tarball


class KitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: dict[str, EndpointConfig]
    instanceType: str = "ml.g5.xlarge"
    minInstances: int = Field(1, ge=1)
    maxInstances: int = Field(4, ge=1)
    tilesPerSecondPerInstance: float = Field(50.0, gt=0)  # measure with bench/gpu_bench.py
    targetUtilisation: float = Field(0.7, gt=0, le=1)
    scaleInCooldownS: int = Field(600, ge=0)
    scaleOutCooldownS: int = Field(120, ge=0)
    image: str = "asset"  # "asset" (built from container/), or an ECR image URI
    vpcSubnetIds: list[str] = []
    vpcSecurityGroupIds: list[str] = []
    kmsKeyArn: str | None = None
    alarmEmail: str | None = None
    latencyAlarmMs: float = Field(5000, gt=0)
    errorAlarmCount: int = Field(5, ge=1)
    inferenceAmiVersion: str = "al2-ami-sagemaker-inference-gpu-3-1"  # NVIDIA driver 550, CUDA 12.4
    startupTimeoutS: int = Field(1800, ge=60, le=3600)
    tags: dict[str, str] = {"project": "optimus-sagemaker-kit"}
    account: str = "123456789012"  # placeholders for offline synthesis
    region: str = "eu-west-1"

    @field_validator("endpoints")
    @classmethod
    def _endpoint_names(cls, endpoints: dict[str, EndpointConfig]) -> dict[str, EndpointConfig]:
        if not endpoints:
            raise ValueError("define at least one endpoint")
        for name in endpoints:
            if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", name):
                raise ValueError(f"endpoint name '{name}': lower-case letters, digits and '-', up to 31 characters")
        return endpoints

    @field_validator("instanceType")
    @classmethod
    def _instance_type(cls, value: str) -> str:
        if not INSTANCE_TYPE.match(value):
            raise ValueError(f"'{value}' is not a SageMaker instance type such as ml.g5.xlarge")
        if not value.startswith(GPU_FAMILIES):
            raise ValueError(f"'{value}' has no NVIDIA GPU; use one of {', '.join(f + '*' for f in GPU_FAMILIES)}")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if value != "asset" and not ECR_URI.match(value):
            raise ValueError(
                f"'{value}' is neither 'asset' nor an ECR image URI (ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG)"
            )
        return value

    @field_validator("vpcSubnetIds", "vpcSecurityGroupIds")
    @classmethod
    def _vpc_ids(cls, values: list[str], info: ValidationInfo) -> list[str]:
        prefix = "subnet" if info.field_name == "vpcSubnetIds" else "sg"
        for value in values:
            if not re.fullmatch(rf"{prefix}-[0-9a-f]{{8}}([0-9a-f]{{9}})?", value):
                raise ValueError(f"'{value}' is not an ID of the form {prefix}-0123456789abcdef0")
        return values

    @field_validator("kmsKeyArn")
    @classmethod
    def _kms(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[0-9a-f-]{36}$", value):
            raise ValueError(f"'{value}' is not a KMS key ARN")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KitConfig:
        if self.minInstances > self.maxInstances:
            raise ValueError(f"minInstances ({self.minInstances}) is more than maxInstances ({self.maxInstances})")
        if bool(self.vpcSubnetIds) != bool(self.vpcSecurityGroupIds):
            raise ValueError("vpcSubnetIds and vpcSecurityGroupIds go together: give both or neither")
        for name, endpoint in self.endpoints.items():
            if endpoint.artifact_in_s3 and not S3_URI.match(endpoint.artifact):
                raise ValueError(f"endpoints.{name}.artifact: '{endpoint.artifact}' is not s3://BUCKET/KEY")
        return self

    @property
    def target_invocations_per_instance(self) -> int:
        """Invocations per instance per minute to track: one invocation is one tile for the vendor's client."""
        return max(1, round(self.tilesPerSecondPerInstance * 60 * self.targetUtilisation))


def load_config(context: dict[str, Any]) -> KitConfig:
    """Validate the kit's context keys (strings from `-c` are parsed as numbers or JSON)."""
    values = {key: _parse(context[key]) for key in KEYS if key in context and context[key] is not None}
    try:
        return KitConfig.model_validate(values)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'context'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid cdk.json context:\n  " + "\n  ".join(problems)) from None


def _parse(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[0123456789":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value

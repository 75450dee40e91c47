"""The kit's deployment configuration: cdk.json context, overridable with `-c key=value`, validated.

Context values given on the command line arrive as strings; numbers and JSON objects are parsed here.
Every error names the context key and says what is expected; a key the kit does not know is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from model_code.catalogue import MODELS, canonical_name
from model_code.errors import invalid_fields
from model_code.manifest import MANIFEST
from stacks import names, s3_uri

ECR_URI = re.compile(
    r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?/([a-z0-9._/-]+)(:[\w.-]+|@sha256:[0-9a-f]{64})$"
)
INSTANCE_TYPE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):key/[0-9a-f-]{36}$")
GPU_FAMILIES = ("ml.g4dn.", "ml.g5.", "ml.g6.", "ml.g6e.", "ml.p3.", "ml.p4d.", "ml.p5.")
# Families whose instance storage is local NVMe, encrypted by a hardware module: a KMS key on the endpoint config
# buys nothing there. The others (ml.p3) keep their model on an EBS volume, which the kit's key then encrypts.
LOCAL_NVME_FAMILIES = ("ml.g4dn.", "ml.g5.", "ml.g6.", "ml.g6e.", "ml.p4d.", "ml.p5.")
KIT_BUCKET = "kit://"  # an artifact in the foundation stack's own bucket: kit://KEY
SSE_S3 = "sse-s3"  # artifactKmsKeyArn for another bucket encrypted with S3-managed keys
# Context keys that belong to the CDK and its CLI, not to the kit (feature flags and lookups all contain ':').
CDK_KEYS = frozenset({"acknowledged-issue-numbers", "cli-telemetry"})


class ConfigError(ValueError):
    """A context value the kit cannot deploy; the message names the key."""


class MissingArtifactError(ConfigError):
    """A local artifact that has not been packaged yet: an error only for the stack that deploys it."""


class AsyncConfig(BaseModel):
    """An endpoint served asynchronously (whole slides): requests queue, results land in the results bucket."""

    model_config = ConfigDict(extra="forbid")

    # The server runs one slide at a time; a second one in flight would wait inside it, on its invocation timeout.
    maxConcurrentInvocationsPerInstance: int = Field(1, ge=1, le=1000)
    minInstances: int = Field(0, ge=0)  # 0: scales to zero when the queue is empty
    maxInstances: int | None = Field(None, ge=1)  # default: the kit's maxInstances
    backlogPerInstance: float = Field(2, gt=0)  # queued requests per instance to track (a slide takes minutes)
    backlogAgeAlarmS: int = Field(6 * 3600, ge=60)  # alarm when the oldest queued request is older than this

    def max_instances_or(self, kit_max: int) -> int:
        """Its own maxInstances, else the kit's."""
        return self.maxInstances or kit_max


class CohortJobsConfig(BaseModel):
    """Cohort training jobs (`kit cohort run`): where their role may read slides and write features."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(min_length=1)  # s3://BUCKET/PREFIX/ the jobs read slides from
    output: str | None = None  # s3://BUCKET/PREFIX/ they write; default: the results bucket's cohorts/
    inputKmsKeyArns: list[str] = []  # KMS keys that encrypt the input buckets (SSE-KMS), if any

    @field_validator("inputs", "output")
    @classmethod
    def _prefixes(cls, value: list[str] | str | None) -> list[str] | str | None:
        for uri in [value] if isinstance(value, str) else value or []:
            _, key = s3_uri.parse(uri, "s3://BUCKET/PREFIX/")
            if not key.strip("/") or "*" in uri or not uri.endswith("/"):
                raise ValueError(
                    f"'{uri}': give s3://BUCKET/PREFIX/ (a folder, ending in '/'); a whole bucket or a wildcard "
                    "would let every cohort job read (or write) all of it"
                )
        return value

    @field_validator("inputKmsKeyArns")
    @classmethod
    def _keys(cls, values: list[str]) -> list[str]:
        for value in values:
            if not KMS_KEY_ARN.match(value):
                raise ValueError(f"'{value}' is not a KMS key ARN")
        return values


class EndpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    models: list[str]
    # kit package output (directory or model.tar.gz), kit://key (the kit's bucket), or s3://bucket/key[.tar.gz|/]
    artifact: str
    # "async": true, or a block of AsyncConfig's settings: an asynchronous endpoint (whole slides, cohorts)
    serving_async: AsyncConfig | None = Field(None, alias="async")

    @field_validator("serving_async", mode="before")
    @classmethod
    def _async_flag(cls, value: Any) -> Any:
        if value is True:
            return {}
        return None if value is False else value

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
        return self.artifact.startswith((s3_uri.SCHEME, KIT_BUCKET))

    @property
    def artifact_in_kit_bucket(self) -> bool:
        return self.artifact.startswith(KIT_BUCKET)

    def local_tarball(self, root: Path) -> Path:
        """model.tar.gz of a local artifact, after checking it holds this endpoint's models."""
        path = (root / self.artifact).resolve()
        tarball = path if path.suffix == ".gz" else path / "model.tar.gz"
        model_dir = tarball.parent / "model"
        if not tarball.is_file() or not (model_dir / MANIFEST).is_file():
            raise MissingArtifactError(
                f"artifact '{self.artifact}': no model.tar.gz and model/manifest.json there; "
                f"run `python -m kit package --models {','.join(self.models)} --out {self.artifact}`"
            )
        held = {m["name"] for m in json.loads((model_dir / MANIFEST).read_text())["models"]}
        missing = set(self.models) - held
        if missing:
            raise ConfigError(f"artifact '{self.artifact}' does not hold {sorted(missing)} (it holds {sorted(held)})")
        return tarball


class KitConfig(BaseModel):
    """Every context key the kit reads; its fields are the keys (docs/configuration.md)."""

    model_config = ConfigDict(extra="forbid")

    endpoints: dict[str, EndpointConfig]
    prefix: str = "optimus"  # names every physical resource (and the stacks): two copies side by side differ here
    instanceType: str = names.DEFAULT_INSTANCE_TYPE
    minInstances: int = Field(1, ge=1)
    maxInstances: int = Field(4, ge=1)
    tilesPerSecondPerInstance: float = Field(40.0, gt=0)  # estimate from an H200 (docs/performance.md); measure
    targetUtilisation: float = Field(0.7, gt=0, le=1)
    scaleInCooldownS: int = Field(600, ge=0)
    scaleOutCooldownS: int = Field(120, ge=0)
    # Second, high-resolution target (requests in flight per instance): 0.7 x the server's batch of 32; 0 turns it off
    concurrentRequestsPerInstance: float = Field(22, ge=0)
    autoscaling: bool = True  # off for the first step of an instance-type change (docs/deploying.md)
    deployment: Literal["blue-green", "canary", "rolling"] = "blue-green"
    deploymentBakeS: int = Field(600, ge=0, le=3600)  # alarms watched before the old fleet goes
    image: str = "asset"  # "asset" (built from container/), or an ECR image URI
    torchVersion: str | None = None  # Docker build argument TORCH_VERSION of the image asset
    networkIsolation: bool = True
    vpcSubnetIds: list[str] = []
    vpcSecurityGroupIds: list[str] = []
    kmsKeyArn: str | None = None
    artifactKmsKeyArn: str | None = None  # key of an s3:// artifact outside the kit's bucket, or "sse-s3"
    alarmEmail: str | None = None
    cohortJobs: CohortJobsConfig | None = None  # a least-privilege role for `kit cohort run`'s training jobs
    latencyAlarmMs: float = Field(5000, gt=0)
    errorAlarmCount: int = Field(5, ge=1)
    gpuMemoryAlarmPercent: float = Field(90, gt=0)
    inferenceAmiVersion: str = "al2-ami-sagemaker-inference-gpu-3-1"  # NVIDIA driver 550, CUDA 12.4
    startupTimeoutS: int = Field(1800, ge=60, le=3600)
    tags: dict[str, str] = {"project": "optimus-sagemaker-kit"}
    account: str = "123456789012"  # placeholders for offline synthesis
    region: str = "eu-west-1"

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,23}", value) or value.endswith("-"):
            raise ValueError(
                f"'{value}': lower-case letters, digits and '-', up to 24 characters, starting with a letter"
            )
        return value

    @field_validator("torchVersion")
    @classmethod
    def _torch_version(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d+\.\d+\.\d+", value):
            raise ValueError(f"'{value}' is not a torch release such as 2.9.1")
        return value

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

    @field_validator("kmsKeyArn", "artifactKmsKeyArn")
    @classmethod
    def _kms(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or KMS_KEY_ARN.match(value) or (info.field_name == "artifactKmsKeyArn" and value == SSE_S3):
            return value
        also = f" or '{SSE_S3}'" if info.field_name == "artifactKmsKeyArn" else ""
        raise ValueError(f"'{value}' is not a KMS key ARN{also}")

    @model_validator(mode="after")
    def _consistent(self) -> KitConfig:
        if self.minInstances > self.maxInstances:
            raise ValueError(f"minInstances ({self.minInstances}) is more than maxInstances ({self.maxInstances})")
        for name, endpoint in self.endpoints.items():
            if endpoint.serving_async and endpoint.serving_async.minInstances > self.max_instances(endpoint):
                raise ValueError(
                    f"endpoints.{name}.async: minInstances ({endpoint.serving_async.minInstances}) is more than "
                    f"maxInstances ({self.max_instances(endpoint)})"
                )
        if bool(self.vpcSubnetIds) != bool(self.vpcSecurityGroupIds):
            raise ValueError("vpcSubnetIds and vpcSecurityGroupIds go together: give both or neither")
        if len(set(self.vpcSubnetIds)) == 1:
            raise ValueError("vpcSubnetIds: SageMaker needs at least two subnets, in different Availability Zones")
        if self.deployment in ("canary", "rolling") and self.minInstances < 2:
            raise ValueError(
                f"deployment '{self.deployment}' moves one instance of at least two at a time: set minInstances >= 2, "
                "or use deployment 'blue-green'"
            )
        for name, endpoint in self.endpoints.items():
            self._check_artifact(name, endpoint)
        return self

    def _check_artifact(self, name: str, endpoint: EndpointConfig) -> None:
        where = f"endpoints.{name}.artifact"
        if endpoint.artifact_in_kit_bucket:
            if not endpoint.artifact.removeprefix(KIT_BUCKET).strip("/"):
                raise ValueError(f"{where}: '{endpoint.artifact}' names no key: kit://PREFIX/ or kit://KEY.tar.gz")
        elif endpoint.artifact.startswith(s3_uri.SCHEME):
            try:
                s3_uri.parse(endpoint.artifact, needs_key=True)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            if self.artifactKmsKeyArn is None:
                raise ValueError(
                    f"{where}: '{endpoint.artifact}' is outside the kit's bucket, so the endpoint's role cannot know "
                    f"its key: set artifactKmsKeyArn to the KMS key that encrypts it (or '{SSE_S3}'), "
                    "or upload it to the kit's bucket and write kit://KEY"
                )

    def max_instances(self, endpoint: EndpointConfig) -> int:
        """The most instances the endpoint scales to: an async endpoint's own, else the kit's."""
        serving = endpoint.serving_async
        return serving.max_instances_or(self.maxInstances) if serving else self.maxInstances

    @property
    def local_nvme(self) -> bool:
        """Whether the instance type keeps the model on hardware-encrypted NVMe (no KMS key on the config)."""
        return self.instanceType.startswith(LOCAL_NVME_FAMILIES)

    @property
    def stack_prefix(self) -> str:
        """'optimus-stage' -> 'OptimusStage': the stacks are OptimusStageFoundation and OptimusStageEndpoints."""
        return names.title(self.prefix)

    @property
    def target_invocations_per_instance(self) -> int:
        """Invocations per instance per minute to track: one invocation is one tile for the vendor's client."""
        return max(1, round(self.tilesPerSecondPerInstance * 60 * self.targetUtilisation))


KEYS = tuple(KitConfig.model_fields)


def load_config(context: dict[str, Any], given: Collection[str] = ()) -> KitConfig:
    """Validate the kit's context keys (strings from `-c` are parsed as numbers or JSON); refuse unknown ones.
    `given`: the keys that came from `-c` (the others from cdk.json), named so in an error."""
    unknown = sorted(key for key in context if key not in KEYS and key not in CDK_KEYS and ":" not in key)
    if unknown:
        raise ConfigError(f"unknown context key(s) {', '.join(unknown)}; the kit's keys are: {', '.join(KEYS)}")
    values = {key: _parse(key, context[key]) for key in KEYS if key in context and context[key] is not None}
    try:
        return KitConfig.model_validate(values)
    except ValidationError as exc:
        problems = []
        for where, _, reason in invalid_fields(exc, "context"):
            if given and where != "context":
                where += " (from -c)" if where.split(".")[0] in given else " (from cdk.json)"
            problems.append(f"{where}: {reason}")
        raise ConfigError("invalid context:\n  " + "\n  ".join(problems)) from None


def cdk_context(root: Path, argv: list[str]) -> dict[str, Any]:
    """cdk.json's context with `-c key=value` pairs over it, as `python app.py` and `python -m kit` read it."""
    context: dict[str, Any] = json.loads((root / "cdk.json").read_text())["context"]
    pairs = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("-c", "--context")]
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise ConfigError(f"-c {pair!r}: give KEY=VALUE (e.g. -c minInstances=1)")
        context[key] = value
    return context


def _parse(key: str, value: Any) -> Any:
    """A string from `-c` as JSON when it starts like a number, object or list; broken JSON is named."""
    if isinstance(value, str) and value[:1] in "{[0123456789":
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            if value[:1] in "{[":
                raise ConfigError(f"{key}: not valid JSON: {exc.msg} at character {exc.pos} of {value!r}") from None
            return value
    return value

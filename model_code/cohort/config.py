"""What a SageMaker training job tells its container: the files under `input/config/` (resourceconfig.json,
hyperparameters.json, inputdataconfig.json), read into a `JobConfig`; a job that cannot start is a `JobFailed`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_code.cohort.contract import CHECKPOINTS, MODEL_CHANNEL, SLIDES_CHANNEL
from model_code.errors import ClientError
from model_code.slides.options import SlideOptions, slide_options

GPU_INSTANCE = re.compile(r"^ml\.[gp]\d")  # ml.g4dn, ml.g5, ml.g6e, ml.p3, ml.p4d, ml.p5...
SDK_PREFIX = "sagemaker_"  # hyperparameters the SageMaker Python SDK adds for its own containers


class JobFailed(Exception):
    """What stops every slide: written to output/failure (the job's FailureReason), exit 1."""


@dataclass(frozen=True)
class JobConfig:
    ml_root: Path
    host: str
    hosts: list[str]
    instance_type: str | None
    options: SlideOptions
    channels: dict[str, dict[str, Any]]  # inputdataconfig.json: channel -> TrainingInputMode, S3DistributionType...

    def channel(self, name: str) -> Path:
        return self.ml_root / "input" / "data" / name

    @property
    def checkpoints(self) -> Path:
        return self.ml_root / CHECKPOINTS

    @property
    def sharded(self) -> bool:
        """ShardedByS3Key: SageMaker gave this host its own share of the slides, so it runs all it sees."""
        return self.channels[SLIDES_CHANNEL].get("S3DistributionType") == "ShardedByS3Key"

    @property
    def gpu_required(self) -> bool:
        return bool(self.instance_type and GPU_INSTANCE.match(self.instance_type))


def read_config(ml_root: Path) -> JobConfig:
    config = ml_root / "input" / "config"
    resources = _json(config / "resourceconfig.json")
    channels = _json(config / "inputdataconfig.json")
    host, hosts = resources.get("current_host"), resources.get("hosts")
    if not isinstance(host, str) or not isinstance(hosts, list) or host not in hosts:
        raise JobFailed(f"resourceconfig.json: current_host {host!r} is not one of hosts {hosts!r}")
    for name in (MODEL_CHANNEL, SLIDES_CHANNEL):
        if name not in channels or not (ml_root / "input" / "data" / name).is_dir():
            raise JobFailed(f"the job has no input channel '{name}' (channels: {', '.join(channels) or 'none'})")
    hyperparameters = _json(config / "hyperparameters.json") if (config / "hyperparameters.json").exists() else {}
    return JobConfig(
        ml_root, host, sorted(hosts), resources.get("current_instance_type"), read_options(hyperparameters), channels
    )


def read_options(hyperparameters: dict[str, Any]) -> SlideOptions:
    """The slide options from hyperparameters (strings, as SageMaker writes them; the Python SDK's
    JSON-quoted strings too), validated as the slide path validates its options."""
    pairs = [(k, _unquote(str(v))) for k, v in hyperparameters.items() if not k.startswith(SDK_PREFIX)]
    try:
        return slide_options({}, pairs)
    except ClientError as exc:
        raise JobFailed(f"hyperparameter '{exc.field}': {exc.reason}") from None


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return str(json.loads(value))
        except ValueError:
            return value
    return value


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except OSError as exc:
        raise JobFailed(f"cannot read {path.name}: {exc.strerror}") from None
    except ValueError as exc:
        raise JobFailed(f"{path.name} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise JobFailed(f"{path.name} is not a JSON object")
    return value

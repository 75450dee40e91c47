"""A training job's /opt/ml tree on this machine, laid out as SageMaker lays it out for the cohort worker
(`python -m model_code.cohort --ml-root DIR`, or the image's `train` with DIR mounted at /opt/ml): the three
config files as SageMaker writes them, the channels, the checkpoints. For tests, the benchmark and the image
check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from model_code.cohort.contract import CHECKPOINTS, COHORT_CHANNEL, MODEL_CHANNEL, SLIDES_CHANNEL


def write_job(
    root: Path,
    host: str,
    hosts: list[str],
    hyperparameters: dict[str, str],
    model: Path,
    slides: Path,
    cohort: Path | None = None,
    instance_type: str = "ml.c5.2xlarge",
    distribution: str = "FullyReplicated",
) -> Path:
    """The tree for `host` at `root`: channels copied from `model` (an unpacked artifact), `slides` and
    `cohort` (a folder holding cohort.jsonl) as FastFile would show them; returns `root`."""
    config = root / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    group = "homogeneousCluster"
    resources = {
        "current_host": host,
        "current_instance_type": instance_type,
        "current_group_name": group,
        "hosts": hosts,
        "instance_groups": [{"instance_group_name": group, "instance_type": instance_type, "hosts": hosts}],
        "network_interface_name": "eth0",
    }
    channels = {MODEL_CHANNEL: model, SLIDES_CHANNEL: slides, **({COHORT_CHANNEL: cohort} if cohort else {})}
    inputs = {
        name: {
            "TrainingInputMode": "File" if name == MODEL_CHANNEL else "FastFile",
            "S3DistributionType": distribution if name == SLIDES_CHANNEL else "FullyReplicated",
            "RecordWrapperType": "None",
        }
        for name in channels
    }
    (config / "resourceconfig.json").write_text(json.dumps(resources))
    (config / "inputdataconfig.json").write_text(json.dumps(inputs))
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    for name, source in channels.items():
        target = root / "input" / "data" / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
    (root / CHECKPOINTS).mkdir(exist_ok=True)
    (root / "output").mkdir(exist_ok=True)
    return root

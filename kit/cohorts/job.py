"""The training-job engine behind `kit cohort run` and `kit cohort status`: a cohort in S3 through the cohort
worker (model_code/cohort) on as many GPU instances as asked, on demand or managed spot, resumable.

Inputs of a job, written by the kit under OUT/.kit/JOB/ (the output prefix, which the job's role may write):
- `slides.manifest`: a ManifestFile channel naming exactly the objects of the slides still missing (a rerun
  gives the job only those, in File mode too, where an S3Prefix channel would download every slide again);
  its prefix is the cohort's root, so a slide keeps its path under the root in the channel and in its output.
- `cohort/cohort.jsonl` (+ `cohort/bulk_rna/N.json`): the `cohort` channel, one line per slide as
  model_code/cohort/contract.py says: the worker runs exactly these.
The job's checkpoint S3 URI is OUT itself: outputs and status lines reach it as they are written and come
back into a restarted job (spot interruption, retry). A slide is missing when its output is not under OUT.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kit import KitError
from kit.cohorts.cohort import CohortSlide, output_name
from kit.s3 import parse
from model_code.cohort import contract
from stacks import names

if TYPE_CHECKING:
    import boto3

    from kit.cohorts.plan import Inputs

KIT_DIR = ".kit/"  # under OUT: the kit's inputs of each job, and SageMaker's (empty) model output
MAX_RUNTIME_S = 28 * 24 * 3600  # StoppingCondition.MaxRuntimeInSeconds: 28 days at most
CHECKPOINTS = "/opt/ml/checkpoints"
RUNNING = ("InProgress", "Stopping")


@dataclass(frozen=True)
class JobStack:
    """What the stacks give cohort jobs (the endpoints stack's CohortJob* outputs; the foundation's output
    prefix, artifact bucket and key)."""

    role_arn: str
    image_uri: str
    inputs: tuple[str, ...]  # s3:// prefixes the role reads slides from
    output: str  # the s3:// prefix the role writes (OUT must be under it)
    artifact_bucket: str
    key_arn: str


def find_job_stack(aws: boto3.Session, stack: str) -> JobStack:
    from kit.endpoints.stack import stack_outputs

    outputs = stack_outputs(aws, stack)
    if names.COHORT_JOB_ROLE_ARN not in outputs:
        raise KitError(
            f"stack {stack} has no cohort-job role: deploy it with the context key cohortJobs "
            '(-c \'cohortJobs={"inputs": ["s3://BUCKET/SLIDES/"]}\'; docs/cohorts.md)'
        )
    foundation = stack_outputs(aws, outputs[names.FOUNDATION_STACK])
    if names.COHORT_JOB_OUTPUT not in foundation:
        raise KitError(
            f"stack {outputs[names.FOUNDATION_STACK]} predates cohort jobs: deploy it again (cdk deploy --all)"
        )
    return JobStack(
        role_arn=outputs[names.COHORT_JOB_ROLE_ARN],
        image_uri=outputs[names.COHORT_JOB_IMAGE_URI],
        inputs=tuple(outputs[names.COHORT_JOB_INPUTS].split(",")),
        output=foundation[names.COHORT_JOB_OUTPUT],
        artifact_bucket=foundation[names.ARTIFACT_BUCKET],
        key_arn=foundation[names.KEY_ARN],
    )


@dataclass(frozen=True)
class Cohort:
    """A cohort's slides in S3, under one root (the manifest's prefix) in one bucket."""

    bucket: str
    root: str  # key prefix, '' or ending in '/'
    slides: list[CohortSlide]

    def relative(self, slide: CohortSlide) -> str:
        return parse(slide.source)[1].removeprefix(self.root)

    def output_key(self, out_prefix: str, slide: CohortSlide, fmt: str) -> str:
        return out_prefix + output_name(self.relative(slide), slide.slide_id if slide.named else None, fmt)


def s3_cohort(slides: list[CohortSlide], prefixes: list[str]) -> Cohort:
    """The cohort's root: the common folder of the prefixes given and of the CSV's slides (all in one bucket)."""
    local = [s.source for s in slides if not s.in_s3]
    if local:
        raise KitError(f"{local[0]}: a training job reads slides from S3; upload them first (aws s3 sync DIR s3://...)")
    buckets = {parse(s.source)[0] for s in slides}
    if len(buckets) > 1:
        raise KitError(f"slides in {len(buckets)} buckets ({', '.join(sorted(buckets))}): a job reads from one")
    keys = [parse(p)[1] for p in prefixes] + [parse(s.source)[1] for s in slides if not s.parts]
    keys += [s.parts[0] for s in slides if s.parts]
    common: list[str] = []
    for segments in zip(*(key.split("/")[:-1] for key in keys), strict=False):
        if len(set(segments)) > 1:
            break
        common.append(segments[0])
    outputs = [s.slide_id for s in slides if s.named]
    if len(set(outputs)) != len(outputs):
        raise KitError("two slides with one slide_id: their outputs would be one file")
    return Cohort(buckets.pop(), "".join(f"{segment}/" for segment in common), slides)


def present(s3: Any, uri: str) -> dict[str, int]:
    """Every object under an s3:// prefix: key -> size."""
    bucket, prefix = parse(uri)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def missing(cohort: Cohort, out: str, fmt: str, existing: Iterable[str]) -> list[CohortSlide]:
    """The slides whose output is not under OUT yet."""
    out_prefix, held = parse(out)[1], set(existing)
    return [s for s in cohort.slides if cohort.output_key(out_prefix, s, fmt) not in held]


def running_jobs(aws: boto3.Session, out: str) -> list[str]:
    """Jobs started over this output (their folders under OUT/.kit/) that still run."""
    bucket, prefix = parse(out + KIT_DIR)
    listed = aws.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/")
    names = [p["Prefix"].removeprefix(prefix).rstrip("/") for p in listed.get("CommonPrefixes", [])]
    from botocore.exceptions import ClientError

    sagemaker, busy = aws.client("sagemaker"), []
    for name in names:
        try:
            status = sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
        except ClientError as exc:  # ResourceNotFound (moto: ValidationException): its inputs, but no job
            if exc.response["Error"]["Code"] not in ("ResourceNotFound", "ValidationException"):
                raise
            continue
        if status in RUNNING:
            busy.append(name)
    return busy


def write_inputs(s3: Any, cohort: Cohort, slides: list[CohortSlide], out: str, job_name: str) -> tuple[str, str]:
    """The slides manifest and the cohort channel under OUT/.kit/JOB/: their S3 URIs."""
    bucket, prefix = parse(f"{out}{KIT_DIR}{job_name}/")
    manifest: list[Any] = [{"prefix": f"s3://{cohort.bucket}/{cohort.root}"}]
    lines = []
    for index, slide in enumerate(slides):
        manifest += [key.removeprefix(cohort.root) for key in (slide.parts or (parse(slide.source)[1],))]
        rna = None
        if slide.bulk_rna is not None:
            rna = f"bulk_rna/{index}.json"
            s3.upload_file(str(slide.bulk_rna), bucket, f"{prefix}cohort/{rna}")
        line = {
            "slide": cohort.relative(slide).rstrip("/"),
            "slide_id": slide.slide_id if slide.named else None,
            "slide_mpp": slide.slide_mpp,
            "bulk_rna": rna,
        }
        lines.append(json.dumps(line))
    s3.put_object(Bucket=bucket, Key=f"{prefix}slides.manifest", Body=json.dumps(manifest).encode())
    s3.put_object(Bucket=bucket, Key=f"{prefix}cohort/{contract.COHORT_FILE}", Body="\n".join(lines).encode() + b"\n")
    return f"s3://{bucket}/{prefix}slides.manifest", f"s3://{bucket}/{prefix}cohort/"


@dataclass(frozen=True)
class JobSettings:
    instance_type: str
    instances: int
    spot: bool
    input_mode: str  # FastFile or File, of the slides channel
    retries: int
    max_runtime_s: int
    volume_gb: int


def max_runtime(plan_hours: float) -> int:
    """Twice the plan's wall time and an hour, within SageMaker's 28 days."""
    return min(MAX_RUNTIME_S, math.ceil(plan_hours * 2 * 3600) + 3600)


def volume_gb(slides: list[CohortSlide], artifact_bytes: int, restored_bytes: int, input_mode: str) -> int:
    """Local disk per instance: the artifact, the checkpoints restored from OUT, two slides (one copied while the
    other runs) or, in File mode, the whole channel; 20% and 10 GB over."""
    sizes = [s.size or 0 for s in slides]
    slides_bytes = sum(sizes) if input_mode == "File" else 2 * max(sizes)
    return math.ceil((artifact_bytes + restored_bytes + slides_bytes) * 1.2 / 1e9) + 10


def job_request(
    name: str,
    stack: JobStack,
    artifact_uri: str,
    inputs: tuple[str, str],
    out: str,
    hyperparameters: dict[str, str],
    settings: JobSettings,
) -> dict[str, Any]:
    """The CreateTrainingJob request: the kit's image and artifact, network isolation, the kit's key on outputs
    (and volumes, where the type has EBS), managed spot when asked, checkpoints = OUT."""
    from stacks.config import LOCAL_NVME_FAMILIES

    manifest, cohort_channel = inputs
    resources: dict[str, Any] = {
        "InstanceType": settings.instance_type,
        "InstanceCount": settings.instances,
        "VolumeSizeInGB": settings.volume_gb,
    }
    if not settings.instance_type.startswith(LOCAL_NVME_FAMILIES):
        resources["VolumeKmsKeyId"] = stack.key_arn  # an EBS volume; NVMe instance storage is hardware-encrypted
    stopping = {"MaxRuntimeInSeconds": settings.max_runtime_s}
    if settings.spot:  # spot capacity may take a while, and the wait covers every retry
        stopping["MaxWaitTimeInSeconds"] = min(max(MAX_RUNTIME_S, settings.max_runtime_s), 2 * settings.max_runtime_s)
    return {
        "TrainingJobName": name,
        "RoleArn": stack.role_arn,
        "AlgorithmSpecification": {
            "TrainingImage": stack.image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": contract.METRIC_DEFINITIONS,
            "EnableSageMakerMetricsTimeSeries": True,
        },
        "HyperParameters": hyperparameters,
        "InputDataConfig": [
            _channel(contract.MODEL_CHANNEL, "S3Prefix", artifact_uri, "File"),
            _channel(contract.SLIDES_CHANNEL, "ManifestFile", manifest, settings.input_mode),
            _channel(contract.COHORT_CHANNEL, "S3Prefix", cohort_channel, "File"),
        ],
        "OutputDataConfig": {"S3OutputPath": out + KIT_DIR, "KmsKeyId": stack.key_arn},
        "ResourceConfig": resources,
        "StoppingCondition": stopping,
        "EnableNetworkIsolation": True,
        "EnableManagedSpotTraining": settings.spot,
        "CheckpointConfig": {"S3Uri": out, "LocalPath": CHECKPOINTS},
        "RetryStrategy": {"MaximumRetryAttempts": settings.retries},
        "Tags": [{"Key": "project", "Value": "optimus-sagemaker-kit"}, {"Key": "cohort-output", "Value": out[:256]}],
    }


def _channel(name: str, data_type: str, uri: str, mode: str) -> dict[str, Any]:
    # FullyReplicated: every host sees the whole channel and the worker splits the slides by bytes itself
    # (ShardedByS3Key splits by count, and would hand a host the parts of a multi-file slide apart).
    source = {"S3DataType": data_type, "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
    return {"ChannelName": name, "DataSource": {"S3DataSource": source}, "InputMode": mode}


def job_name(model: str) -> str:
    return f"cohort-{model}-{time.strftime('%Y%m%d-%H%M%S')}"[:63]


@dataclass
class Progress:
    """Where a job's slides stand, from its cohort.jsonl, the status lines and the outputs under OUT."""

    given: list[str]  # the job's slides, relative paths
    done: dict[str, dict[str, Any]]  # slide -> its `done` status line
    failed: dict[str, str]  # slide -> reason
    outputs: dict[str, str]  # slide -> its output's key

    @property
    def remaining(self) -> int:
        return len(self.given) - len(self.done) - len(self.failed)

    @property
    def tiles_per_s(self) -> float:
        seconds = sum(float(line.get("seconds", 0)) for line in self.done.values())
        return sum(int(line.get("tiles", 0)) for line in self.done.values()) / seconds if seconds else 0.0


def progress(s3: Any, out: str, name: str, outputs: dict[str, str]) -> Progress:
    """`outputs`: slide -> its output key. A slide is done when a `done` line says so and its output is there;
    failed when a line says so and it is not done; else remaining."""
    bucket, prefix = parse(out)
    given = [json.loads(line)["slide"] for line in _read(s3, bucket, f"{prefix}{KIT_DIR}{name}/cohort/cohort.jsonl")]
    held = present(s3, out)
    done: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    wanted = set(given)
    for key in sorted(k for k in held if k.startswith(f"{prefix}{contract.STATUS_DIR}/") and k.endswith(".jsonl")):
        for text in _read(s3, bucket, key):
            line = json.loads(text)
            slide = line.get("slide")
            if slide not in wanted:
                continue
            if line.get("status") == contract.DONE and outputs.get(slide) in held:
                done[slide] = line
            elif line.get("status") == contract.FAILED:
                failed[slide] = str(line.get("reason", ""))
    for slide in done:
        failed.pop(slide, None)
    return Progress(given, done, failed, outputs)


def _read(s3: Any, bucket: str, key: str) -> list[str]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [line for line in body.splitlines() if line.strip()]


def output_keys(s3: Any, out: str, name: str, fmt: str) -> dict[str, str]:
    """slide -> output key, for the slides of a job's cohort.jsonl (the contract's naming)."""
    bucket, prefix = parse(out)
    keys = {}
    for text in _read(s3, bucket, f"{prefix}{KIT_DIR}{name}/cohort/cohort.jsonl"):
        line = json.loads(text)
        keys[line["slide"]] = prefix + output_name(line["slide"], line["slide_id"], fmt)
    return keys


def plan_rows(slides: list[CohortSlide], inputs: Inputs, tiles_per_gb: float) -> list[Any]:
    """The plan of a job over these slides: tiles estimated from each slide's bytes."""
    from kit.cohorts.plan import job_estimates

    seconds = [inputs.slide_seconds((s.size or 0) / 1e9 * tiles_per_gb, s.size or 0) for s in slides]
    return job_estimates(seconds, inputs)


def report(job: dict[str, Any], state: Progress, price: float | None) -> str:
    """The table `kit cohort status` prints."""
    instances = job["ResourceConfig"]["InstanceCount"]
    training = job.get("TrainingTimeInSeconds")
    billable = job.get("BillableTimeInSeconds")
    interruptions = sum(t.get("Status") == "Interrupted" for t in job.get("SecondaryStatusTransitions", []))
    spot = ", spot" if job.get("EnableManagedSpotTraining") else ""
    lines = [
        f"job {job['TrainingJobName']}: {job['TrainingJobStatus']} ({job.get('SecondaryStatus', '')}), "
        f"{instances} x {job['ResourceConfig']['InstanceType']}{spot}",
        f"{len(state.given):,} slides: {len(state.done):,} done, {len(state.failed):,} failed, "
        f"{state.remaining:,} remaining; {sum(int(d.get('tiles', 0)) for d in state.done.values()):,} tiles at "
        f"{state.tiles_per_s:,.1f} tiles/s (per slide, while it ran)",
        f"spot interruptions: {interruptions}",
    ]
    if job.get("FailureReason"):
        lines.append(f"failure: {job['FailureReason']}")
    for slide, reason in sorted(state.failed.items()):
        lines.append(f"  failed {slide}: {reason}")
    if billable is not None:
        hours = billable * instances / 3600
        saving = (
            f"; spot saved {1 - billable / training:.0%} (billable {billable:,} s of {training:,} s)"
            if training
            else ""
        )
        cost = f", ${hours * price:,.2f} at ${price:g}/h" if price is not None else " (--price-per-hour for the cost)"
        lines.append(f"instance-hours: {hours:,.2f}{cost}{saving}")
    else:
        lines.append("instance-hours: not reported until the job ends (BillableTimeInSeconds)")
    return "\n".join(lines)

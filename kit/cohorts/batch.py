"""`kit batch`: a batch transform job over S3 JSON-lines tile files in the vendor's format (one wire record a
line, as its notebooks write them) on the model an endpoint of the stack runs, under that model's role.

boto3, not the SageMaker Python SDK: a transform job is one CreateTransformJob call and a describe loop,
while `sagemaker` 3.x brings 85 packages (mlflow, pandas, pyarrow, scikit-learn, ...) and `sagemaker-core`
20; docs/clients.md, "The SageMaker Python SDK", says how SDK users reach the endpoints.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from kit import CheckFailed, KitError
from kit.cli import add_aws, add_stack, session
from kit.s3 import parse
from stacks import names

if TYPE_CHECKING:
    import boto3

    from kit.cohorts.deployment import Deployment

HELP = "run a batch transform job over S3 JSON-lines tile files on an endpoint's model, and wait for it"
MAX_PAYLOAD_PRODUCT = 100  # MaxConcurrentTransforms x MaxPayloadInMB
PREFIX = "s3://BUCKET/PREFIX/"


def job_request(
    deployment: Deployment, job_name: str, input_uri: str, output_uri: str, args: argparse.Namespace
) -> dict[str, Any]:
    """The CreateTransformJob request: many lines per request (the server batches them), answers in order."""
    from stacks.config import LOCAL_NVME_FAMILIES

    resources: dict[str, Any] = {
        "InstanceType": args.instance_type,
        "InstanceCount": args.instance_count,
        "TransformAmiVersion": args.ami_version,  # the CUDA 12 driver the image's torch needs
    }
    if not args.instance_type.startswith(LOCAL_NVME_FAMILIES):
        resources["VolumeKmsKeyId"] = deployment.key_arn  # an EBS volume; NVMe is hardware-encrypted
    return {
        "TransformJobName": job_name,
        "ModelName": deployment.model_name,
        "MaxConcurrentTransforms": args.max_concurrent,
        "MaxPayloadInMB": args.max_payload_mb,
        "BatchStrategy": "MultiRecord",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": "application/jsonlines",
            "SplitType": "Line",
        },
        "TransformOutput": {
            "S3OutputPath": output_uri,
            "Accept": "application/jsonlines",
            "AssembleWith": "Line",
            "KmsKeyId": deployment.key_arn,
        },
        "TransformResources": resources,
        "Tags": [
            {"Key": "project", "Value": "optimus-sagemaker-kit"},
            {"Key": "endpoint", "Value": deployment.endpoint_name},
        ],
    }


def input_files(aws: boto3.Session, uri: str) -> list[str]:
    """The objects under a prefix, as SageMaker's S3Prefix reads it (every key that starts with it)."""
    bucket, prefix = parse(uri, shape=PREFIX)
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")]


def wait(
    aws: boto3.Session, job_name: str, output_uri: str, files: int, poll_s: float, timeout_s: float
) -> dict[str, Any]:
    """Poll until the job ends, with a bar of output files written out of input files; its last description."""
    from kit.progress import progress

    sagemaker = aws.client("sagemaker")
    deadline = time.monotonic() + timeout_s
    with progress(total=files, unit="file") as bar:
        while True:
            job = sagemaker.describe_transform_job(TransformJobName=job_name)
            done = len(input_files(aws, output_uri))
            bar.update(min(done, files) - bar.n)
            bar.set_postfix_str(job["TransformJobStatus"])
            if job["TransformJobStatus"] in ("Completed", "Failed", "Stopped"):
                return dict(job)
            if time.monotonic() > deadline:
                raise CheckFailed(f"transform job {job_name} still {job['TransformJobStatus']} after {timeout_s:g} s")
            time.sleep(poll_s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_stack(parser)
    parser.add_argument("--endpoint", required=True, help="whose model to run: optimus-h1, or the entry's name h1")
    parser.add_argument(
        "--input", required=True, help="S3 prefix of .jsonl tile files, under the stack's BatchInput for the endpoint"
    )
    parser.add_argument("--output", help="S3 prefix for the answers (default: BatchOutput/JOB/)")
    parser.add_argument("--job-name", help="default: ENDPOINT-YYYYmmdd-HHMMSS")
    parser.add_argument(
        "--instance-type",
        default=names.DEFAULT_INSTANCE_TYPE,
        help="the transform job's instances (default %(default)s)",
    )
    parser.add_argument("--instance-count", type=int, default=1, help="up to 100; files are spread over them")
    parser.add_argument("--max-payload-mb", type=int, default=6, help="per request (SageMaker's default %(default)s)")
    parser.add_argument("--max-concurrent", type=int, default=8, help="requests in flight per instance, %(default)s")
    parser.add_argument("--ami-version", default="al2-ami-sagemaker-batch-gpu-535", help="%(default)s: CUDA 12 driver")
    parser.add_argument("--no-wait", action="store_true", help="start the job and return")
    parser.add_argument("--poll", type=float, default=30, help="seconds between polls, %(default)s")
    parser.add_argument("--timeout", type=float, default=48 * 3600, help="seconds to wait, %(default)s")
    add_aws(parser)


def run(args: argparse.Namespace) -> int:
    from kit.cohorts.deployment import find_deployment

    if not 1 <= args.instance_count <= 100:
        raise KitError(f"--instance-count {args.instance_count}: 1 to 100")
    if args.max_concurrent * args.max_payload_mb > MAX_PAYLOAD_PRODUCT:
        raise KitError(
            f"--max-concurrent {args.max_concurrent} x --max-payload-mb {args.max_payload_mb} is over "
            f"{MAX_PAYLOAD_PRODUCT}: SageMaker refuses the job"
        )
    for field, uri in (("--input", args.input), ("--output", args.output)):
        if uri is not None:
            parse(uri, field, shape=PREFIX)  # a malformed URI is refused before AWS is asked anything
    aws = session(args)
    deployment = find_deployment(aws, args.stack, args.endpoint)
    allowed = deployment.uri("BatchInput")
    if not args.input.rstrip("/").startswith(allowed.rstrip("/")):
        raise KitError(
            f"--input {args.input}: the model's role reads only {allowed}; copy the files there "
            f"(aws s3 sync {args.input} {allowed}NAME/) and pass that prefix"
        )
    files = input_files(aws, args.input)
    if not files:
        raise KitError(f"--input {args.input}: no files there")
    job_name = args.job_name or f"{deployment.endpoint_name}-{time.strftime('%Y%m%d-%H%M%S')}"[-63:]
    output = args.output or deployment.uri("BatchOutput", job_name, "")
    if not output.startswith(deployment.uri("BatchOutput")):
        raise KitError(f"--output {output}: the model's role writes only under {deployment.uri('BatchOutput')}")
    request = job_request(deployment, job_name, args.input, output, args)
    model = aws.client("sagemaker").describe_model(ModelName=deployment.model_name)
    isolated = "on" if model.get("EnableNetworkIsolation") else "OFF"
    aws.client("sagemaker").create_transform_job(**request)
    print(f"started {job_name}: {len(files)} file(s) on {args.instance_count} x {args.instance_type}, model "
          f"{deployment.model_name} (network isolation {isolated}), answers to {output}")  # fmt: skip
    if args.no_wait:
        return 0
    job = wait(aws, job_name, output, len(files), args.poll, args.timeout)
    if job["TransformJobStatus"] != "Completed":
        raise CheckFailed(
            f"transform job {job_name} {job['TransformJobStatus']}: {job.get('FailureReason', 'no reason given')} "
            f"(logs: /aws/sagemaker/TransformJobs, streams {job_name}/...)"
        )
    began, ended = job.get("TransformStartTime"), job.get("TransformEndTime")
    took = f" in {(ended - began).total_seconds() / 60:.1f} min" if began and ended else ""
    print(f"{job_name} completed{took}: answers in {output} (one .out per input file, a line per tile, in order)")
    return 0

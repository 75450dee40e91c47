"""`kit cohort status JOB [--follow] [--download DIR]`: where a cohort job's slides stand (done, failed with
reasons, remaining), its speed, spot interruptions, instance-hours and cost; exit 1 if a slide failed."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kit import CheckFailed, KitError
from kit.cli import add_aws, session

if TYPE_CHECKING:
    import boto3

    from kit.cohorts.job import Progress

HELP = "follow a cohort training job: slides done, failed and remaining, spot interruptions, instance-hours, cost"
ENDED = ("Completed", "Failed", "Stopped")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="the training job's name, as `kit cohort run` printed it")
    parser.add_argument("--follow", action="store_true", help="poll, with a progress bar, until the job ends")
    parser.add_argument("--poll", type=float, default=60, help="seconds between polls, %(default)s")
    parser.add_argument("--timeout", type=float, default=28 * 24 * 3600, help="seconds to follow, %(default)s")
    parser.add_argument("--download", type=Path, metavar="DIR", help="fetch the outputs of the done slides into DIR")
    parser.add_argument("--price-per-hour", type=float, help="on-demand USD per instance-hour, for the cost")
    add_aws(parser)


def run(args: argparse.Namespace) -> int:
    from kit.cohorts import job

    if args.poll <= 0 or args.timeout <= 0:
        raise KitError("--poll and --timeout must be more than 0")
    aws = session(args)
    described, state = _snapshot(aws, args.job)
    if args.follow:
        described, state = _follow(aws, args.job, described, state, args.poll, args.timeout)
    print(job.report(described, state, args.price_per_hour))
    if args.download:
        _download(aws, described, state, args.download)
    return 1 if state.failed or described["TrainingJobStatus"] == "Failed" else 0


def _snapshot(aws: boto3.Session, name: str) -> tuple[dict[str, Any], Progress]:
    from kit.cohorts import job

    described = aws.client("sagemaker").describe_training_job(TrainingJobName=name)
    out = described.get("CheckpointConfig", {}).get("S3Uri", "")
    if not out.endswith("/") or not described.get("HyperParameters", {}).get("format"):
        raise KitError(f"{name} is not a cohort job of the kit (no checkpoint prefix and slide options)")
    s3 = aws.client("s3")
    keys = job.output_keys(s3, out, name, described["HyperParameters"]["format"])
    return described, job.progress(s3, out, name, keys)


def _follow(
    aws: boto3.Session, name: str, described: dict[str, Any], state: Progress, poll_s: float, timeout_s: float
) -> tuple[dict[str, Any], Progress]:
    from tqdm import tqdm

    deadline = time.monotonic() + timeout_s
    with tqdm(total=len(state.given), unit="slide", dynamic_ncols=True) as bar:
        while True:
            bar.update(len(state.done) + len(state.failed) - bar.n)
            bar.set_postfix_str(f"{described['SecondaryStatus']}, {len(state.failed)} failed")
            if described["TrainingJobStatus"] in ENDED:
                return described, state
            if time.monotonic() > deadline:
                raise CheckFailed(f"{name} still {described['TrainingJobStatus']} after {timeout_s:g} s")
            time.sleep(poll_s)
            described, state = _snapshot(aws, name)


def _download(aws: boto3.Session, described: dict[str, Any], state: Progress, target: Path) -> None:
    """The done slides' outputs into DIR, under their names relative to the output prefix; a Zarr output (one
    zip in S3) as the `.zarr` directory the vendor SDK opens."""
    from kit.s3 import parse
    from model_code.slides.layouts import LOCAL_SUFFIXES, SUFFIXES, install

    s3 = aws.client("s3")
    bucket, prefix = parse(described["CheckpointConfig"]["S3Uri"])
    for slide in state.done:
        name = state.outputs[slide].removeprefix(prefix)
        if name.endswith(SUFFIXES["zarr"]):
            name = name.removesuffix(SUFFIXES["zarr"]) + LOCAL_SUFFIXES["zarr"]
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        s3.download_file(bucket, state.outputs[slide], str(partial))
        install(partial, path)
    print(f"downloaded {len(state.done):,} outputs into {target}")

"""`kit slides run --endpoint NAME`: where the cohort's slides come from, the run, the report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kit import KitError
from kit.cli import session
from kit.cohorts.cohort import CohortSlide, read_cohort, slide_id

if TYPE_CHECKING:
    import boto3


def local_slides(args: argparse.Namespace) -> list[CohortSlide]:
    """From a cohort CSV and slide files or directories: read before AWS is asked anything."""
    from kit.slides.run import find_slides

    slides = read_cohort(args.cohort) if args.cohort else []
    local = [Path(s) for s in args.slides if not s.startswith("s3://")]
    if local:
        slides += [CohortSlide(str(p.resolve()), slide_id(p.name)) for p in find_slides(local)]
    return slides


def cohort_slides(args: argparse.Namespace, aws: boto3.Session, local: list[CohortSlide]) -> list[CohortSlide]:
    """`local` and the slides under the s3:// prefixes given as arguments; every slide_id once."""
    from kit.slides.run import SLIDE_SUFFIXES

    slides = list(local)
    for prefix in (s for s in args.slides if s.startswith("s3://")):
        bucket, _, key = prefix.removeprefix("s3://").partition("/")
        pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        found = [
            o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].lower().endswith(SLIDE_SUFFIXES)
        ]
        if not found:
            raise KitError(f"no slides ({', '.join(SLIDE_SUFFIXES)}) under {prefix}")
        slides += [CohortSlide(f"s3://{bucket}/{k}", slide_id(k)) for k in found]
    if not slides:
        raise KitError("no slides: give slide files, directories, s3:// prefixes or --cohort")
    ids = [s.slide_id for s in slides]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise KitError(f"slide ids given twice: {', '.join(repeated)} (name them apart in a cohort CSV's slide_id)")
    return slides


def run_async(args: argparse.Namespace, attributes: str, suffix: str, wanted: dict[str, object]) -> int:
    """`wanted`: the recipe the options ask for (model_code/slides/provenance.py), which existing outputs must match."""
    from kit.cohorts.deployment import find_deployment
    from kit.cohorts.runner import Cohort, instance_hours, report, run_cohort
    from kit.slides.run import SlideJob, check_existing

    local = local_slides(args)
    aws = session(args)
    deployment = find_deployment(aws, args.stack, args.endpoint)
    if deployment.serving != "async":
        raise KitError(f'{deployment.endpoint_name} is a real-time endpoint: deploy an entry with "async": true')
    slides = cohort_slides(args, aws, local)
    cohort = Cohort(deployment, aws, args.out, suffix, attributes, args.retries, min(3600, int(args.timeout)))
    check_existing(
        [SlideJob(Path(s.source), s.slide_id, cohort.target(s.slide_id), bool(s.bulk_rna)) for s in slides], wanted
    )
    requests, wall_s = run_cohort(cohort, slides, args.poll, timeout_s=args.wait_hours * 3600)
    now = time.time()
    hours = instance_hours(aws, deployment.endpoint_name, now - wall_s, now)
    print(report(requests, wall_s, hours, args.price_per_hour))
    return 1 if any(r.status == "failed" for r in requests) else 0

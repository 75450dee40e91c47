"""`kit slides run --endpoint NAME`: where the cohort's slides come from, the run, the report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kit import KitError
from kit.cli import session
from kit.cohorts.cohort import cohort_slides, unique_ids


def run_async(args: argparse.Namespace, attributes: str, suffix: str, wanted: dict[str, object]) -> int:
    """`wanted`: the recipe the options ask for (model_code/slides/provenance.py), which existing outputs must match."""
    from kit.cohorts.deployment import find_deployment
    from kit.cohorts.runner import Cohort, instance_hours, refuse_oversized, report, run_cohort
    from kit.slides.features import SlideJob, check_existing

    local = [s for s in args.slides if not s.startswith("s3://")]
    remote = [s for s in args.slides if s.startswith("s3://")]
    slides = cohort_slides(local, args.cohort) if local or args.cohort else []  # before AWS is asked anything
    aws = session(args)
    if remote or not slides:
        slides = unique_ids(slides + cohort_slides(remote, None, aws.client("s3")))
    refuse_oversized(slides, aws.client("s3"))
    deployment = find_deployment(aws, args.stack, args.endpoint)
    if deployment.serving != "async":
        raise KitError(f'{deployment.endpoint_name} is a real-time endpoint: deploy an entry with "async": true')
    cohort = Cohort(deployment, aws, args.out, suffix, attributes, args.retries, min(3600, int(args.timeout)))
    check_existing(
        [SlideJob(Path(s.source), s.slide_id, cohort.target(s.slide_id), bool(s.bulk_rna)) for s in slides], wanted
    )
    requests, wall_s = run_cohort(cohort, slides, args.poll, timeout_s=args.wait_hours * 3600)
    now = time.time()
    hours = instance_hours(aws, deployment.endpoint_name, now - wall_s, now)
    print(report(requests, wall_s, hours, args.price_per_hour))
    return 1 if any(r.status == "failed" for r in requests) else 0

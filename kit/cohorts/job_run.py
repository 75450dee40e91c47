"""`kit cohort run s3://BUCKET/SLIDES/ --model h1 --artifact kit://h1/v1/ --instances 20 --spot --out
s3://BUCKET/FEATURES/`: a training job over the cohort's slides still missing an output (kit/cohorts/job.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kit import KitError
from kit.cli import add_aws, add_stack, session

if TYPE_CHECKING:
    from kit.cohorts.cohort import CohortSlide
    from kit.cohorts.job import Cohort

HELP = "start a training job that turns the cohort's slides in S3 (any size) into features files; reruns resume"
INPUT_MODES = ("FastFile", "File")
SHOWN = 20  # slides listed before "... and N more"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from stacks.config import KitConfig

    defaults = KitConfig.model_fields
    parser.add_argument("slides", nargs="*", help="s3:// prefixes of slides (multi-file slides: .mrxs + folder, DICOM)")
    parser.add_argument(
        "--cohort",
        type=Path,
        help="a cohort CSV of s3:// slides: slide, slide_id, slide_mpp, bulk_rna (docs/cohorts.md)",
    )
    parser.add_argument("--model", required=True, help="the model to run: h1, h0, h0-mini or m-optimus")
    parser.add_argument("--artifact", required=True, help="the kit artifact holding it, kit://KEY/ (as `kit upload`)")
    parser.add_argument("--out", required=True, help="s3:// prefix for the outputs, under the stack's CohortJobOutput")
    parser.add_argument("--instances", type=int, default=1, help="GPU instances, %(default)s")
    parser.add_argument(
        "--instance-type", default=defaults["instanceType"].default, help="the job's GPU instances, %(default)s"
    )
    parser.add_argument("--spot", action="store_true", help="managed spot: cheaper, may be interrupted (it resumes)")
    parser.add_argument(
        "--input-mode", choices=INPUT_MODES, default="FastFile",
        help="how the slides reach the instances: FastFile streams them (default), File downloads all first",
    )  # fmt: skip
    parser.add_argument("--format", choices=("h5", "zarr"), default="h5", help="output format, %(default)s")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="features, %(default)s")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="another slide option: mode, mpp, tile_size, min_tissue, slide_mpp (docs/slides.md)",
    )  # fmt: skip
    parser.add_argument("--retries", type=int, default=2, help="retries of the job after an internal error, 1-30")
    parser.add_argument("--job-name", help="default: cohort-MODEL-YYYYmmdd-HHMMSS")
    add_stack(parser)
    parser.add_argument("--dry-run", action="store_true", help="list, plan and show the request; start nothing")
    plan = parser.add_argument_group("plan")
    plan.add_argument(
        "--tiles-per-second", type=float, default=defaults["tilesPerSecondPerInstance"].default,
        help="measured throughput of one instance, %(default)s",
    )  # fmt: skip
    plan.add_argument("--tiles-per-gb", type=float, default=8000, help="tiles a GB of slide gives, %(default)s")
    plan.add_argument("--startup-minutes", type=float, default=10, help="an instance's start, %(default)s")
    plan.add_argument("--price-per-hour", type=float, help="on-demand USD per instance-hour of the instance type")
    plan.add_argument("--spot-discount", type=float, default=0.7, help="spot's saving, a fraction, %(default)s")
    add_aws(parser)


def hyperparameters(args: argparse.Namespace) -> dict[str, str]:
    """The slide options as the worker reads them (strings), checked as the endpoint checks them."""
    from model_code.catalogue import canonical_name
    from model_code.errors import ClientError
    from model_code.slides.options import slide_options

    model = canonical_name(args.model)
    if model is None or model == "tissue-seg":
        raise KitError(f"--model {args.model}: give h1, h0, h0-mini or m-optimus")
    pairs = [("model", model), ("format", args.format), ("dtype", args.dtype)]
    for option in args.option:
        key, sep, value = option.partition("=")
        if not sep or ";" in option or "," in option:
            raise KitError(f"--option {option!r}: give KEY=VALUE")
        pairs.append((key.strip(), value.strip()))
    try:
        options = dict(pairs)
        if "slide_name" in options:
            raise ClientError("is per slide: a cohort CSV's slide_id names each output", field="slide_name")
        slide_options({"x-amzn-sagemaker-custom-attributes": ";".join(f"{k}={v}" for k, v in pairs)}, [])
    except ClientError as exc:
        raise KitError(f"--option: {exc}") from None
    return options


def run(args: argparse.Namespace) -> int:
    from kit.cohorts import job
    from kit.cohorts.cohort import cohort_slides, with_sizes
    from kit.cohorts.plan import Inputs, rows_table
    from kit.s3 import folder, parse

    params = hyperparameters(args)
    out = folder(args.out)
    parse(out, "--out", shape="s3://BUCKET/PREFIX/")
    if not args.artifact.startswith("kit://") or not args.artifact.endswith("/"):
        raise KitError(f"--artifact {args.artifact}: give kit://KEY/, an artifact `kit upload` put in the kit's bucket")
    if not 1 <= args.retries <= 30:
        raise KitError(f"--retries {args.retries}: 1 to 30 (RetryStrategy.MaximumRetryAttempts)")
    if args.instances < 1:
        raise KitError(f"--instances {args.instances}: at least 1")
    prefixes = [folder(s) for s in args.slides]
    if not prefixes and not args.cohort:
        raise KitError("give s3:// prefixes of slides or --cohort CSV (`python -m kit cohort run --help`)")
    for source in prefixes:
        if not source.startswith("s3://"):
            raise KitError(f"{source}: a training job reads slides from S3; upload them first (aws s3 sync)")
        parse(source, shape="s3://BUCKET/PREFIX/")
    aws = session(args)
    s3 = aws.client("s3")
    stack = job.find_job_stack(aws, args.stack)
    if not out.startswith(stack.output):
        raise KitError(f"--out {out}: the cohort-job role writes only under {stack.output}")
    slides = with_sizes(s3, cohort_slides(prefixes, args.cohort, s3, unique=False))
    outside = [s.source for s in slides if s.in_s3 and not s.source.startswith(stack.inputs)]
    if outside:
        raise KitError(
            f"{outside[0]}: the cohort-job role reads only {', '.join(stack.inputs)}; add its prefix to the context "
            "key cohortJobs.inputs and deploy"
        )
    cohort = job.s3_cohort(slides, prefixes)
    held = job.present(s3, out)
    todo = job.missing(cohort, out, args.format, held)
    if not todo:
        print(f"all {len(slides):,} slides have their outputs under {out}: nothing to run")
        return 0
    busy = job.running_jobs(aws, out)
    if busy:
        raise KitError(f"job {busy[0]} still runs over {out}: follow it (kit cohort status {busy[0]}) or stop it first")
    artifact_uri = f"s3://{stack.artifact_bucket}/{args.artifact.removeprefix('kit://')}"
    artifact_bytes = _artifact(s3, artifact_uri, params["model"])
    print(_listing(cohort, todo, len(slides)))
    inputs = Inputs(
        len(todo), 0, args.tiles_per_second, args.instances, 0, 1.0, args.startup_minutes, 0, args.price_per_hour,
        spot_discount=args.spot_discount,
    )  # fmt: skip
    rows = job.plan_rows(todo, inputs, args.tiles_per_gb)
    print("\n".join(rows_table(rows)))
    print(f"  (tiles estimated at {args.tiles_per_gb:g} a GB of slide, {args.tiles_per_second:g} tiles/s an instance)")
    settings = job.JobSettings(
        instance_type=args.instance_type,
        instances=rows[0].instances,
        spot=args.spot,
        input_mode=args.input_mode,
        retries=args.retries,
        max_runtime_s=job.max_runtime(rows[0].wall_hours),
        volume_gb=job.volume_gb(todo, artifact_bytes, sum(held.values()), args.input_mode),
    )
    name = args.job_name or job.job_name(params["model"])
    uris = (f"{out}{job.KIT_DIR}{name}/slides.manifest", f"{out}{job.KIT_DIR}{name}/cohort/")
    request = job.job_request(name, stack, artifact_uri, uris, out, params, settings)
    if args.dry_run:
        print(json.dumps(request, indent=1))
        print("dry run: nothing started")
        return 0
    job.write_inputs(s3, cohort, todo, out, name)
    aws.client("sagemaker").create_training_job(**request)
    print(
        f"started training job {name}: {len(todo):,} slides on {settings.instances} x {settings.instance_type}"
        f"{' (spot)' if settings.spot else ''}, at most {settings.max_runtime_s / 3600:,.1f} h\n"
        f"follow it: python -m kit cohort status {name} --follow"
    )
    return 0


def _artifact(s3: Any, uri: str, model: str) -> int:
    """The artifact's bytes, after checking it is a kit artifact that holds the model."""
    from kit.cohorts import job
    from kit.s3 import parse

    objects = job.present(s3, uri)
    bucket, prefix = parse(uri)
    if f"{prefix}manifest.json" not in objects:
        raise KitError(f"{uri}: no manifest.json there; upload the artifact with `python -m kit upload`")
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}manifest.json")["Body"].read())
    held = [m["name"] for m in manifest.get("models", [])]
    if model not in held:
        raise KitError(f"{uri} does not hold {model} (it holds {', '.join(held)})")
    return sum(objects.values())


def _listing(cohort: Cohort, todo: list[CohortSlide], total: int) -> str:
    lines = [f"{len(todo):,} of {total:,} slides without an output yet:"]
    for slide in todo[:SHOWN]:
        lines.append(f"  {cohort.relative(slide):60} {_size(slide.size or 0):>10}")
    if len(todo) > SHOWN:
        lines.append(f"  ... and {len(todo) - SHOWN:,} more")
    sizes = [s.size or 0 for s in todo]
    lines.append(f"  {_size(sum(sizes))} in all, the largest {_size(max(sizes))}")
    return "\n".join(lines)


def _size(size: int) -> str:
    return f"{size / 1e9:,.2f} GB" if size >= 100e6 else f"{size / 1e6:.1f} MB"

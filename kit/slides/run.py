"""`python -m kit slides run SLIDE_OR_DIR... --endpoint-url URL --model h1 --out DIR`: each slide to a slide
endpoint, each answer to DIR/<slide's path in the directory given, suffix replaced>.h5 (or .zarr/), or
with --trident-tree to TRIDENT's job tree (DIR/20x_224px_0px_overlap/features_hoptimus1/<slide>.h5).
Before anything runs: two slides with one output are refused; an existing output is reused (skipped) when
it was made the same way (model_code/slides/provenance.py), and refused, naming what differs, when not
(--overwrite redoes it).

How a slide reaches the models is a `Transport`: `HttpTransport` POSTs it to a server's /invocations
(a local server, or the container itself), one slide at a time. `--endpoint NAME` sends the cohort to a
SageMaker async endpoint instead (kit/cohorts/runner.py): all slides queued at once, followed through S3,
resumable; slides from local paths, an S3 prefix or a cohort CSV.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kit import KitError
from kit.cli import add_aws, add_stack, endpoint_url
from kit.cohorts.cohort import named_slides
from kit.slides.features import SlideJob, check_existing, output_tiles
from kit.slides.transport import HttpTransport, SlideFailed
from model_code.catalogue import EMBEDDING, MODELS, canonical_name
from model_code.slides.layouts import LAYOUTS, LOCAL_SUFFIXES

HELP = "send whole slides to an endpoint's slide path and write each one's features file"
SLIDE_MODELS = tuple(name for name, spec in MODELS.items() if EMBEDDING in spec.modes)  # tissue-seg finds tissue
OWN_FLAGS = ("model", "format", "dtype", "layout")  # slide options with an option of their own


class Transport(Protocol):
    """Sends one slide with its options (`key=value;...`) and writes the answer to `out`."""

    def send(self, slide: Path, attributes: str, out: Path) -> None: ...


@dataclass
class Outcome:
    slide: Path
    status: str  # "done", "skipped" or "failed"
    tiles: int = 0
    seconds: float = 0.0
    reason: str = ""
    name: str = ""  # the slide's path in the directory given

    def __post_init__(self) -> None:
        self.name = self.name or self.slide.name

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else 0.0


def plan_outputs(slides: list[tuple[Path, str]], out_dir: Path, fmt: str, job: str | None = None) -> list[SlideJob]:
    """Each slide's output under `out_dir` (model_code.slides.layouts.output_name); two slides with one
    output are refused."""
    from model_code.slides.layouts import output_name

    jobs = [SlideJob(slide, name, out_dir / output_name(name, fmt, job, LOCAL_SUFFIXES)) for slide, name in slides]
    by_target: dict[Path, list[SlideJob]] = {}
    for one in jobs:
        by_target.setdefault(one.target, []).append(one)
    clashes = [
        f"{target} ({', '.join(str(j.slide) for j in same)})" for target, same in by_target.items() if len(same) > 1
    ]
    if clashes:
        raise KitError(
            f"slides with one output name would overwrite each other: {'; '.join(clashes)}; "
            "give their directory instead of the files, or run them to different --out"
        )
    return jobs


def run_slides(slides: list[SlideJob], transport: Transport, attributes: str, overwrite: bool = False) -> list[Outcome]:
    """Every slide through `transport` with a progress bar and a line per slide; failures do not stop the rest.
    An existing output is skipped (check_existing has checked it) unless `overwrite`."""
    from kit.progress import progress

    outcomes: list[Outcome] = []
    with progress(slides, unit="slide") as bar:
        for one in bar:
            bar.set_postfix_str(one.name)
            outcome = _one(one, transport, attributes, overwrite)
            outcomes.append(outcome)
            if outcome.status == "done":
                bar.write(f"{one.name}: {outcome.tiles} tiles in {outcome.seconds:.1f} s ({outcome.tiles_per_s:.1f}/s)")
            else:
                bar.write(f"{one.name}: {outcome.status} {outcome.reason}")
    return outcomes


def _one(one: SlideJob, transport: Transport, attributes: str, overwrite: bool) -> Outcome:
    from model_code.slides.layouts import install

    slide, target = one.slide, one.target
    if target.exists() and not overwrite:
        return Outcome(slide, "skipped", reason=f"({target} exists, made the same way)", name=one.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    if slide.stem.isascii() and slide.stem.isprintable() and not set(slide.stem) & set(";,= "):
        attributes += f";slide_name={slide.stem}"  # recorded in the file's attributes
    began = time.perf_counter()
    try:
        transport.send(slide, attributes, partial)
        tiles = output_tiles(partial)
        note = skipped_note(partial)
    except SlideFailed as exc:
        partial.unlink(missing_ok=True)
        return Outcome(slide, "failed", reason=str(exc), name=one.name)
    install(partial, target)
    return Outcome(slide, "done", tiles, time.perf_counter() - began, note, name=one.name)


def skipped_note(path: Path) -> str:
    """'' or the tiles a features file left out (their pixels cannot be decoded), and why the first was."""
    from model_code.slides.layouts import read_attributes

    attributes = read_attributes(path)
    skipped = int(attributes.get("skipped_tiles", 0))
    return f"{skipped} tiles skipped: {attributes.get('skipped_reason', '')}" if skipped else ""


def table(outcomes: list[Outcome]) -> str:
    """A line per slide (whole names), then the counts and the rate."""
    done = [o for o in outcomes if o.status == "done"]
    tiles, seconds = sum(o.tiles for o in done), sum(o.seconds for o in done)
    width = max([len("slide"), *(len(o.name) for o in outcomes)])
    lines = [f"{'slide':{width}} {'status':8} {'tiles':>7} {'seconds':>8} {'tiles/s':>8}  reason"]
    for o in outcomes:
        lines.append(f"{o.name:{width}} {o.status:8} {o.tiles:7d} {o.seconds:8.1f} {o.tiles_per_s:8.1f}  {o.reason}")
    counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "skipped", "failed")}
    rate = tiles / seconds if seconds else 0.0
    lines.append(
        f"{len(outcomes)} slides: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
        f"{tiles} tiles at {rate:.1f} tiles/s"
    )
    return "\n".join(lines)


def parse_slide_model(text: str) -> str:
    """An encoder's catalogue name (aliases resolved); anything else is a usage error naming the choices."""
    name = canonical_name(text.strip())
    if name not in SLIDE_MODELS:
        raise argparse.ArgumentTypeError(f"'{text}' is not a slide model ({', '.join(SLIDE_MODELS)})")
    return name


def other_options() -> list[str]:
    """The slide options --option passes: the server's, less those with a flag here."""
    from model_code.slides.options import SlideOptions

    return [name for name in SlideOptions.model_fields if name not in OWN_FLAGS]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "slides", nargs="*", help="slide files or directories (with --endpoint also s3:// prefixes under AsyncInput)"
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint-url", type=endpoint_url, help="a server, e.g. http://127.0.0.1:8080")
    where.add_argument("--endpoint", help="a SageMaker async endpoint of the stack: optimus-h1-slides, or h1-slides")
    parser.add_argument(
        "--model",
        type=parse_slide_model,
        required=True,
        help=f"{', '.join(SLIDE_MODELS)}: named here (the server could pick it) because the outputs record it",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for <slide stem>.h5 / .zarr")
    parser.add_argument(
        "--format", choices=tuple(LOCAL_SUFFIXES), default="h5", help="h5 (default) or zarr (the vendor SDK's)"
    )
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="of the features")
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="trident",
        help="of an h5 file: trident (TRIDENT and CLAM read it, the default) or stamp (STAMP reads it)",
    )  # fmt: skip
    parser.add_argument(
        "--trident-tree", action="store_true",
        help="lay the outputs as TRIDENT lays a job: OUT/20x_224px_0px_overlap/features_hoptimus1/<slide>.h5",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="redo slides whose output exists (default: reuse it if made the same way)",
    )
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help=f"another slide option, repeatable: {', '.join(other_options())} (docs/slides.md)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per slide (--endpoint: in all)")
    cohort = parser.add_argument_group("SageMaker async (--endpoint)")
    cohort.add_argument(
        "--cohort",
        type=Path,
        help="a CSV, one slide a row: `slide` (a path relative to the CSV, or s3://BUCKET/KEY), optional "
        "`slide_id` (default the file's stem), `bulk_rna` (a JSON file of raw counts) and `tiles`",
    )
    add_stack(cohort)
    cohort.add_argument("--retries", type=int, default=2, help="resubmissions of a failed slide, %(default)s")
    cohort.add_argument("--poll", type=float, default=30, help="seconds between checks, %(default)s")
    cohort.add_argument("--wait-hours", type=float, default=48, help="follow this long, then stop (rerun resumes)")
    cohort.add_argument("--price-per-hour", type=float, help="on-demand USD per instance-hour, for the cost")
    add_aws(parser)


def run(args: argparse.Namespace) -> int:
    for option in args.option:
        if "=" not in option or ";" in option:
            raise KitError(f"--option {option!r}: give KEY=VALUE")
    given = [f"model={args.model}", f"format={args.format}", f"dtype={args.dtype}"]
    given += [f"layout={args.layout}"] if args.layout != "trident" else []  # the server's default
    attributes = ";".join([*given, *args.option])
    wanted = wanted_recipe(attributes)
    if args.trident_tree and (args.format, args.layout) != ("h5", "trident"):
        raise KitError("--trident-tree lays out TRIDENT's h5 files: give --format h5 --layout trident")
    if args.endpoint:
        from kit.cohorts.command import run_async

        if args.overwrite or args.trident_tree:
            raise KitError(
                "--overwrite and --trident-tree are for --endpoint-url; with --endpoint, move old outputs away"
            )
        return run_async(args, attributes, LOCAL_SUFFIXES[args.format], wanted)
    if args.cohort or not args.slides:
        raise KitError("--endpoint-url takes slide files or directories (a cohort CSV needs --endpoint)")
    if args.out.exists() and not args.out.is_dir():
        raise KitError(f"--out {args.out}: is a file; give a directory")
    job = None
    if args.trident_tree:
        from model_code.slides.layouts import job_dir

        job = job_dir(wanted["mpp"], wanted["tile_size"], wanted["model"])
    jobs = plan_outputs(named_slides([Path(s) for s in args.slides]), args.out, args.format, job)
    if not args.overwrite:
        check_existing(jobs, wanted)
    outcomes = run_slides(jobs, HttpTransport(args.endpoint_url, args.timeout), attributes, args.overwrite)
    print(table(outcomes))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def wanted_recipe(attributes: str) -> dict[str, Any]:
    """The recipe (model_code.slides.provenance) these options ask for; a bad option refused here, by name."""
    from model_code.errors import ClientError
    from model_code.slides.options import ATTRIBUTES_HEADER, slide_options
    from model_code.slides.provenance import recipe

    try:
        return recipe(slide_options({ATTRIBUTES_HEADER: attributes}, []))
    except ClientError as exc:
        raise KitError(f"slide option {exc.field}: {exc.reason}") from None

"""`python -m kit slides run SLIDE_OR_DIR... --endpoint-url URL --model h1 --out DIR`: each slide to a slide
endpoint, each answer to DIR/<slide stem>.h5 (or .zarr.zip); slides whose output exists are skipped.

How a slide reaches the models is a `Transport`: `HttpTransport` POSTs it to a server's /invocations
(a local server, or the container itself), one slide at a time. `--endpoint NAME` sends the cohort to a
SageMaker async endpoint instead (kit/cohorts/runner.py): all slides queued at once, followed through S3,
resumable; slides from local paths, an S3 prefix or a cohort CSV.
"""

from __future__ import annotations

import argparse
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kit import KitError
from kit.cli import add_aws
from kit.cohorts.cohort import find_slides
from kit.slides.features import SlideFailed, output_tiles

HELP = "send whole slides to an endpoint's slide path and write each one's features file"
SUFFIXES = {"h5": ".h5", "zarr": ".zarr.zip"}


class Transport(Protocol):
    """Sends one slide with its options (`key=value;...`) and writes the answer to `out`."""

    def send(self, slide: Path, attributes: str, out: Path) -> None: ...


class HttpTransport:
    """POST the slide file (streamed from disk) to URL/invocations; stream the answer to a file."""

    def __init__(self, endpoint_url: str, timeout_s: float):
        self.url = endpoint_url.rstrip("/") + "/invocations"
        self.timeout_s = timeout_s

    def send(self, slide: Path, attributes: str, out: Path) -> None:
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(slide.stat().st_size),
            "X-Amzn-SageMaker-Custom-Attributes": attributes,
        }
        with slide.open("rb") as body:
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as answer, out.open("wb") as file:
                    while chunk := answer.read(1 << 20):
                        file.write(chunk)
            except urllib.error.HTTPError as exc:
                raise SlideFailed(f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from None
            except (urllib.error.URLError, OSError) as exc:
                raise SlideFailed(f"{type(exc).__name__}: {exc}") from None


@dataclass
class Outcome:
    slide: Path
    status: str  # "done", "skipped" or "failed"
    tiles: int = 0
    seconds: float = 0.0
    reason: str = ""

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else 0.0


def run_slides(slides: list[Path], transport: Transport, attributes: str, out_dir: Path, fmt: str) -> list[Outcome]:
    """Every slide through `transport` with a progress bar and a line per slide; failures do not stop the rest."""
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    with tqdm(slides, unit="slide", dynamic_ncols=True) as bar:
        for slide in bar:
            bar.set_postfix_str(slide.name)
            outcome = _one(slide, transport, attributes, out_dir / f"{slide.stem}{SUFFIXES[fmt]}")
            outcomes.append(outcome)
            if outcome.status == "done":
                bar.write(
                    f"{slide.name}: {outcome.tiles} tiles in {outcome.seconds:.1f} s ({outcome.tiles_per_s:.1f}/s)"
                )
            else:
                bar.write(f"{slide.name}: {outcome.status} {outcome.reason}")
    return outcomes


def _one(slide: Path, transport: Transport, attributes: str, target: Path) -> Outcome:
    if target.exists():
        return Outcome(slide, "skipped", reason=f"({target} exists)")
    partial = target.with_name(target.name + ".part")
    if slide.stem.isascii() and slide.stem.isprintable() and not set(slide.stem) & set(";,= "):
        attributes += f";slide_name={slide.stem}"  # recorded in the file's attributes
    began = time.perf_counter()
    try:
        transport.send(slide, attributes, partial)
        tiles = output_tiles(partial)
    except SlideFailed as exc:
        partial.unlink(missing_ok=True)
        return Outcome(slide, "failed", reason=str(exc))
    partial.rename(target)
    return Outcome(slide, "done", tiles, time.perf_counter() - began)


def table(outcomes: list[Outcome]) -> str:
    done = [o for o in outcomes if o.status == "done"]
    tiles, seconds = sum(o.tiles for o in done), sum(o.seconds for o in done)
    lines = [f"{'slide':32} {'status':8} {'tiles':>7} {'seconds':>8} {'tiles/s':>8}  reason"]
    for o in outcomes:
        lines.append(
            f"{o.slide.name[:32]:32} {o.status:8} {o.tiles:7d} {o.seconds:8.1f} {o.tiles_per_s:8.1f}  {o.reason}"
        )
    failed = sum(o.status == "failed" for o in outcomes)
    rate = tiles / seconds if seconds else 0.0
    lines.append(f"{len(outcomes)} slides: {len(done)} done, {failed} failed; {tiles} tiles at {rate:.1f} tiles/s")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "slides", nargs="*", help="slide files or directories (with --endpoint also s3:// prefixes under AsyncInput)"
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint-url", help="a server, e.g. http://127.0.0.1:8080")
    where.add_argument("--endpoint", help="a SageMaker async endpoint of the stack: optimus-h1-slides, or h1-slides")
    parser.add_argument("--model", required=True, help="h1, h0, h0-mini or m-optimus")
    parser.add_argument("--out", type=Path, required=True, help="directory for <slide stem>.h5 / .zarr.zip")
    parser.add_argument("--format", choices=tuple(SUFFIXES), default="h5")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="another slide option: mode, mpp, tile_size, min_tissue, slide_mpp (docs/slides.md)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per slide (--endpoint: in all)")
    cohort = parser.add_argument_group("SageMaker async (--endpoint)")
    cohort.add_argument("--cohort", type=Path, help="a cohort CSV: slide, slide_id, bulk_rna (kit/cohorts/cohort.py)")
    cohort.add_argument("--stack", default="OptimusEndpoints", help="the endpoints stack (default %(default)s)")
    cohort.add_argument("--retries", type=int, default=2, help="resubmissions of a failed slide, %(default)s")
    cohort.add_argument("--poll", type=float, default=30, help="seconds between checks, %(default)s")
    cohort.add_argument("--wait-hours", type=float, default=48, help="follow this long, then stop (rerun resumes)")
    cohort.add_argument("--price-per-hour", type=float, help="on-demand USD per instance-hour, for the cost")
    add_aws(parser)


def run(args: argparse.Namespace) -> int:
    for option in args.option:
        if "=" not in option or ";" in option:
            raise KitError(f"--option {option!r}: give KEY=VALUE")
    attributes = ";".join([f"model={args.model}", f"format={args.format}", f"dtype={args.dtype}", *args.option])
    if args.endpoint:
        from kit.cohorts.command import run_async

        return run_async(args, attributes, SUFFIXES[args.format])
    if args.cohort or not args.slides:
        raise KitError("--endpoint-url takes slide files or directories (a cohort CSV needs --endpoint)")
    slides = find_slides([Path(s) for s in args.slides])
    outcomes = run_slides(slides, HttpTransport(args.endpoint_url, args.timeout), attributes, args.out, args.format)
    print(table(outcomes))
    return 1 if any(o.status == "failed" for o in outcomes) else 0

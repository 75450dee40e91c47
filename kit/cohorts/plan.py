"""`kit plan`: before spending money, what a cohort costs on each path — real-time tiles, async slides, batch
transform, a training job (on demand and on spot) — in instance-hours, wall time and dollars, from the measured
tiles per second per instance.

The model (docs/cohorts.md, "kit plan"): every path does the same GPU work, tiles / tilesPerSecondPerInstance
instance-seconds. Real-time runs at the scaling target's utilisation and keeps minInstances up around the
clock; async runs its instances (at most one per slide) flat out and pays each one's start and its idle
scale-in cooldown; batch transform pays each instance's start, spreads files (one per slide) over up to 100
instances, then stops. A training job pays each instance's start and, per slide, its tissue-seg and its copy
to local disk (overlapped with the previous slide's forward passes, so only a copy slower than them costs
time); its slides are split by bytes, so it waits for the largest slide at least; spot takes a discount.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

from kit import KitError
from kit.cli import add_json, write_output

HELP = "instance-hours, wall time and cost of a cohort: real-time, async, batch transform, training job (spot)"
HOURS_PER_MONTH = 730
BATCH_MAX_INSTANCES = 100
PLCO_GB_PER_SLIDE = 1.7  # DESIGN.md: the PLCO catalogue's 40x Aperio slides average about 1.7 GB


@dataclass(frozen=True)
class Estimate:
    path: str
    instances: int
    wall_hours: float
    instance_hours: float
    cost: float | None  # None without a price
    standing_cost_per_month: float | None  # what the endpoint costs while no cohort runs


@dataclass(frozen=True)
class Inputs:
    slides: int
    tiles: int
    tiles_per_second: float
    instances: int
    min_instances: int
    utilisation: float
    startup_minutes: float
    scale_in_minutes: float
    price_per_hour: float | None
    gb_per_slide: float = PLCO_GB_PER_SLIDE
    copy_mb_per_s: float = 200.0  # a slide read sequentially from a FastFile channel to local disk
    tissue_seconds: float = 5.0  # tissue-seg of one slide (its 8 um/px level)
    spot_discount: float = 0.7  # AWS: "up to 90%"; it varies by instance type, region and hour

    def slide_seconds(self, tiles: float, size_bytes: float) -> float:
        """A training job's time on one slide: forward passes and tissue-seg, or its copy if that is slower."""
        return max(tiles / self.tiles_per_second + self.tissue_seconds, size_bytes / 1e6 / self.copy_mb_per_s)


def plan(inputs: Inputs) -> list[Estimate]:
    work = inputs.tiles / inputs.tiles_per_second / 3600  # instance-hours of forward passes
    startup, cooldown, price = inputs.startup_minutes / 60, inputs.scale_in_minutes / 60, inputs.price_per_hour

    def row(name: str, instances: int, wall: float, hours: float, standing: float) -> Estimate:
        return Estimate(name, instances, wall, hours, _money(hours, price), _money(standing, price))

    realtime_wall = startup + work / inputs.utilisation / inputs.instances
    async_instances = min(inputs.instances, inputs.slides)  # one slide is one request on one instance
    async_wall = startup + work / async_instances
    batch_instances = min(inputs.instances, inputs.slides, BATCH_MAX_INSTANCES)
    batch_wall = startup + work / batch_instances
    per_slide = inputs.slide_seconds(inputs.tiles / inputs.slides, inputs.gb_per_slide * 1e9)
    return [
        row("real-time", inputs.instances, realtime_wall, inputs.instances * realtime_wall,
            inputs.min_instances * HOURS_PER_MONTH),
        row("async", async_instances, async_wall, work + async_instances * (startup + cooldown), 0),
        row("batch transform", batch_instances, batch_wall, batch_instances * batch_wall, 0),
        *job_estimates([per_slide] * inputs.slides, inputs),
    ]  # fmt: skip


def job_estimates(slide_seconds: list[float], inputs: Inputs) -> list[Estimate]:
    """A training job over slides taking these seconds each: on demand, and on spot at the discount."""
    instances = min(inputs.instances, len(slide_seconds))
    wall = inputs.startup_minutes / 60 + max(sum(slide_seconds) / instances, max(slide_seconds)) / 3600
    hours, price = instances * wall, inputs.price_per_hour
    spot = None if price is None else price * (1 - inputs.spot_discount)
    return [
        Estimate("training job", instances, wall, hours, _money(hours, price), _money(0, price)),
        Estimate("training job, spot", instances, wall, hours, _money(hours, spot), _money(0, spot)),
    ]


def _money(hours: float, price: float | None) -> float | None:
    return None if price is None else hours * price


def table(inputs: Inputs, rows: list[Estimate]) -> str:
    lines = [
        f"{inputs.slides:,} slides, {inputs.tiles:,} tiles at {inputs.tiles_per_second:g} tiles/s per instance "
        f"({inputs.tiles / inputs.tiles_per_second / 3600:,.1f} instance-hours of GPU work)",
        *rows_table(rows),
        assumptions(inputs),
    ]
    if inputs.price_per_hour is None:
        lines.append("cost: give --price-per-hour (the instance type's on-demand price in your region)")
    return "\n".join(lines)


def rows_table(rows: list[Estimate]) -> list[str]:
    lines = [f"{'path':18} {'instances':>9} {'wall time':>10} {'instance-h':>10} {'cost':>12} {'idle/month':>10}"]
    for r in rows:
        money = [f"${v:,.2f}" if v is not None else "-" for v in (r.cost, r.standing_cost_per_month)]
        lines.append(
            f"{r.path:18} {r.instances:9,d} {_duration(r.wall_hours):>10} {r.instance_hours:10,.1f} "
            f"{money[0]:>12} {money[1]:>10}"
        )
    return lines


def assumptions(inputs: Inputs) -> str:
    return textwrap.fill(
        f"assumptions: every instance takes {inputs.startup_minutes:g} min to start; real-time runs at "
        f"{inputs.utilisation:g} utilisation and keeps {inputs.min_instances} instance(s) up {HOURS_PER_MONTH} h a "
        f"month; async instances idle {inputs.scale_in_minutes:g} min before scaling in; a training job copies each "
        f"slide ({inputs.gb_per_slide:g} GB) at {inputs.copy_mb_per_s:g} MB/s while the previous one runs, spends "
        f"{inputs.tissue_seconds:g} s a slide on tissue-seg, and spot saves {inputs.spot_discount:.0%} (AWS says up "
        "to 90%; it varies, and an interruption adds a restart)",
        width=118,
        subsequent_indent="  ",
    )


def _duration(hours: float) -> str:
    minutes = round(hours * 60)
    return f"{minutes // 60:,}h{minutes % 60:02d}m"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from stacks.config import KitConfig

    defaults = KitConfig.model_fields
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--slides", type=int, help="number of slides")
    what.add_argument("--cohort", type=Path, help="a cohort CSV (kit/cohorts/cohort.py); its `tiles` column if any")
    parser.add_argument("--tiles-per-slide", type=int, help="tiles per slide (required unless the CSV has `tiles`)")
    parser.add_argument(
        "--tiles-per-second",
        type=float,
        default=defaults["tilesPerSecondPerInstance"].default,
        help="measured throughput of one instance (default: the kit's tilesPerSecondPerInstance, %(default)s)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=defaults["maxInstances"].default,
        help="instances working on the cohort (default: the kit's maxInstances, %(default)s)",
    )
    parser.add_argument(
        "--min-instances",
        type=int,
        default=defaults["minInstances"].default,
        help="real-time's floor, kept up around the clock (default %(default)s)",
    )
    parser.add_argument(
        "--utilisation",
        type=float,
        default=defaults["targetUtilisation"].default,
        help="real-time's scaling target, a fraction of one instance's throughput (default %(default)s)",
    )
    parser.add_argument(
        "--startup-minutes", type=float, default=10, help="minutes an instance takes to start (default %(default)s)"
    )
    parser.add_argument(
        "--scale-in-minutes",
        type=float,
        default=defaults["scaleInCooldownS"].default / 60,
        help="async instances idle this long before scaling in, %(default)s",
    )
    parser.add_argument("--price-per-hour", type=float, help="on-demand USD per instance-hour of the instance type")
    job = parser.add_argument_group("training job")
    job.add_argument("--gb-per-slide", type=float, default=PLCO_GB_PER_SLIDE, help="average slide size, %(default)s")
    job.add_argument(
        "--copy-mb-per-s", type=float, default=Inputs.copy_mb_per_s, help="a slide's copy to local disk, %(default)s"
    )
    job.add_argument(
        "--tissue-seconds", type=float, default=Inputs.tissue_seconds, help="tissue-seg per slide, %(default)s"
    )
    job.add_argument(
        "--spot-discount", type=float, default=Inputs.spot_discount, help="spot's saving, a fraction, %(default)s"
    )
    add_json(parser, "the plan")


def run(args: argparse.Namespace) -> int:
    if args.cohort:
        from kit.cohorts.cohort import read_cohort

        cohort = read_cohort(args.cohort)
        slides = len(cohort)
        known = [s.tiles for s in cohort if s.tiles is not None]
        if len(known) != slides and args.tiles_per_slide is None:
            raise KitError(f"{args.cohort}: {slides - len(known)} slide(s) without `tiles`: give --tiles-per-slide")
        tiles = sum(s.tiles if s.tiles is not None else args.tiles_per_slide for s in cohort)
    else:
        if args.tiles_per_slide is None:
            raise KitError("--slides needs --tiles-per-slide")
        slides, tiles = args.slides, args.slides * args.tiles_per_slide
    for name in ("slides", "tiles_per_second", "instances", "utilisation", "gb_per_slide", "copy_mb_per_s"):
        value = {"slides": slides}.get(name, getattr(args, name))
        if value <= 0:
            raise KitError(f"--{name.replace('_', '-')} must be more than 0 (got {value})")
    for name in ("utilisation", "spot_discount"):
        if not 0 <= getattr(args, name) <= 1:
            raise KitError(f"--{name.replace('_', '-')} is a fraction of 1 (got {getattr(args, name)})")
    if not 0 <= args.min_instances <= args.instances:
        raise KitError(f"--min-instances {args.min_instances}: from 0 to --instances ({args.instances})")
    inputs = Inputs(
        slides, tiles, args.tiles_per_second, args.instances, args.min_instances, args.utilisation,
        args.startup_minutes, args.scale_in_minutes, args.price_per_hour, args.gb_per_slide, args.copy_mb_per_s,
        args.tissue_seconds, args.spot_discount,
    )  # fmt: skip
    rows = plan(inputs)
    print(table(inputs, rows))
    write_output(
        args.json, json.dumps({"inputs": asdict(inputs), "paths": [asdict(r) for r in rows]}, indent=2).encode()
    )
    return 0

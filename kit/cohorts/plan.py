"""`kit plan`: before spending money, what a cohort costs on each path — real-time tiles, async slides, batch
transform — in instance-hours, wall time and dollars, from the measured tiles per second per instance.

The model (docs/cohorts.md, "kit plan"): every path does the same GPU work, tiles / tilesPerSecondPerInstance
instance-seconds. Real-time runs at the scaling target's utilisation and keeps minInstances up around the
clock; async runs its instances flat out and pays each one's start and its idle scale-in cooldown; batch
transform pays each instance's start, spreads files (one per slide) over up to 100 instances, then stops.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from kit import KitError
from kit.cli import add_json, write_output

HELP = "instance-hours, wall time and cost of a cohort: real-time vs async vs batch transform"
HOURS_PER_MONTH = 730
BATCH_MAX_INSTANCES = 100


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


def plan(inputs: Inputs) -> list[Estimate]:
    work = inputs.tiles / inputs.tiles_per_second / 3600  # instance-hours of forward passes
    startup, cooldown, price = inputs.startup_minutes / 60, inputs.scale_in_minutes / 60, inputs.price_per_hour

    def row(name: str, instances: int, wall: float, hours: float, standing: float) -> Estimate:
        return Estimate(
            name,
            instances,
            wall,
            hours,
            None if price is None else hours * price,
            None if price is None else standing * price,
        )

    realtime_wall = startup + work / inputs.utilisation / inputs.instances
    async_wall = startup + work / inputs.instances
    batch_instances = min(inputs.instances, inputs.slides, BATCH_MAX_INSTANCES)
    batch_wall = startup + work / batch_instances
    return [
        row("real-time", inputs.instances, realtime_wall, inputs.instances * realtime_wall,
            inputs.min_instances * HOURS_PER_MONTH),
        row("async", inputs.instances, async_wall, work + inputs.instances * (startup + cooldown), 0),
        row("batch transform", batch_instances, batch_wall, batch_instances * batch_wall, 0),
    ]  # fmt: skip


def table(inputs: Inputs, rows: list[Estimate]) -> str:
    lines = [
        f"{inputs.slides} slides, {inputs.tiles} tiles at {inputs.tiles_per_second:g} tiles/s per instance "
        f"({inputs.tiles / inputs.tiles_per_second / 3600:.1f} instance-hours of GPU work)",
        f"{'path':16} {'instances':>9} {'wall time':>10} {'instance-h':>10} {'cost':>10} {'idle/month':>10}",
    ]
    for r in rows:
        money = [f"${v:,.2f}" if v is not None else "-" for v in (r.cost, r.standing_cost_per_month)]
        lines.append(
            f"{r.path:16} {r.instances:9d} {_duration(r.wall_hours):>10} {r.instance_hours:10.1f} "
            f"{money[0]:>10} {money[1]:>10}"
        )
    if inputs.price_per_hour is None:
        lines.append("cost: give --price-per-hour (the instance type's on-demand price in your region)")
    return "\n".join(lines)


def _duration(hours: float) -> str:
    minutes = round(hours * 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


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
    for name in ("slides", "tiles_per_second", "instances", "utilisation"):
        value = {"slides": slides}.get(name, getattr(args, name))
        if value <= 0:
            raise KitError(f"--{name.replace('_', '-')} must be more than 0 (got {value})")
    if args.utilisation > 1:
        raise KitError(f"--utilisation is a fraction of 1 (got {args.utilisation})")
    inputs = Inputs(
        slides, tiles, args.tiles_per_second, args.instances, args.min_instances, args.utilisation,
        args.startup_minutes, args.scale_in_minutes, args.price_per_hour,
    )  # fmt: skip
    rows = plan(inputs)
    print(table(inputs, rows))
    write_output(
        args.json, json.dumps({"inputs": asdict(inputs), "paths": [asdict(r) for r in rows]}, indent=2).encode()
    )
    return 0

"""Serving benchmark: the kit's server and LitServe side by side, same handler, demo h1 model (`make bench`).

(a) ceiling: JSON + base64 + PNG decode + normalisation of the same tile, in-process on all cores;
(b) both servers through HTTP at concurrency 1, 8, 32, 64, single-tile requests, the demo model's CPU forward;
(c) both with a simulated accelerator (bench/simulated_device.py, 20,1: each forward pass lasts 20 ms + 1 ms a
    tile, the demo model's real forward inside it, GIL released while it waits; LitServe's two workers share
    the one device) at concurrency 8, 32, 64, and the kit with MAX_BATCH_SIZE=1 at 32.
LitServe runs the kit's handler (bench/litserve_server.py). The servers take turns: a round starts one
server and loads it at every concurrency, then the other, --rounds times; figures are medians over rounds.
The closed-loop load generator (bench/http_load.py) shares the cores. --baseline DIR adds the kit's server
from another tree (a checkout of an earlier commit) to the rounds, to measure a change side by side.

The pipelining bound of (c): the tiles/s of back-to-back simulated forwards of the batches the closed loop
allows while the device never waits (the clients in two groups taking turns, one group's pass running while
the other's answers go back and its next tiles decode: min(concurrency / 2, MAX_BATCH_SIZE) tiles a pass), or
the decode ceiling (a), whichever is lower.
Prints a table and writes every figure, with the batch sizes reached, as JSON (--json).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench import write_figures
from bench.http_load import LoadResult, build_request, run_load
from kit.artifacts.builder import package
from kit.endpoints.samples import wire_record
from kit.local import LocalServer, free_port, local_server, metric
from model_code.catalogue import H_OPTIMUS_NORMALISATION
from model_code.records import Record, decode_record, split_body
from model_code.settings import DEFAULT_MAX_BATCH_SIZE

HOST = "127.0.0.1"
BODY = orjson.dumps(wire_record("h1", "embedding"))
MEAN = np.array(H_OPTIMUS_NORMALISATION["mean"], np.float32) * 255
STD = np.array(H_OPTIMUS_NORMALISATION["std"], np.float32) * 255
SIMULATED = (20.0, 1.0)
SIMULATED_MS = ",".join(f"{v:g}" for v in SIMULATED)
CPU_CONCURRENCY = (1, 8, 32, 64)
SIMULATED_CONCURRENCY = (8, 32, 64)


def _decode_and_normalise(count: int) -> int:
    for _ in range(count):
        raw, _ = split_body(BODY, "application/json", max_records=1)
        record = decode_record(raw[0], 0)
        assert isinstance(record, Record) and record.pixels is not None
        (record.pixels.astype(np.float32) - MEAN) / STD
    return count


def ceiling(tiles: int, workers: int) -> float:
    """(a) tiles/s of parsing, decoding and normalising in a process per core."""
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode_and_normalise, [5] * workers))  # warm up
        began = time.perf_counter()
        done = sum(pool.map(_decode_and_normalise, [tiles // workers] * workers))
        return done / (time.perf_counter() - began)


def forward_bound(concurrency: int, max_batch: int = DEFAULT_MAX_BATCH_SIZE) -> float:
    """Tiles/s of back-to-back simulated forwards, `concurrency` clients in two groups taking turns."""
    batch = min(math.ceil(concurrency / 2), max_batch)
    return batch / ((SIMULATED[0] + SIMULATED[1] * batch) / 1000)


@dataclass
class Contender:
    """One server under test: how to start it, and how to count the tiles of its forward passes."""

    name: str
    start: Callable[[Path, dict[str, str], bool], contextlib.AbstractContextManager[LocalServer]]  # bool: simulated
    batches: Callable[[LocalServer], tuple[float, int]]  # (tiles, forward passes) so far


def _kit(tree: Path | None) -> Callable[[Path, dict[str, str], bool], contextlib.AbstractContextManager[LocalServer]]:
    """`python -m model_code.serve` (simulated: `bench.simulated_device`), from this tree or (PYTHONPATH, cwd
    not on the path) from `tree`; a tree from before the simulated device left the server's settings gets it
    as SIMULATED_FORWARD_MS."""

    def start(model_dir: Path, env: dict[str, str], simulated: bool) -> contextlib.AbstractContextManager[LocalServer]:
        port = free_port()
        entry = ["model_code.serve"]
        where = {"PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"} if tree else {}
        if simulated and (tree is None or (tree / "bench" / "simulated_device.py").exists()):
            entry = ["bench.simulated_device", "--forward-ms", SIMULATED_MS]
        elif simulated:
            where["SIMULATED_FORWARD_MS"] = SIMULATED_MS
        command = [sys.executable, "-m", *entry, "--model-dir", str(model_dir), "--port", str(port)]
        return local_server(command, port, {**env, **where})

    return start


def _kit_batches(server: LocalServer) -> tuple[float, int]:
    """Read between runs, when no pass is running, so the sum and the count agree."""
    sizes = {part: metric(server.url, f"optimus_batch_size_{part}", model="h1") for part in ("sum", "count")}
    return sizes["sum"], int(sizes["count"])


@contextlib.contextmanager
def _litserve(batch_log: Path, model_dir: Path, env: dict[str, str], simulated: bool) -> Iterator[LocalServer]:
    port = free_port()
    command = [sys.executable, "-m", "bench.litserve_server", "--model-dir", str(model_dir), "--port", str(port)]
    command += ["--forward-ms", SIMULATED_MS] if simulated else []
    with local_server([*command, "--batch-log", str(batch_log)], port, env) as server:
        yield server


def _log_batches(batch_log: Path) -> tuple[float, int]:
    sizes = [int(line) for line in batch_log.read_text().split()] if batch_log.exists() else []
    return float(sum(sizes)), len(sizes)


def measure(contender: Contender, server: LocalServer, concurrency: int, duration_s: float) -> dict[str, Any]:
    request = build_request(HOST, server.port, "/invocations", BODY)
    tiles_before, passes_before = contender.batches(server)
    result: LoadResult = run_load(HOST, server.port, request, concurrency, duration_s=duration_s)
    tiles_after, passes_after = contender.batches(server)
    passes = passes_after - passes_before
    return {
        "tiles_per_s": round(result.per_second, 1),
        "p50_ms": round(result.percentile(50), 2),
        "p95_ms": round(result.percentile(95), 2),
        "errors": result.errors,
        "mean_batch": round((tiles_after - tiles_before) / passes, 1) if passes else None,
        "load_1min": round(os.getloadavg()[0], 2),
    }


def answer(server: LocalServer) -> list[float]:
    request = urllib.request.Request(f"{server.url}/invocations", BODY, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return list(orjson.loads(response.read())["output"])


def rounds(
    contenders: list[Contender],
    model_dir: Path,
    env: dict[str, str],
    simulated: bool,
    concurrencies: tuple[int, ...],
    count: int,
    duration_s: float,
    label: str,
) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """Every contender loaded at every concurrency, taking turns, `count` times; and each one's answer."""
    runs, answers = [], {}
    for number in range(1, count + 1):
        for contender in contenders:
            with contender.start(model_dir, env, simulated) as server:
                answers[contender.name] = answer(server)
                for concurrency in concurrencies:
                    row = measure(contender, server, concurrency, duration_s)
                    runs.append(
                        {"part": label, "server": contender.name, "round": number, "concurrency": concurrency, **row}
                    )
                    print(f"  {label} round {number} {contender.name:<13} c={concurrency:<3} {_cells(row)}", flush=True)
    return runs, answers


def _cells(row: dict[str, Any]) -> str:
    return (
        f"{row['tiles_per_s']:>7} tiles/s  p50 {row['p50_ms']:>7} ms  p95 {row['p95_ms']:>7} ms  "
        f"batch {row['mean_batch']}  errors {row['errors']}  load {row.get('load_1min', '')}"
    )


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over rounds, per part, concurrency and server."""
    keys = sorted({(r["part"], r["concurrency"], r["server"]) for r in runs}, key=lambda k: (k[0], k[1]))
    rows = []
    for part, concurrency, name in keys:
        mine = [r for r in runs if (r["part"], r["concurrency"], r["server"]) == (part, concurrency, name)]
        median = {
            key: round(statistics.median(r[key] for r in mine if r[key] is not None), 2)
            for key in ("tiles_per_s", "p50_ms", "p95_ms", "mean_batch")
            if any(r[key] is not None for r in mine)
        }
        rows.append({"part": part, "concurrency": concurrency, "server": name, "rounds": len(mine), **median})
        rows[-1]["tiles_per_s_range"] = [min(r["tiles_per_s"] for r in mine), max(r["tiles_per_s"] for r in mine)]
        rows[-1]["errors"] = sum(r["errors"] for r in mine)
    return rows


def compare(summary: list[dict[str, Any]], kit: str, against: str, ceiling_tps: float | None) -> list[dict[str, Any]]:
    """Per part and concurrency: `kit` over `against` (tiles/s, p95), and for (c) over the pipelining bound
    (the forward bound, or the decode ceiling `ceiling_tps` where it is measured and lower)."""
    by = {(r["part"], r["concurrency"], r["server"]): r for r in summary}
    out = []
    for (part, concurrency, name), row in by.items():
        other = by.get((part, concurrency, against))
        if name != kit or other is None:
            continue
        entry: dict[str, Any] = {
            "part": part,
            "concurrency": concurrency,
            "server": kit,
            "against": against,
            "tiles_per_s_ratio": round(row["tiles_per_s"] / other["tiles_per_s"], 2),
            "p95_ratio": round(row["p95_ms"] / other["p95_ms"], 2),
        }
        if part == "(c)":
            forward = forward_bound(concurrency)
            bound, limit = (
                (forward, "forward") if ceiling_tps is None or forward <= ceiling_tps else (ceiling_tps, "decode")
            )
            entry.update(
                bound_tiles_per_s=round(bound, 1), bound_is=limit, over_bound=round(row["tiles_per_s"] / bound, 2)
            )
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=Path("build/bench/serving.json"))
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--rounds", type=int, default=3, help="turns each server takes per part")
    parser.add_argument("--baseline", type=Path, help="a tree whose kit server also runs, as `kit-baseline`")
    parser.add_argument("--simulated-only", action="store_true", help="only (c)")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    model_dir = package(["h1"], Path("build/bench/artifact"), demo=True)
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        batch_log = Path(scratch) / "litserve-batches"
        contenders = [Contender("kit", _kit(None), _kit_batches)]
        if args.baseline:
            contenders.append(Contender("kit-baseline", _kit(args.baseline.resolve()), _kit_batches))
        contenders.append(
            Contender("litserve", functools.partial(_litserve, batch_log), lambda _: _log_batches(batch_log))
        )
        ceiling_tps = None if args.simulated_only else ceiling(400 * cores, cores)
        runs: list[dict[str, Any]] = []
        answers: dict[str, list[float]] = {}
        if not args.simulated_only:
            found, answers = rounds(
                contenders, model_dir, {}, False, CPU_CONCURRENCY, args.rounds, args.duration, "(b)"
            )
            runs += found
        found, answers = rounds(
            contenders, model_dir, {}, True, SIMULATED_CONCURRENCY, args.rounds, args.duration, "(c)"
        )
        runs += found
        unbatched, _ = rounds(
            contenders[:1],
            model_dir,
            {"MAX_BATCH_SIZE": "1"},
            True,
            (32,),
            1,
            args.duration,
            "(c) MAX_BATCH_SIZE=1",
        )
        runs += unbatched

    summary = summarise(runs)
    reference = answers["kit"]
    figures: dict[str, Any] = {
        "machine": {
            "cores": cores,
            "load_before": [round(v, 2) for v in load_before],
            "load_after": [round(v, 2) for v in os.getloadavg()],
        },
        "litserve": {
            "version": version("litserve"),
            "config": "LitAPI(max_batch_size=32, batch_timeout=0.005), LitServer(accelerator='cpu', devices=1, "
            "workers_per_device=2), one API server process per worker (LitServe's default)",
        },
        "simulated_forward_ms": list(SIMULATED),
        "ceiling_tiles_per_s": round(ceiling_tps, 1) if ceiling_tps else None,
        "answers_match": {name: bool(np.allclose(values, reference, atol=1e-6)) for name, values in answers.items()},
        "summary": summary,
        "comparisons": compare(summary, "kit", "litserve", ceiling_tps)
        + (compare(summary, "kit", "kit-baseline", ceiling_tps) if args.baseline else []),
        "runs": runs,
    }
    print_table(figures)
    write_figures(args.json, figures)
    print(f"figures written to {args.json}")
    return 0


def print_table(figures: dict[str, Any]) -> None:
    if figures["ceiling_tiles_per_s"]:
        print(
            f"\n(a) ceiling, decode + normalise on {figures['machine']['cores']} cores: "
            f"{figures['ceiling_tiles_per_s']} tiles/s"
        )
    print(
        f"\n{'part':<22} {'conc':>4} {'server':<13} {'tiles/s':>8} {'range':>15} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'batch':>6}"
    )
    for row in figures["summary"]:
        low, high = row["tiles_per_s_range"]
        print(
            f"{row['part']:<22} {row['concurrency']:>4} {row['server']:<13} {row['tiles_per_s']:>8} "
            f"{f'{low}-{high}':>15} {row['p50_ms']:>8} {row['p95_ms']:>8} {row.get('mean_batch', '-')!s:>6}"
        )
    print()
    for entry in figures["comparisons"]:
        bound = (
            f", {entry['over_bound']:.0%} of the {entry['bound_is']} bound {entry['bound_tiles_per_s']}"
            if "over_bound" in entry
            else ""
        )
        print(
            f"{entry['part']:<4} c={entry['concurrency']:<3} {entry['server']}: {entry['tiles_per_s_ratio']:.2f}x "
            f"{entry['against']}'s tiles/s, p95 {entry['p95_ratio']:.2f}x{bound}"
        )
    print(f"answers identical to the kit's: {figures['answers_match']}")


if __name__ == "__main__":
    sys.exit(main())

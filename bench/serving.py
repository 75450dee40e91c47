"""Serving benchmark on this machine with the demo h1 model (`make bench`).

(a) ceiling: JSON + base64 + PNG decode + normalisation of the same tile, in-process on all cores;
(b) the server through HTTP at concurrency 1, 8, 32 single-tile requests;
(c) the server at concurrency 32 with a simulated accelerator (SIMULATED_FORWARD_MS=20,1: each forward
    also waits 20 ms + 1 ms per tile, GIL released), batching on and with MAX_BATCH_SIZE=1.
Prints a table and writes the figures as JSON (--json, default build/bench/serving.json).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench import write_figures
from bench.http_load import LoadResult, build_request, run_load
from kit.artifacts.builder import package
from kit.endpoints.samples import wire_record
from kit.local import LocalServer, serve_model
from model_code.catalogue import H_OPTIMUS_NORMALISATION
from model_code.records import Record, decode_record, split_body

HOST = "127.0.0.1"
BODY = orjson.dumps(wire_record("h1", "embedding"))
MEAN = np.array(H_OPTIMUS_NORMALISATION["mean"], np.float32) * 255
STD = np.array(H_OPTIMUS_NORMALISATION["std"], np.float32) * 255


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


def load(server: LocalServer, concurrency: int, duration_s: float) -> LoadResult:
    request = build_request(HOST, server.port, "/invocations", BODY)
    return run_load(HOST, server.port, request, concurrency, duration_s=duration_s)


def _row(name: str, result: LoadResult) -> dict[str, float | int | str]:
    return {
        "run": name,
        "concurrency": result.concurrency,
        "tiles_per_s": round(result.per_second, 1),
        "p50_ms": round(result.percentile(50), 2),
        "p95_ms": round(result.percentile(95), 2),
        "errors": result.errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=Path("build/bench/serving.json"))
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per run")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    model_dir = package(["h1"], Path("build/bench/artifact"), demo=True)

    ceiling_tps = ceiling(400 * cores, cores)
    rows = []
    with serve_model(model_dir) as server:
        for concurrency in (1, 8, 32):
            rows.append(_row(f"(b) server c={concurrency}", load(server, concurrency, args.duration)))
    simulated = {"SIMULATED_FORWARD_MS": "20,1"}
    for name, extra in (
        ("(c) simulated GPU, batching", {}),
        ("(c) simulated GPU, MAX_BATCH_SIZE=1", {"MAX_BATCH_SIZE": "1"}),
    ):
        with serve_model(model_dir, env={**simulated, **extra}) as server:
            rows.append(_row(name, load(server, 32, args.duration)))

    b32 = rows[2]["tiles_per_s"]
    batched, unbatched = rows[3]["tiles_per_s"], rows[4]["tiles_per_s"]
    figures: dict[str, Any] = {
        "machine": {"cores": cores},
        "ceiling_tiles_per_s": round(ceiling_tps, 1),
        "runs": rows,
        "ratios": {
            "server_c32_over_ceiling": round(float(b32) / ceiling_tps, 3),
            "batched_over_unbatched_simulated": round(float(batched) / float(unbatched), 2),
        },
    }
    print(f"\n(a) ceiling, decode + normalise on {cores} cores: {ceiling_tps:8.1f} tiles/s\n")
    print(f"{'run':<40} {'conc':>4} {'tiles/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'errors':>6}")
    for row in rows:
        print(
            f"{row['run']:<40} {row['concurrency']:>4} {row['tiles_per_s']:>9} {row['p50_ms']:>8} "
            f"{row['p95_ms']:>8} {row['errors']:>6}"
        )
    ratios = figures["ratios"]
    print(f"\n(b) c=32 / (a): {ratios['server_c32_over_ceiling']:.0%}   (target >= 50%)")
    print(f"(c) batched / MAX_BATCH_SIZE=1: {ratios['batched_over_unbatched_simulated']:.2f}x   (target >= 3x)")
    write_figures(args.json, figures)
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

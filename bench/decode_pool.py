"""The serving process's CPU per tile decoded in worker processes: the kit's DecodePool (a pipe per worker,
written and read by the calling thread) against concurrent.futures' ProcessPoolExecutor, side by side.

    python -m bench.decode_pool [--tiles 400] [--workers 2] [--threads 4] [--json build/bench/decode_pool.json]
"""

from __future__ import annotations

import argparse
import functools
import resource
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from bench import write_figures
from kit.endpoints.samples import wire_record
from model_code.decoding import DecodePool, decode_item

Map = Callable[[Callable[[Any], Any], list[Any]], Iterable[Any]]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # this process's threads, not the workers
    return usage.ru_utime + usage.ru_stime


def measure(map_records: Map, tiles: int, threads: int) -> dict[str, float]:
    """Single-record calls from `threads` threads, as the server's parse threads make them."""
    raw = orjson.loads(orjson.dumps(wire_record("h1", "embedding")))
    decode = functools.partial(decode_item, overrides=None)
    with ThreadPoolExecutor(threads) as calls:
        list(calls.map(lambda _: list(map_records(decode, [(0, raw)])), range(threads * 4)))  # warm
        began, cpu = time.perf_counter(), _cpu_s()
        list(calls.map(lambda _: list(map_records(decode, [(0, raw)])), range(tiles)))
        seconds, cpu = time.perf_counter() - began, _cpu_s() - cpu
    return {"tiles_per_s": round(tiles / seconds, 1), "server_cpu_ms_per_tile": round(cpu / tiles * 1000, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--json", type=Path, default=Path("build/bench/decode_pool.json"))
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {}
    for round_ in (1, 2):  # alternating, so that a change in the machine's load shows as a spread
        pool = DecodePool(args.workers)
        try:
            figures[f"kit_pipes_{round_}"] = measure(pool.map, args.tiles, args.threads)
        finally:
            pool.shutdown()
        with ProcessPoolExecutor(args.workers) as executor:
            figures[f"process_pool_{round_}"] = measure(executor.map, args.tiles, args.threads)
    for name, row in figures.items():
        print(f"{name:<16} {row['tiles_per_s']:>7} tiles/s  {row['server_cpu_ms_per_tile']:.3f} ms of CPU a tile here")
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

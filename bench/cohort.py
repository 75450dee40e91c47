"""The cohort worker (a training job's `train`) against the local server's slide path, same slides, same demo h1
model, same machine, one run; then one generated slide over 1 GB through the worker (`make bench`).

  worker_slides_per_hour   `python -m model_code.cohort` over a /opt/ml tree of --slides 40x slides (copy-ahead,
                           the slide pipeline, atomic outputs, status lines): the slides' own seconds (status lines);
  server_slides_per_hour   the same slides POSTed one at a time to `python -m model_code.serve`'s slide path
                           (kit slides run's transport): the loop's seconds, the server already up;
  ..._with_start_...       both again with the process's start and model loading counted;
  large_slide              a generated 40x SVS over --large-gb GB through the worker: wall seconds, tiles, peak RSS
                           of the worker process, peak disk under its /opt/ml besides the channels (the slide's local
                           copy, its output), sampled every 0.2 s.
Writes --json (default build/bench/cohort.json). --large-gb 0 skips the large slide.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import write_figures
from kit.artifacts.builder import package
from kit.cohorts.local_job import write_job
from kit.local import serve_model
from kit.slides.run import HttpTransport
from kit.slides.synthetic import make_slide, write_large_svs

SLIDE_UM = (1792.0, 1344.0)


def run_worker(root: Path) -> tuple[float, int, int]:
    """Wall seconds, peak RSS (bytes) of the worker process and peak bytes under `root` outside input/."""
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "model_code.cohort", "--ml-root", str(root)], stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )  # fmt: skip
    peak_disk, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak_disk
        while not done.wait(0.2):
            peak_disk = max(peak_disk, _bytes_under(root, skip=root / "input"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - began
    done.set()
    sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"the worker exited {process.returncode}")
    return seconds, usage.ru_maxrss * 1024, peak_disk


def _bytes_under(root: Path, skip: Path) -> int:
    total = 0
    for folder, dirs, files in os.walk(root):
        if Path(folder) == skip.parent:
            dirs[:] = [d for d in dirs if Path(folder) / d != skip]
        for name in files:
            try:
                total += (Path(folder) / name).stat().st_size
            except FileNotFoundError:
                continue
    return total


def outcomes(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (root / "checkpoints/status/algo-1.jsonl").read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=Path("build/bench/cohort.json"))
    parser.add_argument("--slides", type=int, default=6)
    parser.add_argument("--large-gb", type=float, default=1.05, help="the large slide is at least this big")
    args = parser.parse_args(argv)
    work = Path("build/bench")
    model_dir = package(["h1", "tissue-seg"], work / "slides-artifact", demo=True)
    figures: dict[str, object] = {"machine": {"cores": os.cpu_count()}}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        slides = Path(tmp) / "slides"
        made = [make_slide(slides / f"s{i}.svs", 0.25, SLIDE_UM, (160 + 25 * i, 200)) for i in range(args.slides)]
        root = write_job(Path(tmp) / "ml", "algo-1", ["algo-1"], {"model": "h1"}, model_dir, slides)
        worker_total_s, _, _ = run_worker(root)
        rows = outcomes(root)
        tiles = sum(int(row["tiles"]) for row in rows)
        worker_s = sum(float(row["seconds"]) for row in rows)
        started = time.perf_counter()
        with serve_model(model_dir) as server:
            transport = HttpTransport(server.url, 600)
            began = time.perf_counter()
            for i, slide in enumerate(made):
                transport.send(slide, "model=h1", Path(tmp) / f"{i}.h5")
            server_s = time.perf_counter() - began
        server_total_s = time.perf_counter() - started
        per_hour = {name: 3600 * len(made) / s for name, s in (
            ("worker", worker_s), ("server", server_s), ("worker_with_start", worker_total_s),
            ("server_with_start", server_total_s))}  # fmt: skip
        figures["cohort"] = {
            "slides": len(made),
            "tiles": tiles,
            "mpp": 0.25,
            "bytes": sum(s.stat().st_size for s in made),
        }
        figures.update({f"{name}_slides_per_hour": round(value, 1) for name, value in per_hour.items()})
        figures["worker_over_server"] = round(per_hour["worker"] / per_hour["server"], 2)
        figures["worker_over_server_with_start"] = round(
            per_hour["worker_with_start"] / per_hour["server_with_start"], 2
        )
        print(f"{len(made)} slides of 40x ({tiles} tiles), slides/h: worker {per_hour['worker']:.0f}, server slide "
              f"path {per_hour['server']:.0f} ({figures['worker_over_server']}x); with start and model loading: "
              f"{per_hour['worker_with_start']:.0f} and {per_hour['server_with_start']:.0f} "
              f"({figures['worker_over_server_with_start']}x)")  # fmt: skip
    if args.large_gb > 0:
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            began = time.perf_counter()
            big = write_large_svs(Path(tmp) / "slides" / "large.svs", int(args.large_gb * 1e9))
            made_s = time.perf_counter() - began
            root = write_job(Path(tmp) / "ml", "algo-1", ["algo-1"], {"model": "h1"}, model_dir, big.parent)
            seconds, rss, disk = run_worker(root)
            (row,) = outcomes(root)
            figures["large_slide"] = {
                "bytes": big.stat().st_size, "generated_s": round(made_s, 1), "status": row["status"],
                "tiles": row["tiles"], "wall_s": round(seconds, 1), "peak_rss_bytes": rss, "peak_disk_bytes": disk,
            }  # fmt: skip
            print(f"large slide {big.stat().st_size / 1e9:.2f} GB: {row['status']}, {row['tiles']} tiles in "
                  f"{seconds:.0f} s; worker peak RSS {rss / 2**20:.0f} MiB, peak disk {disk / 1e9:.2f} GB")  # fmt: skip
    write_figures(args.json, figures)
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

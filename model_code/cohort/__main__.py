"""`python -m model_code.cohort [--ml-root DIR]`: the cohort worker, as the image's `train` runs it in a
SageMaker training job (DIR stands for /opt/ml)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from model_code.cohort.worker import run_job
from model_code.settings import default_slide_read_threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_code.cohort", description=__doc__)
    parser.add_argument("--ml-root", type=Path, default=Path("/opt/ml"), help="what stands for /opt/ml")
    parser.add_argument("--scratch", type=Path, help="local disk for the slides' copies (default: ML_ROOT/scratch)")
    parser.add_argument(
        "--read-threads", type=int, default=default_slide_read_threads(), help="threads reading a slide"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return run_job(args.ml_root, args.scratch or args.ml_root / "scratch", args.read_threads, stop)


if __name__ == "__main__":
    sys.exit(main())

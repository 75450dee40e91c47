"""`python -m model_code.serve --model-dir DIR [--port P]`: the server, as the container's `serve` runs it.

SIGTERM (and Ctrl-C) stop taking new connections, finish the requests in flight, then exit; connections
still sending their request are closed at once.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI

from model_code.connections import guarded_protocol
from model_code.inference import serving_device
from model_code.runners import ForwardHooks
from model_code.server import create_app
from model_code.settings import Settings, SettingsError


def share_cpu() -> None:
    """On a CPU the forward pass shares the cores with the threads that decode tiles and read slides, and
    torch's own threads spin between operations, starving them. Unless OMP_NUM_THREADS says otherwise, the
    forward takes half the cores (measured on 2 cores, side by side: tiles at concurrency 32 325 -> 446
    tiles/s, the slide path 207 -> 250 tiles/s). A GPU forward leaves the CPU, so nothing changes there."""
    if serving_device().type == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


def main(argv: list[str] | None = None, hooks: ForwardHooks | None = None) -> int:
    """The server; `hooks` run inside each forward pass (benchmarks' simulated device, bench/simulated_device.py)."""
    parser = argparse.ArgumentParser(prog="python -m model_code.serve", description=__doc__)
    parser.add_argument("--model-dir", type=Path, help="the model artifact (default /opt/ml/model)")
    parser.add_argument("--port", type=int, help="default SAGEMAKER_BIND_TO_PORT, else 8080")
    parser.add_argument("--host", help="default 0.0.0.0 (SERVER_HOST)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.load(model_dir=args.model_dir, port=args.port)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.host:
        settings = replace(settings, host=args.host)
    share_cpu()
    server: uvicorn.Server | None = None

    def stop() -> None:
        assert server is not None
        server.should_exit = True

    app = create_app(settings, on_fatal=stop, hooks=hooks)
    server = uvicorn.Server(uvicorn_config(app, settings, log_config=None))
    server.run()
    return 1 if app.state.server.load_error else 0


def uvicorn_config(app: FastAPI, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn as the server runs: stalled connections dropped, SageMaker's connections kept alive."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(settings.read_timeout_s),
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
        timeout_keep_alive=75,  # longer than SageMaker's 60 s so its connections are reused
        access_log=False,
        **options,
    )


if __name__ == "__main__":
    faulthandler.enable()  # a crash in native code (a model package's kernels) leaves its stack in the log
    sys.exit(main())

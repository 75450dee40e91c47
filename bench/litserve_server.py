"""The kit's handler behind LitServe, the serving benchmark's point of comparison (`python -m bench.serving`).

`python -m bench.litserve_server --model-dir DIR --port P [--forward-ms A,B] [--batch-log FILE]`: POST
/invocations, GET /ping.
Configured as LitServe's batching guide advises: batching on the `LitAPI` (`max_batch_size`, `batch_timeout`,
with `batch` / `unbatch` for inputs that are not tensors) and more than one inference worker on the device
(`LitServer(workers_per_device=2)`), each of its own process; the HTTP side runs LitServe's default, an API
server process per worker. Inside, the kit's own handler: the tile decode of `input_fn`, `model_fn` (with the
simulated accelerator of bench/simulated_device.py, as the kit's server gets it), `predict_fn` and
`output_fn`, so both servers give identical answers.

The workers share one device: their forward passes (the demo model's on the CPU, then what is left of
--forward-ms's time, as the kit's forward thread runs them) take turns under a file lock, as two processes'
passes on one GPU do.
Each forward appends its batch size to --batch-log.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import litserve as ls
import torch
from fastapi import HTTPException
from fastapi.responses import Response

from bench.simulated_device import SimulatedDevice, forward_ms
from model_code import inference
from model_code.errors import ClientError, Result
from model_code.inference import ParsedRequest
from model_code.records import Record, decode_record
from model_code.runners import ForwardHooks

MAX_BATCH_SIZE = 32  # as the kit's default MAX_BATCH_SIZE
BATCH_TIMEOUT_S = 0.005  # as the kit's default MAX_BATCH_WAIT_MS
WORKERS = 2


class HandlerAPI(ls.LitAPI):
    """One tile a request, batched across requests by LitServe, run by the kit's handler."""

    def __init__(self, model_dir: Path, device_lock: Path, batch_log: Path | None, device: SimulatedDevice):
        super().__init__(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S, api_path="/invocations")
        self.model_dir, self.device_lock, self.batch_log = model_dir, device_lock, batch_log
        self.simulated = device  # not `self.device`: LitServe sets that to the device name

    def setup(self, device: str) -> None:
        if not os.environ.get("OMP_NUM_THREADS"):  # the workers share the cores, as the kit's serve.share_cpu
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // WORKERS))
        self.lock = self.device_lock.open("a")
        self.log = self.batch_log.open("a", buffering=1) if self.batch_log else None
        self.models = inference.load_models(self.model_dir, ForwardHooks(after=self._on_device))

    def _on_device(self, model: str, records: Sequence[Record], seconds: float) -> None:
        self.simulated.after(model, records, seconds)
        if self.log is not None:
            self.log.write(f"{len(records)}\n")

    def decode_request(self, request):  # unannotated: LitServe then passes the request's JSON
        record = decode_record(request, 0)
        if isinstance(record, ClientError):
            raise HTTPException(record.status_code, record.to_dict())
        return record

    def batch(self, inputs: list[Record]) -> list[Record]:
        return inputs

    def predict(self, records: list[Record]) -> list[Result]:
        fcntl.flock(self.lock, fcntl.LOCK_EX)  # the one device: the workers' forward passes take turns
        try:
            results = inference.predict_fn(ParsedRequest(list(records), "list"), self.models).results
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)
        assert results is not None
        return results

    def unbatch(self, output: list[Result]) -> list[Result]:
        return output

    def encode_response(self, output: Result) -> Response:
        body, media_type = inference.output_fn(ParsedRequest([], "object", [output]), None)
        return Response(body, media_type=media_type)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.litserve_server", description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--batch-log", type=Path, help="a file each forward appends its batch size to")
    parser.add_argument("--forward-ms", type=forward_ms, help="A,B: the simulated device (bench/simulated_device.py)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # LitServe stops its worker processes on Ctrl-C
    with tempfile.NamedTemporaryFile(prefix="litserve-device-") as lock:
        api = HandlerAPI(args.model_dir, Path(lock.name), args.batch_log, SimulatedDevice(args.forward_ms))
        server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=WORKERS, healthcheck_path="/ping")
        server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tiles decode in worker processes: the same records as in-process, errors intact."""

from __future__ import annotations

import functools
import pickle

import numpy as np
import orjson

from kit.endpoints.samples import wire_record
from model_code.decoding import DecodePool, decode_item
from model_code.errors import ClientError
from model_code.records import Record, decode_record
from tests.support.images import png_bytes, random_tile


def test_records_decoded_in_workers_equal_those_decoded_here() -> None:
    raw = [orjson.loads(orjson.dumps(wire_record("h1", "embedding", png_bytes(random_tile(224, i))))) for i in range(6)]
    raw[3]["image_data"] = "%%%"
    pool = DecodePool(2)
    try:
        decoded = list(pool.map(functools.partial(decode_item, overrides=None), list(enumerate(raw))))
    finally:
        pool.shutdown()
    for index, (there, item) in enumerate(zip(decoded, raw, strict=True)):
        here = decode_record(item, index)
        if isinstance(here, ClientError):
            assert isinstance(there, ClientError) and there.to_dict() == here.to_dict()
            assert there.to_dict()["record"] == 3 and there.status_code == 400
        else:
            assert isinstance(there, Record) and isinstance(here, Record)
            np.testing.assert_array_equal(there.pixels, here.pixels)
            assert there.echo == here.echo


def test_workers_import_neither_torch_nor_the_server() -> None:
    """A worker is `python -m model_code.decoding`: the modules it holds are the decoder's alone."""
    import subprocess
    import sys

    probe = "import sys, model_code.decoding; print(sorted({m.split('.')[0] for m in sys.modules}))"
    held = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert not {"torch", "fastapi", "uvicorn", "timm"} & set(eval(held))  # our own probe's list


def test_a_client_error_pickles_whole() -> None:
    error = ClientError("too large", field="body", status=413, record=7)
    assert pickle.loads(pickle.dumps(error)).to_dict() == error.to_dict()


def test_a_worker_that_dies_fails_only_its_record_and_is_replaced() -> None:
    """A decoding process killed (the OOM killer, a crash in native code) fails the record it held with a 503;
    the pool starts another and goes on decoding."""
    raw = orjson.loads(orjson.dumps(wire_record("h1", "embedding", png_bytes(random_tile(224, 1)))))
    pool = DecodePool(1)
    try:
        decode = functools.partial(decode_item, overrides=None)
        assert isinstance(next(iter(pool.map(decode, [(0, raw)]))), Record)
        worker = pool._workers[0].process  # the one worker, killed between records
        worker.kill()
        worker.wait(timeout=10)
        died = next(iter(pool.map(decode, [(4, raw)])))
        assert isinstance(died, ClientError) and died.status_code == 503 and died.record == 4
        assert "decoding this tile died" in str(died)
        again = list(pool.map(decode, [(0, raw), (1, raw)]))
        assert all(isinstance(record, Record) for record in again)
    finally:
        pool.shutdown()


def test_a_worker_outlives_a_signal_to_the_process_group_and_ends_with_its_pipe() -> None:
    """Ctrl-C or SIGTERM to the whole group leaves the workers to the server, which still needs them to finish
    the requests in flight; closing the pipe ends them."""
    import signal

    raw = orjson.loads(orjson.dumps(wire_record("h1", "embedding", png_bytes(random_tile(224, 2)))))
    pool = DecodePool(1)
    decode = functools.partial(decode_item, overrides=None)
    process = pool._workers[0].process
    try:
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGINT)
        assert isinstance(next(iter(pool.map(decode, [(0, raw)]))), Record)
    finally:
        pool.shutdown()
    assert process.wait(timeout=10) == 0

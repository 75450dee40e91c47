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
from tests.conftest import png_bytes, random_tile


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


def test_a_client_error_pickles_whole() -> None:
    error = ClientError("too large", field="body", status=413, record=7)
    assert pickle.loads(pickle.dumps(error)).to_dict() == error.to_dict()

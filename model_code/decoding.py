"""Tile decoding in worker processes, so the serving process's GIL is left to HTTP, batching and the forward.

JSON parsing stays in the server; each record (its base64 PNG) goes to a worker and comes back decoded (a
uint8 array, or the record's ClientError). The workers are forked from a clean forkserver that imports only
this module (no torch, no server threads), at start, so no request pays for their start.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from model_code.errors import ClientError
from model_code.records import Record, decode_record


def decode_item(item: tuple[int, Any], overrides: dict[str, str] | None) -> Record | ClientError:
    """One record of a request (its index, its JSON) decoded: `map_records`' function, picklable."""
    index, raw = item
    return decode_record(raw, index, overrides)


class DecodePool:
    """`workers` decoding processes; `map` as the builtin's, in order."""

    def __init__(self, workers: int):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        self._pool = ProcessPoolExecutor(workers, mp_context=context)
        list(self._pool.map(abs, range(workers * 4)))  # start them now, not on the first request

    def map(self, decode: Callable[[Any], Any], items: list[Any]) -> Iterable[Any]:
        return self._pool.map(decode, items)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

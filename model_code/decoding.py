"""Tile decoding in worker processes, so the serving process's GIL is left to HTTP, batching and the forward.

JSON parsing stays in the server; each record (its base64 PNG) goes to a worker and comes back decoded (a
uint8 array, or the record's ClientError). A worker is `python -m model_code.decoding`, which imports only
this module and what it needs (no torch, no server threads), started with the server, so no request pays
for its start; multiprocessing's workers would import the server's main module again, torch with it.

Each worker has a pipe of its own, and the thread that needs a record decoded sends it and waits for the
answer itself: no executor threads pickling and collecting for it (half the serving process's CPU a tile
of concurrent.futures' process pool: `python -m bench.decode_pool`, docs/performance.md). A worker that
dies (killed, or crashed in native code) fails only the record it held, with a 503, and is replaced.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import queue
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from model_code.errors import ClientError
from model_code.records import Record, decode_record

log = logging.getLogger("optimus.decoding")
FRAME = struct.Struct("<I")  # each message: its length, then a pickle
READY = b"ready"


def decode_item(item: tuple[int, Any], overrides: dict[str, str] | None) -> Record | ClientError:
    """One record of a request (its index, its JSON) decoded: `map_records`' function, picklable."""
    index, raw = item
    return decode_record(raw, index, overrides)


def _send(stream: IO[bytes], payload: bytes) -> None:
    stream.write(FRAME.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _receive(stream: IO[bytes]) -> bytes:
    head = stream.read(FRAME.size)
    size = FRAME.unpack(head)[0] if len(head) == FRAME.size else -1
    payload = stream.read(size) if size >= 0 else b""
    if size < 0 or len(payload) != size:
        raise EOFError("the decoding worker closed its pipe")
    return payload


def _serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """A worker: (function, item) in, its result out, until the server closes the pipe."""
    _send(answers, READY)
    while True:
        try:
            decode, item = pickle.loads(_receive(requests))
        except EOFError:
            return
        _send(answers, pickle.dumps(decode(item), pickle.HIGHEST_PROTOCOL))


class _Worker:
    def __init__(self) -> None:
        command = [sys.executable, "-m", "model_code.decoding"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.requests, self.answers = self.process.stdin, self.process.stdout

    def wait_ready(self) -> None:
        if _receive(self.answers) != READY:
            raise RuntimeError("a decoding worker did not start")

    def call(self, decode: Callable[[Any], Any], item: Any) -> Any:
        _send(self.requests, pickle.dumps((decode, item), pickle.HIGHEST_PROTOCOL))
        return pickle.loads(_receive(self.answers))

    def stop(self) -> None:
        for stream in (self.requests, self.answers):
            with contextlib.suppress(OSError):  # a broken pipe to a worker that died
                stream.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class DecodePool:
    """`workers` decoding processes; `map` as the builtin's, in order, the items spread over the workers."""

    def __init__(self, workers: int):
        self._workers = [_Worker() for _ in range(workers)]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for worker in self._workers:
            worker.wait_ready()
            self._idle.put(worker)
        self._fan_out = ThreadPoolExecutor(workers, thread_name_prefix="decode")  # a many-record request's

    def map(self, decode: Callable[[Any], Any], items: list[Any]) -> Iterable[Any]:
        if len(items) == 1:
            return [self._call(decode, items[0])]
        return self._fan_out.map(lambda item: self._call(decode, item), items)

    def _call(self, decode: Callable[[Any], Any], item: Any) -> Any:
        worker = self._idle.get()
        try:
            return worker.call(decode, item)
        except (EOFError, OSError) as exc:  # the worker died holding this record: replace it
            log.error("a decoding worker died (%s: %s); starting another", type(exc).__name__, exc)
            worker.stop()
            self._workers[self._workers.index(worker)] = worker = _Worker()
            worker.wait_ready()
            died = ClientError("the process decoding this tile died; send it again", field="image_data", status=503)
            return died.at(item[0]) if isinstance(item, tuple) else died
        finally:
            self._idle.put(worker)

    def shutdown(self) -> None:
        self._fan_out.shutdown(wait=True, cancel_futures=True)
        for worker in self._workers:
            worker.stop()


if __name__ == "__main__":
    # A worker ends when the server closes its pipe (or dies): Ctrl-C and SIGTERM sent to the whole process
    # group are the server's to act on, which finishes the requests in flight with its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _serve(sys.stdin.buffer, sys.stdout.buffer)

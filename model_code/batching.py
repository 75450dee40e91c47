"""Dynamic batching: tiles from concurrent requests are gathered per model and run as one forward pass.

One forward thread takes the next batch the moment its previous pass ends: every tile that queued while
the device was busy (up to `max_batch`, the model whose oldest tile has waited longest first), with no
further wait, since those tiles have already waited a whole pass. Only a tile that finds the device idle
waits up to `max_wait_s` for company, and only while `expecting_more()` says a request is still being
decoded (a lone request is not held back by MAX_BATCH_WAIT_MS). The thread never waits for the event
loop: tiles reach it through a lock-protected queue, and each pass's answers go back in one callback.

The forward thread drops the GIL at every torch call and must win it back from the decoding threads and
the event loop before its next one: `favour_forward` shortens the interval after which a thread holding
the GIL is made to hand it over (Python's default is 5 ms), so the device is not left waiting. Nor may
the garbage collector hold it for long: `freeze_loaded_objects` puts what startup loaded out of its reach.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from model_code.errors import ClientError, ForwardError, Result
from model_code.records import Record

Predict = Callable[[list[Record]], list[Result]]
GIL_SWITCH_INTERVAL_S = 0.0005


def favour_forward() -> None:
    """A thread waiting for the GIL (the forward thread, between torch calls) gets it within 0.5 ms."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def freeze_loaded_objects() -> None:
    """Exempt every object alive now (torch, the models, the web framework: about 430,000) from garbage
    collection. Under load Python's full collection ran every 2 s or so and walked them all in about 200 ms
    while holding the GIL, stalling the forward thread and every request (docs/performance.md)."""
    gc.collect()
    gc.freeze()


def thaw_loaded_objects() -> None:
    """Once serving stops: a process that goes on (the tests' in-thread servers) collects them again."""
    gc.unfreeze()


@dataclass
class _Pending:
    record: Record
    future: asyncio.Future[tuple[Result]]  # in a tuple: a tile's own ForwardError is a result, not a raise
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(
        self,
        predict: Predict,
        max_batch: int,
        max_wait_s: float,
        on_wait: Callable[[str, float], None] | None = None,
        expecting_more: Callable[[], bool] = lambda: True,
    ):
        self._predict = predict
        self._expecting_more = expecting_more
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._on_wait = on_wait
        self._queues: dict[str, deque[_Pending]] = {}
        self._ready = threading.Condition()
        self._closed = False
        self._idle_since = time.perf_counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._forward_loop, name="forward", daemon=True)

    async def run(self, records: Sequence[Record | ClientError]) -> list[Result]:
        """Results in the order given; ClientErrors pass through. Raises the error of a batch that failed whole.

        Cancelling it withdraws its tiles that have not yet run (their client has gone away)."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._thread.start()
        pending = [_Pending(r, loop.create_future()) for r in records if isinstance(r, Record)]
        with self._ready:
            for item in pending:
                self._queues.setdefault(item.record.model, deque()).append(item)
            self._ready.notify()
        outcomes = await asyncio.gather(*(p.future for p in pending), return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            raise failures[0]
        answers = iter(outcomes)
        return [record if isinstance(record, ClientError) else next(answers)[0] for record in records]  # type: ignore[index]

    def _next_batch(self) -> list[_Pending] | None:
        """The next batch (None once closed): what queued while the device was busy at once, else what comes
        within `max_wait_s` of the first tile while more is expected."""
        with self._ready:
            while not self._closed and not any(self._queues.values()):
                self._ready.wait()
            if self._closed:
                return None
            model = min((q for q in self._queues.values() if q), key=lambda q: q[0].enqueued)
            batch = [model.popleft() for _ in range(min(len(model), self._max_batch))]
            if batch[0].enqueued >= self._idle_since:  # it found the device idle: wait for company
                deadline = time.perf_counter() + self._max_wait_s
                while len(batch) < self._max_batch and self._expecting_more():
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    if not model:
                        self._ready.wait(remaining)
                    batch += [model.popleft() for _ in range(min(len(model), self._max_batch - len(batch)))]
            return batch

    def _forward_loop(self) -> None:
        assert self._loop is not None
        while (batch := self._next_batch()) is not None:
            batch = [p for p in batch if not p.future.done()]  # callers that went away
            if batch:
                self._loop.call_soon_threadsafe(_deliver, batch, self._forward(batch))
            self._idle_since = time.perf_counter()

    def _forward(self, batch: list[_Pending]) -> list[Result] | ForwardError:
        started = time.perf_counter()
        if self._on_wait is not None:
            for pending in batch:
                self._on_wait(pending.record.model, started - pending.enqueued)
        try:
            return self._predict([p.record for p in batch])
        except Exception as exc:  # predict_fn isolates failing tiles itself: this is a failure outside them
            return exc if isinstance(exc, ForwardError) else ForwardError(batch[0].record.model, exc)

    async def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)


def _deliver(batch: list[_Pending], outcome: list[Result] | ForwardError) -> None:
    """On the event loop: each waiting caller gets its result, or the error of the pass that failed whole."""
    for i, pending in enumerate(batch):
        if pending.future.done():
            continue
        if isinstance(outcome, ForwardError):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result((outcome[i],))

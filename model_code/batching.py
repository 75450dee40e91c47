"""Dynamic batching: tiles from concurrent requests are gathered per model and run as one forward pass.

One collector task per model takes the first waiting tile, waits up to `max_wait_s` for more (up to
`max_batch` tiles) and hands the batch to `predict` on a single forward thread, so forward passes never
block the event loop or the decoding. While one forward runs, the next batch gathers. The wait ends
early when `expecting_more()` says no request is still being decoded: then no tile can join soon, and
waiting would only add latency (a lone request is not held back by MAX_BATCH_WAIT_MS).

The forward thread drops the GIL at every torch call and must win it back from the decoding threads and
the event loop before its next one: `favour_forward` shortens the interval after which a thread holding
the GIL is made to hand it over (Python's default is 5 ms), so the device is not left waiting.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from model_code.errors import ClientError, ForwardError, Result
from model_code.records import Record

Predict = Callable[[list[Record]], list[Result]]
GIL_SWITCH_INTERVAL_S = 0.0005


def favour_forward() -> None:
    """A thread waiting for the GIL (the forward thread, between torch calls) gets it within 0.5 ms."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


@dataclass
class _Pending:
    record: Record
    future: asyncio.Future[Result]
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
        self._queues: dict[str, asyncio.Queue[_Pending]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._forward = ThreadPoolExecutor(1, thread_name_prefix="forward")

    async def run(self, records: Sequence[Record | ClientError]) -> list[Result]:
        """Results in the order given; ClientErrors pass through. Raises the error of a batch that failed whole.

        Cancelling it withdraws its tiles that have not yet run (their client has gone away)."""
        outcomes = await asyncio.gather(
            *(self._submit(r) for r in records if isinstance(r, Record)), return_exceptions=True
        )
        failures = [o for o in outcomes if isinstance(o, BaseException)]  # a result is a tuple, even an error's
        if failures:
            raise failures[0]
        answers = iter(outcomes)
        return [record if isinstance(record, ClientError) else next(answers)[0] for record in records]  # type: ignore[index]

    async def _submit(self, record: Record) -> tuple[Result]:
        queue = self._queues.get(record.model)
        if queue is None:
            queue = self._queues[record.model] = asyncio.Queue()
            self._tasks.append(asyncio.create_task(self._collect(record.model, queue)))
        pending = _Pending(record, asyncio.get_running_loop().create_future())
        queue.put_nowait(pending)
        return (await pending.future,)

    async def _collect(self, model: str, queue: asyncio.Queue[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self._max_wait_s
            while len(batch) < self._max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or not self._expecting_more():
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            batch = [p for p in batch if not p.future.done()]  # callers that went away
            if not batch:
                continue
            started = time.perf_counter()
            if self._on_wait is not None:
                for pending in batch:
                    self._on_wait(model, started - pending.enqueued)
            try:
                results = await loop.run_in_executor(self._forward, self._predict, [p.record for p in batch])
            except Exception as exc:  # predict_fn isolates failing tiles itself: this is a failure outside them
                error = exc if isinstance(exc, ForwardError) else ForwardError(model, exc)
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._forward.shutdown(wait=True)

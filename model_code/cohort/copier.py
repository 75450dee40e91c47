"""Copy-ahead: the next slide is copied from the channel (a FastFile mount, best read sequentially) to local
disk while the current one is processed; at most one slide waits copied, so the disk holds two at most."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from model_code.cohort.units import Unit

CHUNK = 8 << 20


class Stopped(Exception):
    """The job was told to stop (SIGTERM) during a copy."""


class CopyAhead:
    """`fetch(unit)` gives the folder under `scratch` (the worker's own) holding the unit's files, copied by a
    background thread; `ahead(unit)` starts the next copy; `release(unit)` deletes a local copy."""

    def __init__(self, channel: Path, scratch: Path, stop: threading.Event):
        self.channel, self.scratch, self.stop = channel, scratch, stop
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="copy-ahead")
        self.copies: dict[str, tuple[Future[Path], Path]] = {}

    def ahead(self, unit: Unit) -> None:
        if unit.name not in self.copies:
            local = self.scratch / str(len(self.copies) + 1)
            while local.exists():
                local = local.with_name(str(int(local.name) + 1))
            local.mkdir(parents=True)
            self.copies[unit.name] = (self.pool.submit(self._copy, unit, local), local)

    def fetch(self, unit: Unit) -> Path:
        self.ahead(unit)
        return self.copies[unit.name][0].result()

    def release(self, unit: Unit) -> None:
        entry = self.copies.pop(unit.name, None)
        if entry is not None:
            copy, local = entry
            if not copy.cancel():
                copy.exception()  # waits for a copy under way to end
            shutil.rmtree(local, ignore_errors=True)

    def close(self) -> None:
        """Stops copying and deletes every local copy."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.copies.clear()

    def _copy(self, unit: Unit, local: Path) -> Path:
        for name in unit.files:
            target = local / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with (self.channel / name).open("rb") as source, target.open("wb") as out:
                while chunk := source.read(CHUNK):
                    if self.stop.is_set():
                        raise Stopped()
                    out.write(chunk)
        return local

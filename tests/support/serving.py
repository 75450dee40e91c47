"""Run the real app on a local port in this process, so tests can reach inside it (fault injection), and
forward passes held inside it until a test lets them go."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import uvicorn
from fastapi import FastAPI

from kit.local import free_port, wait_healthy
from model_code.records import Record
from model_code.runners import ForwardHooks
from model_code.serve import uvicorn_config
from model_code.server import Server, create_app
from model_code.settings import Settings

__all__ = ["HeldForwards", "Running", "free_port", "serve_in_thread"]


@dataclass
class Running:
    url: str
    app: FastAPI

    @property
    def server(self) -> Server:
        return self.app.state.server  # type: ignore[no-any-return]


@contextlib.contextmanager
def serve_in_thread(settings: Settings, hooks: ForwardHooks | None = None) -> Iterator[Running]:
    """The real app on uvicorn, configured as `serve` runs it, on a real port, in a thread of this process;
    `hooks` inside each forward pass (bench.simulated_device's slow or failing device, HeldForwards)."""
    settings = replace(settings, host="127.0.0.1")
    app = create_app(settings, hooks=hooks)
    server = uvicorn.Server(uvicorn_config(app, settings, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    try:
        wait_healthy(url)
        yield Running(url, app)
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@dataclass
class HeldForwards:
    """A device whose forward passes stop inside the pass until `release` is set; `started` is set once the
    first pass is there. Instead of a slow simulated device: what the test waits for does not depend on
    how fast this machine is."""

    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def hooks(self) -> ForwardHooks:
        return ForwardHooks(after=self._hold)

    def _hold(self, model: str, records: Sequence[Record], seconds: float) -> None:
        self.started.set()
        assert self.release.wait(60), "a held forward pass was never released"

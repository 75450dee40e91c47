"""Run the real app on a local port in this process, so tests can reach inside it (fault injection)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace

import uvicorn
from fastapi import FastAPI

from kit.local import free_port, wait_healthy
from model_code.runners import ForwardHooks
from model_code.serve import uvicorn_config
from model_code.server import Server, create_app
from model_code.settings import Settings

__all__ = ["Running", "free_port", "serve_in_thread"]


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
    `hooks` inside each forward pass (bench.simulated_device's slow or failing device)."""
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

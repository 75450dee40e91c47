"""Helpers to run the real server on a local port: in this process (for fault injection) or as the
exact command the container runs."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from model_code.server import Server, create_app
from model_code.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, timeout: float = 120, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise RuntimeError(f"server exited with {process.returncode}:\n{output[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url}/ping did not answer 200 within {timeout} s")


@dataclass
class Running:
    url: str
    app: FastAPI

    @property
    def server(self) -> Server:
        return self.app.state.server  # type: ignore[no-any-return]


@contextlib.contextmanager
def serve_in_thread(settings: Settings) -> Iterator[Running]:
    """The real app on uvicorn, on a real port, in a thread of this process."""
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    try:
        wait_healthy(url)
        yield Running(url, app)
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@contextlib.contextmanager
def serve_command(command: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A server started as a separate process, the way the container starts it (`python` on PATH)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    process = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, "PATH": path, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process=process)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)

"""Start the serving command as a local process, as the container runs it, and wait until it is healthy."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kit import CheckFailed, KitError


@dataclass
class LocalServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes] | None = None, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise KitError(f"the server exited with {process.returncode}:\n{output[-3000:]}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(f"{url}/ping", timeout=2) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.2)
    raise KitError(f"{url}/ping did not answer 200 within {timeout_s:g} s")


def hosted_models(url: str, timeout_s: float = 10) -> list[str]:
    """The models a server's /ping lists (200 once they are loaded)."""
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=timeout_s) as answer:
            models = json.loads(answer.read()).get("models")
    except urllib.error.HTTPError as exc:
        raise CheckFailed(f"{url}/ping answered {exc.code}: {exc.read().decode(errors='replace')[:300]}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CheckFailed(f"{url}/ping: {reason}: is the server running there?") from None
    except ValueError:
        raise CheckFailed(f"{url}/ping did not answer JSON: is it the kit's server?") from None
    if not isinstance(models, list) or not models:
        raise CheckFailed(f"{url}/ping lists no models: is it the kit's server? (or give --models)")
    return [str(model) for model in models]


@contextlib.contextmanager
def serve_model(model_dir: Path, env: dict[str, str] | None = None) -> Iterator[LocalServer]:
    """`python -m model_code.serve --model-dir DIR --port P` on a free port."""
    port = free_port()
    command = [sys.executable, "-m", "model_code.serve", "--model-dir", str(model_dir), "--port", str(port)]
    with local_server(command, port, env) as server:
        yield server


@contextlib.contextmanager
def local_server(command: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[LocalServer]:
    """A serving command listening on `port`, healthy before it is yielded, stopped with SIGTERM on exit."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # `python` as in the image
    process = subprocess.Popen(
        command, env={**os.environ, "PATH": path, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        yield LocalServer(url, port, process)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of a local server's `/metrics` samples called `name` whose labels include `labels` (0 if none),
    read with prometheus_client's own parser: `metric(url, "optimus_batch_size_count", model="h1")`."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )

"""Shared fixtures: demo artifacts built once per session through the real packager, vendor payloads, a server.
(Helpers that are not fixtures are in tests/support/.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.artifacts.builder import package
from kit.local import free_port
from model_code.inference import Models, model_fn
from model_code.settings import Settings
from tests.support.paths import VENDOR
from tests.support.serving import Running, serve_in_thread


@pytest.fixture(scope="session")
def vendor() -> Path:
    assert VENDOR.is_dir(), f"the vendor payloads are expected beside the repository at {VENDOR}"
    return VENDOR


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo h1 + m-optimus + tissue-seg, as `kit package --demo` writes them."""
    return package(["h1", "m-optimus", "tissue-seg"], tmp_path_factory.mktemp("artifact"), demo=True)


@pytest.fixture(scope="session")
def models(artifact: Path) -> Models:
    return model_fn(artifact)


@pytest.fixture(scope="session")
def running(artifact: Path) -> Iterator[Running]:
    """The real server on a local port, in this process (tests may reach inside it)."""
    settings = Settings(model_dir=artifact, port=free_port(), max_batch_wait_ms=10, decode_workers=2)
    with serve_in_thread(settings) as running:
        yield running

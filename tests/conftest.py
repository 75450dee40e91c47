"""Shared fixtures: demo artifacts built once per session through the real packager, vendor payloads."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from kit.artifacts.builder import package
from kit.local import free_port
from model_code.inference import Models, model_fn
from model_code.settings import Settings
from tests.serving import Running, serve_in_thread

VENDOR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "vendor-payloads"


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


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def random_tile(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@contextlib.contextmanager
def mocked_aws(monkeypatch: pytest.MonkeyPatch, region: str) -> Iterator[boto3.Session]:
    """moto's AWS with test credentials in the environment, and a session in `region`. (moto is imported
    here so that the GPU machine, which has no moto, runs the serving tests: bench/gpu_check.sh.)"""
    from moto import mock_aws

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        yield boto3.Session(region_name=region)

"""AWS in moto for a test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import boto3
import pytest


@contextlib.contextmanager
def mocked_aws(monkeypatch: pytest.MonkeyPatch, region: str) -> Iterator[boto3.Session]:
    """moto's AWS with test credentials in the environment, and a session in `region`. (moto is imported
    here so that the GPU machine, which has no moto, runs the serving tests: bench/gpu_check.sh.)"""
    from moto import mock_aws

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        yield boto3.Session(region_name=region)

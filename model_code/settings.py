"""Server settings from the command line and the environment, checked once at start.

The handler's own limits (`max_batch_size`, `Limits`) are read by the same functions, so that
`inference.py` running alone under AWS's toolkit honours the same variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL_DIR = Path("/opt/ml/model")
DEFAULT_BODY_MB = 6.0  # SageMaker real-time InvokeEndpoint limit
DEFAULT_MAX_BATCH_SIZE = 32
# A 100 MB batch-transform request holds about 690 of the vendor's 145 kB PNG tiles, answered in about
# 21 MB; 2048 records leave room for smaller tiles, and bound the decoded pixels of one request.
DEFAULT_MAX_RECORDS = 2048
DEFAULT_RESPONSE_MB = 256.0
MB = 1024 * 1024


class SettingsError(ValueError):
    """An environment variable or option with a value the server cannot use."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: records, and bytes of answer (both 413 beyond)."""

    max_records: int = DEFAULT_MAX_RECORDS
    max_response_bytes: int = int(DEFAULT_RESPONSE_MB * MB)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Limits:
        return cls(
            max_records=int(_number(env, "MAX_RECORDS", DEFAULT_MAX_RECORDS, minimum=1)),
            max_response_bytes=int(_number(env, "MAX_RESPONSE_MB", DEFAULT_RESPONSE_MB, minimum=0.001) * MB),
        )


def max_batch_size(env: Mapping[str, str] = os.environ) -> int:
    """MAX_BATCH_SIZE: tiles per forward pass; 1 turns dynamic batching off."""
    return int(_number(env, "MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE, minimum=1))


@dataclass(frozen=True)
class Settings:
    model_dir: Path = DEFAULT_MODEL_DIR
    host: str = "0.0.0.0"
    port: int = 8080
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE  # tiles per forward pass; 1 turns dynamic batching off
    max_batch_wait_ms: float = 5.0  # how long a forward waits for more tiles once it has one
    max_body_bytes: int = int(DEFAULT_BODY_MB * MB)
    limits: Limits = field(default_factory=Limits)
    decode_workers: int = 2  # threads decoding requests (JSON, base64, PNG)
    graceful_timeout_s: float = 30.0
    read_timeout_s: float = 20.0  # a connection that stops sending mid-request is dropped after this
    simulated_forward_ms: tuple[float, float] | None = None  # benchmarks only
    simulated_poison_slide: str | None = None  # soak and tests only: tiles of this slide fail their forward

    @classmethod
    def load(
        cls, env: Mapping[str, str] = os.environ, *, model_dir: Path | None = None, port: int | None = None
    ) -> Settings:
        """--model-dir, else /opt/ml/model; --port, else SAGEMAKER_BIND_TO_PORT, else 8080; the rest from env."""
        body_mb = _number(env, "MAX_BODY_MB", _number(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", DEFAULT_BODY_MB))
        return cls(
            model_dir=model_dir or DEFAULT_MODEL_DIR,
            host=env.get("SERVER_HOST", "0.0.0.0"),
            port=port if port is not None else int(_number(env, "SAGEMAKER_BIND_TO_PORT", 8080, minimum=1)),
            max_batch_size=max_batch_size(env),
            max_batch_wait_ms=_number(env, "MAX_BATCH_WAIT_MS", 5.0, minimum=0),
            max_body_bytes=int(body_mb * MB),
            limits=Limits.from_env(env),
            decode_workers=int(_number(env, "DECODE_WORKERS", os.cpu_count() or 1, minimum=1)),
            graceful_timeout_s=_number(env, "GRACEFUL_TIMEOUT_S", 30.0, minimum=0),
            read_timeout_s=_number(env, "READ_TIMEOUT_S", 20.0, minimum=0.1),
            simulated_forward_ms=_simulated(env.get("SIMULATED_FORWARD_MS")),
            simulated_poison_slide=env.get("SIMULATED_POISON_SLIDE") or None,
        )


def _number(env: Mapping[str, str], name: str, default: float, minimum: float = 0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def _simulated(raw: str | None) -> tuple[float, float] | None:
    """SIMULATED_FORWARD_MS=A,B: each forward also waits A + B x tiles ms, GIL released (benchmarks only)."""
    if not raw:
        return None
    try:
        fixed, per_tile = (float(part) for part in raw.split(","))
    except ValueError:
        raise SettingsError(f"SIMULATED_FORWARD_MS={raw!r} must be two numbers, A,B") from None
    return fixed, per_tile

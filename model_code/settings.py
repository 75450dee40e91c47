"""Server settings from the command line and the environment, checked once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from model_code.inference import DEFAULT_MAX_BATCH_SIZE

DEFAULT_MODEL_DIR = Path("/opt/ml/model")
DEFAULT_BODY_MB = 6.0  # SageMaker real-time InvokeEndpoint limit


class SettingsError(ValueError):
    """An environment variable or option with a value the server cannot use."""


@dataclass(frozen=True)
class Settings:
    model_dir: Path = DEFAULT_MODEL_DIR
    host: str = "0.0.0.0"
    port: int = 8080
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE  # tiles per forward pass; 1 turns dynamic batching off
    max_batch_wait_ms: float = 5.0  # how long a forward waits for more tiles once it has one
    max_body_bytes: int = int(DEFAULT_BODY_MB * 1024 * 1024)
    decode_workers: int = 2  # threads decoding requests (JSON, base64, PNG)
    graceful_timeout_s: float = 30.0
    simulated_forward_ms: tuple[float, float] | None = None  # benchmarks only

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
            max_batch_size=int(_number(env, "MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE, minimum=1)),
            max_batch_wait_ms=_number(env, "MAX_BATCH_WAIT_MS", 5.0, minimum=0),
            max_body_bytes=int(body_mb * 1024 * 1024),
            decode_workers=int(_number(env, "DECODE_WORKERS", os.cpu_count() or 1, minimum=1)),
            graceful_timeout_s=_number(env, "GRACEFUL_TIMEOUT_S", 30.0, minimum=0),
            simulated_forward_ms=_simulated(env.get("SIMULATED_FORWARD_MS")),
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

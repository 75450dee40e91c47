"""Server settings from the command line and the environment, checked once at start.

The handler's own limits (`max_batch_size`, `Limits`) are read by the same functions, so that
`inference.py` running alone under AWS's toolkit honours the same variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_MODEL_DIR = Path("/opt/ml/model")
DEFAULT_BODY_MB = 6.0  # SageMaker real-time InvokeEndpoint limit
DEFAULT_MAX_BATCH_SIZE = 32
# A 100 MB batch-transform request holds about 690 of the vendor's 145 kB PNG tiles, answered in about
# 21 MB; 2048 records leave room for smaller tiles, and bound the decoded pixels of one request.
DEFAULT_MAX_RECORDS = 2048
# Bytes of answer per request, counted before any answer is built (records.check_answer_size). 256 MB by
# default: batch transform (a request of up to 100 MB: 690 h1 tiles answer 21 MB, 100 tissue-seg tiles 100 MB),
# async (the answer goes to S3) and on-premise, where it bounds the memory one request may take. A real-time
# endpoint's answer must fit InvokeEndpoint's 6 MB: the stack sets MAX_RESPONSE_MB to that.
DEFAULT_RESPONSE_MB = 256.0
REALTIME_RESPONSE_MB = 6.0
DEFAULT_SLIDE_MB = 1024.0  # a whole-slide body, streamed to a temporary file
MB = 1024 * 1024
MIN_TOKEN_CHARS = 16
AUTH_OPENABLE = ("metrics", "docs")  # what AUTH_OPEN may leave open when tokens are configured


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


@dataclass(frozen=True)
class Auth:
    """Bearer-token authentication of the on-premise API: on when a token is configured, off by default.

    AUTH_TOKENS holds tokens separated by commas; AUTH_TOKENS_FILE names a file of one token a line (re-read
    when it changes, for rotation); both may be given. AUTH_OPEN=metrics,docs leaves those open. Ignored
    on SageMaker, where IAM guards InvokeEndpoint: `sagemaker` is true where SAGEMAKER_HOSTED is set (the
    CDK stack sets it) or SAGEMAKER_REGION is (the SageMaker Python SDK's models set it).
    """

    tokens: tuple[str, ...] = ()
    tokens_file: Path | None = None
    open: frozenset[str] = frozenset()
    sagemaker: bool = False

    @property
    def configured(self) -> bool:
        return bool(self.tokens) or self.tokens_file is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Auth:
        tokens = parse_tokens(env.get("AUTH_TOKENS", "").split(","), "AUTH_TOKENS")
        path = env.get("AUTH_TOKENS_FILE") or None
        if path is not None:
            read_tokens(Path(path))  # a missing, empty or malformed file stops the server at start
        opened = {part.strip() for part in env.get("AUTH_OPEN", "").split(",") if part.strip()}
        if unknown := opened - set(AUTH_OPENABLE):
            raise SettingsError(f"AUTH_OPEN names {', '.join(sorted(unknown))}; it may name {', '.join(AUTH_OPENABLE)}")
        sagemaker = env.get("SAGEMAKER_HOSTED", "") not in ("", "0") or "SAGEMAKER_REGION" in env
        return cls(tuple(tokens), Path(path) if path else None, frozenset(opened), sagemaker)


def read_tokens(path: Path) -> list[str]:
    """The tokens of a file, one a line (blank lines and lines starting with # ignored); at least one."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"AUTH_TOKENS_FILE {path} cannot be read: {type(exc).__name__}") from None
    tokens = parse_tokens([line for line in lines if not line.strip().startswith("#")], f"AUTH_TOKENS_FILE {path}")
    if not tokens:
        raise SettingsError(f"AUTH_TOKENS_FILE {path} holds no token")
    return tokens


def parse_tokens(parts: list[str], source: str) -> list[str]:
    """Tokens checked for what can be sent in a header and guessed with difficulty; never quoted in errors."""
    tokens = []
    for number, part in enumerate((part.strip() for part in parts if part.strip()), start=1):
        if len(part) < MIN_TOKEN_CHARS:
            raise SettingsError(f"{source}: token {number} has {len(part)} characters; use at least {MIN_TOKEN_CHARS}")
        if not all("!" <= char <= "~" for char in part):
            raise SettingsError(
                f"{source}: token {number} has a character other than visible ASCII (e.g. `openssl rand -hex 32`)"
            )
        tokens.append(part)
    return tokens


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
    max_slide_bytes: int = int(DEFAULT_SLIDE_MB * MB)
    limits: Limits = field(default_factory=Limits)
    # threads parsing requests (JSON), and processes decoding their tiles (base64, PNG): two per core
    decode_workers: int = field(default_factory=lambda: default_decode_workers())
    slide_read_threads: int = field(default_factory=lambda: default_slide_read_threads())  # while the forward runs
    max_queued_slides: int = 4  # slides received or running at once (one runs, the rest wait on disk)
    graceful_timeout_s: float = 30.0
    read_timeout_s: float = 20.0  # a connection that stops sending mid-request is dropped after this
    auth: Auth = field(default_factory=Auth)

    @classmethod
    def load(
        cls, env: Mapping[str, str] = os.environ, *, model_dir: Path | None = None, port: int | None = None
    ) -> Settings:
        """--model-dir, else /opt/ml/model; --port, else SAGEMAKER_BIND_TO_PORT, else 8080; the rest from env."""
        body_mb = _number(env, "MAX_BODY_MB", _number(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", DEFAULT_BODY_MB))
        default = _defaults(cls)
        return cls(
            model_dir=model_dir or DEFAULT_MODEL_DIR,
            host=env.get("SERVER_HOST", default["host"]),
            port=port if port is not None else int(_number(env, "SAGEMAKER_BIND_TO_PORT", default["port"], minimum=1)),
            max_batch_size=max_batch_size(env),
            max_batch_wait_ms=_number(env, "MAX_BATCH_WAIT_MS", default["max_batch_wait_ms"], minimum=0),
            max_body_bytes=int(body_mb * MB),
            max_slide_bytes=int(_number(env, "MAX_SLIDE_MB", DEFAULT_SLIDE_MB, minimum=0.001) * MB),
            limits=Limits.from_env(env),
            decode_workers=int(_number(env, "DECODE_WORKERS", default["decode_workers"], minimum=1)),
            slide_read_threads=int(_number(env, "SLIDE_READ_THREADS", default["slide_read_threads"], minimum=1)),
            max_queued_slides=int(_number(env, "MAX_QUEUED_SLIDES", default["max_queued_slides"], minimum=1)),
            graceful_timeout_s=_number(env, "GRACEFUL_TIMEOUT_S", default["graceful_timeout_s"], minimum=0),
            read_timeout_s=_number(env, "READ_TIMEOUT_S", default["read_timeout_s"], minimum=0.1),
            auth=Auth.from_env(env),
        )


def _defaults(settings: type[Settings]) -> dict[str, Any]:
    """Each field's one default (its default_factory called), for the environment's fallbacks."""
    return {
        f.name: f.default_factory() if f.default_factory is not MISSING else f.default
        for f in fields(settings)
        if f.init
    }


def default_decode_workers() -> int:
    """Two per core. A worker waits while the thread that called it pipes the record and parses the next
    request under the server's GIL; one per core left them idle 60% of the time (docs/performance.md, item 10)."""
    return 2 * (os.cpu_count() or 1)


def default_slide_read_threads() -> int:
    """Half the cores, at least 2. Reader threads hold the GIL between OpenSlide calls, and with one per
    core the forward pass waits for it: on an H200 with 16 cores (ViT-g, a 1,116-tile 40x slide) 16 readers
    gave 303-323 tiles/s and 8 readers 346-402 (6: 320-355, 4: 285-297); on 2 cores this keeps 2."""
    return max(2, (os.cpu_count() or 2) // 2)


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

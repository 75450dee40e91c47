"""Errors the handler raises: client errors (4xx, the caller's fault) and forward failures (503, retryable).

When AWS's `sagemaker-inference` toolkit is importable (AWS's PyTorch serving image), both also derive
from its `BaseInferenceToolkitError`, which is how that toolkit learns the HTTP status of an exception:
without it, every error would reach the caller as a 500.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

try:  # pragma: no cover - depends on the image the handler runs in
    from sagemaker_inference.errors import BaseInferenceToolkitError as _ToolkitError
except ImportError:  # our own image and local runs

    class _ToolkitError(Exception):  # type: ignore[no-redef]
        """Stand-in with the toolkit's attributes when the toolkit is absent."""


class ClientError(ValueError, _ToolkitError):
    """A request the caller must fix: names the record (index in the request) and the field."""

    def __init__(self, reason: str, *, field: str, status: int = 400, record: int | None = None):
        self.reason = reason
        self.field = field
        self.status_code = status
        self.record = record
        self.phrase = reason
        self.message = str(self)
        ValueError.__init__(self, self.message)

    def __str__(self) -> str:
        where = f"record {self.record}, " if self.record is not None else ""
        return f"{where}field '{self.field}': {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole, as decoding processes send it back
        return functools.partial(ClientError, field=self.field, status=self.status_code, record=self.record), (
            self.reason,
        )

    def at(self, record: int) -> ClientError:
        """The same error, located at a record index."""
        return ClientError(self.reason, field=self.field, status=self.status_code, record=record)

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": str(self),
            "status": self.status_code,
            "field": self.field,
            "reason": self.reason,
            "record": self.record,
        }


class ForwardError(RuntimeError, _ToolkitError):
    """The forward pass itself failed (device error, out of memory): the request may be retried."""

    def __init__(self, model: str, cause: BaseException):
        self.model = model
        self.status_code = 503
        self.phrase = "Service Unavailable"
        self.message = f"forward pass of model '{model}' failed: {type(cause).__name__}: {cause}"
        RuntimeError.__init__(self, self.message)

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status_code, "model": self.model, "retryable": True}


LOADING = "the models are still loading"


def unavailable(reason: str) -> dict[str, Any]:
    """The body of a 503 the server answers before any record is read (models loading, slide queue full)."""
    return {"error": reason, "status": 503}


# What one record ends as: its answer, its client error, or the forward pass's failure.
Result = dict[str, Any] | ClientError | ForwardError


class ArtifactError(RuntimeError):
    """A model artifact that is incomplete, tampered with, or inconsistent with the catalogue."""


def invalid_fields(exc: ValidationError, whole: str) -> list[tuple[str, str, str]]:
    """A pydantic error as (field, pydantic's error type, reason) per problem: the field dotted (`whole` when the
    problem is the whole object), the reason without pydantic's "Value error, " prefix."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or whole
        problems.append((field, error["type"], error["msg"].removeprefix("Value error, ")))
    return problems

"""The SageMaker handler (`input_fn`, `predict_fn`, `output_fn`) called in this process, as the toolkit calls it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson

from kit.endpoints.samples import wire_record
from model_code.inference import Models, input_fn, model_fn, output_fn, predict_fn


def invoke(
    models: Models, payload: object, content_type: str = "application/json", accept: str = "application/json"
) -> tuple[bytes, str]:
    """The answer and its content type for `payload` (bytes as they are, anything else as JSON)."""
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    out, out_type = output_fn(predict_fn(input_fn(body, content_type), models), accept)
    return out, out_type


def invoke_json(models: Models, payload: object) -> Any:
    return orjson.loads(invoke(models, payload)[0])


def embed(model_dir: Path, model: str, png: bytes) -> np.ndarray:
    """`model`'s embedding of the tile, by the models loaded from `model_dir`."""
    return np.array(invoke_json(model_fn(model_dir), wire_record(model, "embedding", png))["output"], dtype=np.float32)

"""Options of a slide request: from `X-Amzn-SageMaker-Custom-Attributes` (`key=value;key=value`, what
SageMaker async and batch transform pass through) and, on the local server, query parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model_code.errors import ClientError

ATTRIBUTES_HEADER = "x-amzn-sagemaker-custom-attributes"


class SlideOptions(BaseModel):
    """What to compute for a slide; None means the model's own value (or, for `model`, the endpoint's encoder)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="model to run; default: the endpoint's one model besides tissue-seg")
    mode: Literal["embedding", "prediction", "prediction_with_embedding"] = "embedding"
    mpp: float | None = Field(None, gt=0, le=64, description="um/px the tiles are cut at; default: the model's (0.5)")
    tile_size: int | None = Field(
        None, ge=16, le=4096, description="tile side in pixels at `mpp`; default: the model's"
    )
    min_tissue: float = Field(0.5, ge=0, le=1, description="keep a tile when its tissue ratio reaches this")
    format: Literal["h5", "zarr"] = "h5"
    dtype: Literal["float16", "float32"] = "float16"
    slide_mpp: float | None = Field(None, gt=0, le=64, description="um/px of level 0, for slides without it")
    slide_name: str | None = Field(None, max_length=256, description="recorded in the output's attributes")


def parse_attributes(text: str | None) -> dict[str, str]:
    """`model=h1;mpp=0.5` (`,` also separates) -> {"model": "h1", "mpp": "0.5"}; a pair without `=` is refused."""
    pairs: dict[str, str] = {}
    for part in (text or "").replace(",", ";").split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ClientError(f"'{part.strip()}' is not key=value", field="X-Amzn-SageMaker-Custom-Attributes")
        pairs[key.strip()] = value.strip()
    return pairs


def slide_options(headers: Mapping[str, str], query: Mapping[str, str]) -> SlideOptions:
    """The options of a request: custom attributes, then query parameters (which win)."""
    raw = {**parse_attributes(headers.get(ATTRIBUTES_HEADER)), **query}
    try:
        return SlideOptions.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "options"
        known = ", ".join(SlideOptions.model_fields)
        reason = f"unknown option (known: {known})" if first["type"] == "extra_forbidden" else first["msg"]
        raise ClientError(reason, field=field) from None

"""Options of a slide request: from `X-Amzn-SageMaker-Custom-Attributes` (`key=value;key=value`, what
SageMaker async and batch transform pass through) and, on the local server, query parameters."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from model_code.errors import ClientError, invalid_fields
from model_code.routes import check_route

ATTRIBUTES_HEADER = "x-amzn-sagemaker-custom-attributes"
MIN_MPP, MAX_MPP = 0.05, 64.0  # um/px: finer than any scanner's level 0, coarser than any tile worth embedding


class SlideOptions(BaseModel):
    """What to compute for a slide; None means the model's own value (or, for `model`, the endpoint's encoder)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, max_length=64, description="model to run; default: the endpoint's one model besides tissue-seg"
    )
    mode: Literal["embedding", "prediction", "prediction_with_embedding"] = "embedding"
    mpp: float | None = Field(
        None, ge=MIN_MPP, le=MAX_MPP, description="um/px the tiles are cut at; default: the model's (0.5)"
    )
    tile_size: int | None = Field(
        None, ge=16, le=4096, description="tile side in pixels at `mpp`; default: the model's"
    )
    min_tissue: float = Field(0.5, ge=0, le=1, description="keep a tile when its tissue ratio reaches this")
    format: Literal["h5", "zarr"] = "h5"
    layout: Literal["trident", "stamp"] = Field(
        "trident",
        description="the h5 file's layout: trident (TRIDENT, CLAM) or stamp (STAMP); zarr is the vendor SDK's",
    )
    dtype: Literal["float16", "float32"] = "float16"
    slide_mpp: float | None = Field(None, ge=MIN_MPP, le=MAX_MPP, description="um/px of level 0, for slides without it")
    on_bad_tile: Literal["skip", "fail"] = Field(
        "skip", description="a tile that cannot be decoded: left out and named in skipped_coords, or fail the slide"
    )
    slide_name: str | None = Field(
        None, max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$", description="recorded in the output's attributes"
    )

    @field_validator("layout")
    @classmethod
    def _layout_of_h5(cls, layout: str, info: ValidationInfo) -> str:
        if info.data.get("format") == "zarr" and layout != "trident":
            raise ValueError(f"{layout} is an h5 layout; format=zarr is the vendor SDK's own")
        return layout


def parse_attributes(text: str | None) -> list[tuple[str, str]]:
    """`model=h1;mpp=0.5` (`,` also separates) -> [("model", "h1"), ("mpp", "0.5")]; a pair without `=` is refused,
    and so is a character SageMaker does not carry there (it allows visible ASCII only; the HTTP header arrives as
    latin-1, so a UTF-8 slide name would be stored garbled)."""
    if text and not (text.isascii() and text.replace("\t", " ").isprintable()):  # a tab is header whitespace
        odd = next(c for c in text if not (c.isascii() and (c.isprintable() or c == "\t")))
        raise ClientError(
            f"holds {odd!r}: SageMaker carries visible ASCII only here; give a non-ASCII slide_name in the query "
            "string (percent-encoded UTF-8) or an ASCII one",
            field="X-Amzn-SageMaker-Custom-Attributes",
        )
    pairs: list[tuple[str, str]] = []
    for part in (text or "").replace(",", ";").split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ClientError(f"'{part.strip()}' is not key=value", field="X-Amzn-SageMaker-Custom-Attributes")
        pairs.append((key.strip(), value.strip()))
    return pairs


def slide_options(
    headers: Mapping[str, str], query: Iterable[tuple[str, str]], route: Mapping[str, str] | None = None
) -> SlideOptions:
    """The options of a request: custom attributes, then query parameters (which win), then the REST route's
    model and mode, which fill in or must agree. An option given twice in one place is refused."""
    raw = _unique(parse_attributes(headers.get(ATTRIBUTES_HEADER)), "X-Amzn-SageMaker-Custom-Attributes")
    raw.update(_unique(query, "query"))
    check_route(raw, route or {})
    raw.update(route or {})
    try:
        return SlideOptions.model_validate(raw)
    except ValidationError as exc:
        field, kind, reason = invalid_fields(exc, "options")[0]
        if kind == "extra_forbidden":
            reason = f"unknown option (known: {', '.join(SlideOptions.model_fields)})"
        raise ClientError(reason, field=field) from None


def _unique(pairs: Iterable[tuple[str, str]], where: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, value in pairs:
        if key in options:
            raise ClientError(f"is given twice in the {where}", field=key)
        options[key] = value
    return options

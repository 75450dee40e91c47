"""Request bodies to decoded records: JSON / JSON-lines parsing, field validation, tile decoding.

Everything here is per record and CPU-only, so the server can run it in a worker pool while the
accelerator runs forward passes. A problem with one record is returned in that record's place as a
`ClientError`; only a body that cannot be split into records at all raises.
"""

from __future__ import annotations

import binascii
import io
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import imagecodecs
import numpy as np
import orjson
import pybase64  # SIMD base64: 60x the standard library's speed, which held the GIL 20% of the time
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model_code.catalogue import (
    ECHO_FIELDS,
    EMBEDDING,
    METADATA,
    MODELS,
    PREDICTION,
    PREDICTION_WITH_EMBEDDING,
    canonical_name,
)
from model_code.errors import ClientError, invalid_fields
from model_code.routes import check_route

JSON = "application/json"
JSONLINES = "application/jsonlines"
JSONLINES_TYPES = frozenset({JSONLINES, "application/x-jsonlines", "application/jsonl", "application/x-ndjson"})
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP")

Layout = Literal["object", "list", "lines"]
# JSON allows integers of any size; the answer echoes them, and orjson (like most clients) stops at 64 bits.
# Strict: a string, a boolean or 5.0 is refused by name rather than echoed back as 5 or 1 (pydantic's lax mode).
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1, strict=True)]
Number = Annotated[float, Field(strict=True)]  # an int is one too; NaN reaches bulk_rna's own check, which names it
Ratio = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=1)]
Resolution = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0)]  # um/px
MODE_OUTPUTS = {EMBEDDING: (EMBEDDING,), PREDICTION: (PREDICTION,), PREDICTION_WITH_EMBEDDING: (PREDICTION, EMBEDDING)}
MIN_VALUE_BYTES = 4  # "0.0,": no number in an answer is written shorter
GENE_NOT_MEASURED = -1.0  # the vendor SDK's bulk-RNA value for a gene missing from the sample's file
BASE64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
BASE64_SPACE = "\n\r \t"  # line breaks and blanks, as MIME wraps base64 (RFC 2045)
WITHOUT_SPACE = str.maketrans("", "", BASE64_SPACE)
OBJECT_REPR = re.compile(r" ?<[^<>]* at 0x[0-9a-f]+>")  # an object's address: different in every answer


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


class WireRecord(BaseModel):
    """One tile request as the vendor's client sends it; unknown extra fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    image_data: str = ""
    bulk_rna: list[Number] | None = None
    slide_name: str | None = None
    x: Int64 | None = None
    y: Int64 | None = None
    width: Int64 | None = None
    height: Int64 | None = None
    tissue_ratio: Ratio | None = None
    patch_idx: Int64 | None = None
    resolution: Resolution | None = None
    model_name: str
    mode: Literal["embedding", "prediction", "prediction_with_embedding", "metadata"]


@dataclass(frozen=True)
class Record:
    """A validated, decoded tile request, ready to be stacked into a batch."""

    index: int  # position in its request
    model: str  # catalogue name (aliases resolved)
    mode: str
    echo: dict[str, Any]  # tile fields to echo, in the vendor's order
    pixels: np.ndarray | None  # H x W x 3 uint8; None for metadata
    bulk_rna: np.ndarray | None  # log1p of counts (-1 kept: gene not measured), float32; None when not sent


def _loads(text: bytes | str) -> Any:
    """orjson for speed; the standard library as a fallback so NaN/Infinity reach field validation.

    Raises ValueError (JSONDecodeError and UnicodeDecodeError are ValueErrors) for anything not JSON.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            return json.loads(text)
        except RecursionError:
            raise ValueError("nested too deeply") from None
        except ValueError as exc:
            if "integer string conversion" in str(exc):  # Python's own guard, whose advice is for the server
                raise ValueError(f"holds a number of over {sys.get_int_max_str_digits()} digits") from None
            raise


def check_content_type(content_type: str | None) -> str:
    """The media type, or a 415 naming the ones accepted."""
    kind = media_type(content_type)
    if kind != JSON and kind not in JSONLINES_TYPES:
        raise ClientError(
            f"unsupported content type '{content_type}'; send {JSON} or {JSONLINES}", field="content_type", status=415
        )
    return kind


def negotiate(accept: str | None, layout: Layout) -> str:
    """The answer's media type for an Accept header (q-values, lists, wildcards), or a 406.

    Without a preference the answer follows the request: JSON lines for JSON lines, else JSON.
    """
    natural = JSONLINES if layout == "lines" else JSON
    if accept is None or not accept.strip():
        return natural
    best: tuple[float, int, str] | None = None  # (q, specificity, type): the highest q, then the most specific
    for part in accept.split(","):
        kind, *params = (piece.strip() for piece in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        kind = kind.lower()
        if kind in JSONLINES_TYPES:
            choice, specificity = JSONLINES, 2
        elif kind == JSON:
            choice, specificity = JSON, 2
        elif kind in ("*/*", "application/*", "*"):
            choice, specificity = natural, 0 if kind != "application/*" else 1
        else:
            continue
        if q > 0 and (best is None or (q, specificity) > best[:2]):
            best = (q, specificity, choice)
    if best is None:
        raise ClientError(f"cannot answer in '{accept}'; accept {JSON} or {JSONLINES}", field="accept", status=406)
    return best[2]


def split_body(body: bytes | str, content_type: str | None, max_records: int) -> tuple[list[Any], Layout]:
    """Split a body into raw records (or the ClientError of a line that is not JSON) and its layout.

    More than `max_records` records is a 413 (MAX_RECORDS): each record's answer may be far larger than it.
    """
    kind = check_content_type(content_type)
    if not body or not body.strip():
        raise ClientError("the request body is empty", field="body")
    if kind == JSON:
        try:
            parsed = _loads(body)
        except ValueError as exc:
            raise ClientError(f"not valid JSON ({exc})", field="body") from None
        if isinstance(parsed, list):
            if not parsed:
                raise ClientError("the list of records is empty", field="body")
            _check_count(len(parsed), max_records)
            return parsed, "list"
        return [parsed], "object"
    lines = [line for line in (body if isinstance(body, bytes) else body.encode()).splitlines() if line.strip()]
    _check_count(len(lines), max_records)
    raw: list[Any] = []
    for line in lines:
        try:
            raw.append(_loads(line))
        except ValueError as exc:
            raw.append(ClientError(f"line is not valid JSON ({exc})", field="body", record=len(raw)))
    return raw, "lines"


def _check_count(count: int, max_records: int) -> None:
    if count > max_records:
        raise ClientError(
            f"{count} records is over the limit of {max_records} per request (MAX_RECORDS); split the request",
            field="body",
            status=413,
        )


def check_answer_size(
    raw: list[Any], overrides: dict[str, str] | None, max_bytes: int, metadata_bytes: Mapping[str, int] | None = None
) -> None:
    """A 413 when the answers to these records cannot fit `max_bytes`, found before anything is decoded or
    answered: a 6 MB list of blank tissue-seg tiles would need GBs, a list of M-Optimus metadata records (each
    answer holds its 25,376 gene IDs) hundreds of MB. A record whose model or mode is not a known name counts
    nothing here (it is refused when decoded)."""
    least = 0
    for item in raw:
        if isinstance(item, dict):
            fields = {**item, **(overrides or {})}
            least += least_answer_bytes(fields.get("model_name"), fields.get("mode"), metadata_bytes or {})
    if least > max_bytes:
        raise ClientError(
            f"the answers to these records take at least {least} bytes, over the limit of {max_bytes} "
            "(MAX_RESPONSE_MB); send fewer records per request",
            field="body",
            status=413,
        )


def least_answer_bytes(model_name: object, mode: object, metadata_bytes: Mapping[str, int]) -> int:
    """The fewest bytes a record's answer can take: each output value at its shortest ("0.0,"); a metadata
    answer at the size `metadata_bytes` gives for the model (the loaded models' own), else each of its genes
    at the shortest name ('"G",')."""
    name = canonical_name(model_name) if isinstance(model_name, str) else None
    if name is None or not isinstance(mode, str):
        return 0
    spec = MODELS[name]
    if mode == METADATA:  # gene lists: M-Optimus's input genes (its bulk RNA) and output genes (its prediction)
        genes = spec.bulk_rna_genes + spec.outputs.get(PREDICTION, 0) if spec.bulk_rna_genes else 0
        return metadata_bytes.get(name, MIN_VALUE_BYTES * genes)
    return MIN_VALUE_BYTES * sum(spec.outputs.get(output, 0) for output in MODE_OUTPUTS.get(mode, ()))


def decode_record(raw: Any, index: int, overrides: dict[str, str] | None = None) -> Record | ClientError:
    """Validate one raw record and decode its tile; errors are returned, located at `index`."""
    if isinstance(raw, ClientError):
        return raw
    try:
        return _decode(raw, index, overrides or {})
    except ClientError as exc:
        return exc.at(index)


def _decode(raw: Any, index: int, overrides: dict[str, str]) -> Record:
    if not isinstance(raw, dict):
        raise ClientError(f"a record must be a JSON object, got {type(raw).__name__}", field="body")
    if overrides:
        check_route(raw, overrides)
        raw = {**raw, **overrides}
    try:
        wire = WireRecord.model_validate(raw)
    except ValidationError as exc:
        field, _, reason = invalid_fields(exc, "body")[0]
        raise ClientError(reason, field=field) from None
    model = canonical_name(wire.model_name)
    if model is None:
        known = ", ".join(sorted(name for name in MODELS))
        raise ClientError(f"unknown model '{wire.model_name}' (known: {known})", field="model_name")
    spec = MODELS[model]
    if wire.mode not in spec.modes:
        raise ClientError(f"model '{model}' has no mode '{wire.mode}' (it has: {', '.join(spec.modes)})", field="mode")
    echo = {name: getattr(wire, name) for name in ECHO_FIELDS}
    if wire.mode == METADATA:
        return Record(index, model, wire.mode, echo, None, None)
    pixels = decode_tile(wire.image_data, spec.tile_size, model)
    bulk = bulk_rna_vector(wire.bulk_rna, model, spec.bulk_rna_genes)
    return Record(index, model, wire.mode, echo, pixels, bulk)


def decode_tile(image_data: str, tile_size: int, model: str) -> np.ndarray:
    """base64 image -> H x W x 3 uint8 array of the model's tile size.

    Pillow signals a hostile or broken file with many exception types (OSError, ValueError "Decompressed
    data too large", SyntaxError, TypeError and OverflowError from TIFF tags, struct.error, ...): every
    one of them is the image's fault, so every one is a 400 on `image_data`.
    """
    if not image_data:
        raise ClientError("is empty; send a base64-encoded PNG tile", field="image_data")
    sent = image_data
    if any(space in image_data for space in BASE64_SPACE):  # `base64` wraps at 76, as RFC 2045 allows
        image_data = image_data.translate(WITHOUT_SPACE)
    try:
        data = pybase64.b64decode(image_data, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(base64_problem(sent, len(image_data)), field="image_data") from None
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        if image.size != (tile_size, tile_size):  # checked before any pixel is decoded
            width, height = image.size
            raise ClientError(
                f"tile is {width}x{height} pixels; model '{model}' takes {tile_size}x{tile_size} tiles",
                field="image_data",
            )
        if image.mode not in ("RGB", "RGBA", "P"):
            raise ClientError(f"tile has colour mode {image.mode}; send an RGB image", field="image_data")
        pixels = png_pixels(data) if image.format == "PNG" else None
        if pixels is None:
            pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    except ClientError:
        raise
    except Image.DecompressionBombError:
        raise ClientError(
            f"declares an image far larger than a {tile_size}x{tile_size} tile", field="image_data"
        ) from None
    except Exception as exc:  # any Pillow failure is the input's (see the docstring)
        said = OBJECT_REPR.sub("", str(exc))  # "cannot identify image file <_io.BytesIO object at 0x7f...>"
        raise ClientError(
            f"is not a readable PNG, JPEG, TIFF or WebP image ({type(exc).__name__}: {said})", field="image_data"
        ) from None
    if pixels.shape != (tile_size, tile_size, 3):  # a lying header that Pillow tolerated
        raise ClientError(f"decoded to pixels of shape {pixels.shape}, not an RGB tile", field="image_data")
    return pixels


def base64_problem(text: str, length: int) -> str:
    """What is wrong with a string that standard base64 refuses, and where in it as sent; `length`: its
    characters but whitespace."""
    if text.startswith("data:"):
        return "starts with a data: URI prefix; send the base64 after its comma alone"
    bad = next((i for i, c in enumerate(text) if c not in BASE64_ALPHABET and c not in BASE64_SPACE), None)
    if bad is not None and text[bad] in "-_":
        return f"uses the URL-safe alphabet ({text[bad]!r} at character {bad}); send standard base64 (+ and /)"
    if bad is not None:
        return f"is not base64: {text[bad]!r} at character {bad}"
    return f"is not base64: {length} characters, not a multiple of 4 (its '=' padding is missing or extra)"


def png_pixels(data: bytes) -> np.ndarray | None:
    """An 8-bit PNG's RGB pixels by libpng (imagecodecs): the same pixels as Pillow's decoder in about two thirds
    of its CPU (`python -m bench.tile_decode`), where decoding is most of a tile's CPU. None for a 16-bit PNG, which
    Pillow decodes (its 8-bit reduction is what the models are served). Alpha is dropped, as Pillow's
    RGBA -> RGB does; a palette is expanded."""
    if data[12:16] != b"IHDR" or data[24] != 8:  # Pillow has read the header: IHDR first, then bit depth
        return None
    pixels = imagecodecs.png_decode(data)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        return None
    return np.ascontiguousarray(pixels[..., :3]) if pixels.shape[2] == 4 else pixels


def bulk_rna_vector(values: list[float] | None, model: str, genes: int) -> np.ndarray | None:
    """Raw counts -> log1p float32, checked for length, finiteness and sign.

    -1 is the vendor SDK's marker for a gene the sample did not measure: it reaches the model as -1
    (as the vendor's own server hands it over), every other value as log1p of the count.
    """
    if values is None:
        return None
    if not genes:
        raise ClientError(f"model '{model}' takes no bulk RNA; send null or leave it out", field="bulk_rna")
    counts = np.asarray(values, dtype=np.float64)
    if counts.shape != (genes,):
        raise ClientError(
            f"has {counts.size} values; model '{model}' takes {genes} counts, in its input_genes order",
            field="bulk_rna",
        )
    bad = np.flatnonzero(~np.isfinite(counts))
    if bad.size:
        raise ClientError(f"value {bad[0]} is not finite ({counts[bad[0]]})", field="bulk_rna")
    missing = counts == GENE_NOT_MEASURED
    negative = np.flatnonzero((counts < 0) & ~missing)
    if negative.size:
        raise ClientError(
            f"value {negative[0]} is negative ({counts[negative[0]]}); send raw counts, or -1 for a gene not measured",
            field="bulk_rna",
        )
    return np.where(missing, GENE_NOT_MEASURED, np.log1p(np.where(missing, 0.0, counts))).astype(np.float32)

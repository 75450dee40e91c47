"""No input makes the handler fail other than with a ClientError (a 4xx): property tests over arbitrary
bodies, arbitrary JSON and arbitrarily typed wire fields, run through input_fn, predict_fn and output_fn."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit.endpoints.samples import sample_png
from model_code.errors import ClientError
from model_code.inference import Models, input_fn, output_fn, predict_fn
from model_code.records import decode_tile
from tests.support.images import png_bytes, png_chunk, random_tile

CONTENT_TYPES = st.sampled_from(["application/json", "application/jsonlines"])
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def handle(models: Models, body: bytes, content_type: str) -> None:
    """The whole handler; only ClientError may escape, and every entry is an answer or a client error."""
    try:
        out, _ = output_fn(predict_fn(input_fn(body, content_type), models), None)
    except ClientError as exc:
        assert 400 <= exc.status_code < 500 and exc.field
        return
    text = out.decode()
    entries = (
        [json.loads(line) for line in text.splitlines()] if content_type.endswith("jsonlines") else json.loads(text)
    )
    for entry in entries if isinstance(entries, list) else [entries]:
        assert "output" in entry or "model_name" in entry or 400 <= entry["status"] < 500


@SETTINGS
@given(body=st.binary(max_size=3000), content_type=CONTENT_TYPES)
def test_arbitrary_bytes(models: Models, body: bytes, content_type: str) -> None:
    handle(models, body, content_type)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@SETTINGS
@given(value=JSON_VALUES, content_type=CONTENT_TYPES)
def test_arbitrary_json(models: Models, value: Any, content_type: str) -> None:
    handle(models, json.dumps(value).encode(), content_type)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


TILES = st.sampled_from(
    [_b64(sample_png(224)), _b64(sample_png(512)), _b64(png_bytes(random_tile(64))), _b64(b"GIF89a"), "", "%%"]
)
ANY_SCALAR = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
RECORDS = st.fixed_dictionaries(
    {
        "model_name": st.sampled_from(["h1", "m-optimus", "m-optimus-stx", "tissue-seg", "h0", "nope"]) | ANY_SCALAR,
        "mode": st.sampled_from(["embedding", "prediction", "prediction_with_embedding", "metadata"]) | ANY_SCALAR,
        "image_data": TILES | ANY_SCALAR,
    },
    optional={
        "bulk_rna": st.none() | st.lists(st.floats(), max_size=5) | st.just([1.0] * 19374) | ANY_SCALAR,
        "slide_name": ANY_SCALAR,
        "x": ANY_SCALAR,
        "y": ANY_SCALAR,
        "width": ANY_SCALAR,
        "height": ANY_SCALAR,
        "tissue_ratio": ANY_SCALAR,
        "patch_idx": ANY_SCALAR,
        "resolution": ANY_SCALAR,
    },
)


@SETTINGS
@given(records=st.lists(RECORDS, min_size=1, max_size=4), as_list=st.booleans(), content_type=CONTENT_TYPES)
def test_arbitrary_wire_fields(models: Models, records: list[dict[str, Any]], as_list: bool, content_type: str) -> None:
    if content_type.endswith("jsonlines"):
        body = b"\n".join(json.dumps(r).encode() for r in records)
    else:
        body = json.dumps(records if as_list else records[0]).encode()
    handle(models, body, content_type)


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("body", "content_type", "field"),
    [
        (b"[" * 100_000, "application/json", "body"),
        (b'{"a":' * 5000, "application/json", "body"),
        (
            orjson.dumps({"model_name": "h1", "mode": "embedding", "image_data": _b64(_png_header(30000, 30000))}),
            "application/json",
            "image_data",
        ),
        (json.dumps({"model_name": "h1", "mode": "embedding", "x": 2**70}).encode(), "application/json", "x"),
    ],
    ids=["deeply nested array", "deeply nested object", "decompression bomb header", "coordinate beyond 64 bits"],
)
def test_known_hostile_inputs_are_client_errors(models: Models, body: bytes, content_type: str, field: str) -> None:
    with pytest.raises(ClientError) as caught:
        input_fn(body, content_type)
    assert caught.value.status_code == 400 and caught.value.field == field


def _encoded(fmt: str) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(random_tile(224, seed=len(fmt))).save(buffer, format=fmt)
    return buffer.getvalue()


SEEDS = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "TIFF", "WEBP")}
MUTATIONS = st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 2**31), st.integers(0, 255)),
    min_size=1,
    max_size=6,
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]], cut: int | None) -> bytes:
    """Byte flips, insertions and deletions concentrated in the headers (the first 64 bytes), where a
    hostile file does its damage, plus anywhere; then an optional truncation."""
    out = bytearray(data)
    for kind, where, value in mutations:
        position = where % (64 if where % 2 else max(len(out), 1))
        if kind == "flip" and out:
            out[position % len(out)] ^= value or 1
        elif kind == "insert":
            out.insert(position, value)
        elif out:
            del out[position % len(out)]
    return bytes(out[:cut] if cut is not None else out)


@settings(max_examples=400, deadline=None)
@given(fmt=st.sampled_from(sorted(SEEDS)), mutations=MUTATIONS, cut=st.none() | st.integers(0, 4096))
def test_mutated_images_decode_or_are_400_on_image_data(
    fmt: str, mutations: list[tuple[str, int, int]], cut: int | None
) -> None:
    """A seeded mutation fuzz of the tile decoder: whatever Pillow raises on a damaged PNG, JPEG, TIFF or
    WebP (OSError, ValueError, SyntaxError, TypeError, OverflowError, struct.error, ...) is a 400."""

    data = _mutate(SEEDS[fmt], mutations, cut)
    try:
        pixels = decode_tile(_b64(data), 224, "h1")
    except ClientError as exc:
        assert (exc.status_code, exc.field) == (400, "image_data")
        return
    assert pixels.shape == (224, 224, 3) and pixels.dtype.name == "uint8"


def _png_with_text_bomb() -> bytes:
    png = png_bytes(random_tile(224))
    return png[:33] + png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"a" * 20_000_000)) + png[33:]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (_png_with_text_bomb(), "Decompressed data too large"),
        (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR\x00\x00", "Truncated"),
        (SEEDS["TIFF"][:8] + b"\xff" * 64, ""),
    ],
    ids=["png text-chunk bomb", "truncated IHDR", "tiff with garbage directory"],
)
def test_hostile_images_are_400_on_image_data(data: bytes, words: str) -> None:

    with pytest.raises(ClientError) as caught:
        decode_tile(_b64(data), 224, "h1")
    assert (caught.value.status_code, caught.value.field) == (400, "image_data") and words in caught.value.reason


@pytest.mark.parametrize(
    ("mangle", "words"),
    [
        (lambda b: "data:image/png;base64," + b, "data: URI prefix"),
        (lambda b: b[:8] + "_" + b[9:], "URL-safe alphabet ('_' at character 8)"),
        (lambda b: b[:-1], "not a multiple of 4"),
        (lambda b: b[:8] + "%" + b[9:], "'%' at character 8"),
    ],
    ids=["data-uri", "url-safe", "padding", "stray"],
)
def test_base64_refusals_say_what_is_wrong_and_where(mangle: Any, words: str) -> None:
    with pytest.raises(ClientError) as caught:
        decode_tile(mangle(_b64(sample_png(224))), 224, "h1")
    assert caught.value.field == "image_data" and words in caught.value.reason, caught.value.reason


def test_base64_wrapped_in_lines_decodes_as_rfc_2045_allows() -> None:
    encoded = _b64(sample_png(224))
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + "\n"
    assert (decode_tile(wrapped, 224, "h1") == decode_tile(encoded, 224, "h1")).all()
    with pytest.raises(ClientError) as caught:  # a stray character's place is counted in the text as sent
        decode_tile(wrapped[:200] + "*" + wrapped[200:], 224, "h1")
    assert "'*' at character 200" in caught.value.reason


def test_pillows_refusals_carry_no_object_address() -> None:
    with pytest.raises(ClientError) as caught:
        decode_tile(_b64(b"GIF89a" + bytes(40)), 224, "h1")
    assert " at 0x" not in caught.value.reason and "cannot identify image file" in caught.value.reason


@pytest.mark.parametrize(
    ("field", "value"),
    [("x", "5"), ("patch_idx", True), ("width", 224.0), ("tissue_ratio", True), ("tissue_ratio", -5.0),
     ("resolution", 0), ("bulk_rna", ["5"])],
)  # fmt: skip
def test_wrong_types_and_ranges_are_refused_not_coerced(field: str, value: Any) -> None:
    """pydantic's lax mode echoed "5" as 5 and true as 1; a ratio of -5 or a resolution of 0 is no tile's."""
    body = json.dumps({"model_name": "h1", "mode": "embedding", field: value}).encode()
    with pytest.raises(ClientError) as caught:
        input_fn(body, "application/json")
    assert caught.value.status_code == 400 and caught.value.field.startswith(field), caught.value.field


@pytest.mark.parametrize("field", ["x", "y", "width", "height", "patch_idx"])
def test_integers_beyond_64_bits_are_refused_at_validation(models: Models, field: str) -> None:
    body = b'{"model_name": "h1", "mode": "embedding", "%s": %s}' % (field.encode(), b"9" * 300)
    with pytest.raises(ClientError) as caught:
        input_fn(body, "application/json")
    assert (caught.value.status_code, caught.value.field) == (400, field)
    edge = json.dumps({"model_name": "h1", "mode": "metadata", field: 2**63 - 1}).encode()
    assert "model_name" in json.loads(output_fn(predict_fn(input_fn(edge, "application/json"), models), None)[0])


@pytest.mark.parametrize(
    "body",
    [
        b'{"model_name": "\\ud800", "mode": "embedding"}',
        b'{"model_name": "h1", "mode": "\\udfff"}',
        b'[{"model_name": "h1", "mode": "metadata", "slide_name": "a\\ud800b"}, {"model_name": "\\ud800x", "mode": 1}]',
        b'{"model_name": "h1", "mode": "embedding", "slide_name": "\\ud800", "image_data": "\\ud800"}',
    ],
    ids=["in model_name", "in mode", "echoed and quoted in a list", "in image_data"],
)
def test_lone_surrogates_never_break_serialisation(models: Models, body: bytes) -> None:
    """A lone surrogate is valid JSON text but not UTF-8: answers and errors quoting it must still serialise."""
    from model_code.inference import dumps

    try:
        out, _ = output_fn(predict_fn(input_fn(body, "application/json"), models), None)
    except ClientError as exc:
        assert exc.status_code == 400
        out = dumps(exc.to_dict())
    parsed = json.loads(out)
    assert "\ud800" in json.dumps(parsed) or "\udfff" in json.dumps(parsed) or parsed

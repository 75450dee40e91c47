"""The tile decoder's PNG path (libpng through imagecodecs) gives exactly Pillow's pixels, for every PNG
layout a client may send; what it does not take (16-bit, palettes under 8 bits) goes to Pillow as before."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from model_code.errors import ClientError
from model_code.records import decode_tile, png_pixels
from tests.support.images import png_bytes, png_chunk, random_tile

RGBA = np.random.default_rng(1).integers(0, 256, (224, 224, 4), dtype=np.uint8)


def _save(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _png16(pixels: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (Pillow writes none)."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _gamma() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add(b"gAMA", (45455).to_bytes(4, "big"))
    return info


LAYOUTS = {
    "rgb": _save(Image.fromarray(RGBA[..., :3])),
    "rgba": _save(Image.fromarray(RGBA)),
    "rgb interlaced": _save(Image.fromarray(RGBA[..., :3]), interlace=1),
    "rgb with tRNS": _save(Image.fromarray(RGBA[..., :3]), transparency=(1, 2, 3)),
    "rgb with gAMA": _save(Image.fromarray(RGBA[..., :3]), pnginfo=_gamma()),
    "palette": _save(Image.fromarray(RGBA[..., :3]).convert("P")),
    "palette 4-bit": _save(Image.fromarray(RGBA[..., :3]).convert("P", colors=16), bits=4),
    "rgb 16-bit": _png16(np.random.default_rng(2).integers(0, 65536, (224, 224, 3), dtype=np.uint16)),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_pixels_are_pillows(name: str) -> None:
    data = LAYOUTS[name]
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    pixels = decode_tile(base64.b64encode(data).decode(), 224, "h1")
    assert pixels.dtype == np.uint8 and pixels.flags.c_contiguous
    np.testing.assert_array_equal(pixels, expected)


def test_libpng_decodes_the_8_bit_layouts_and_leaves_the_rest_to_pillow() -> None:
    """So the parity above is the fast path's, not Pillow's agreeing with itself."""
    taken = {name for name, data in LAYOUTS.items() if png_pixels(data) is not None}
    assert taken == set(LAYOUTS) - {"rgb 16-bit", "palette 4-bit"}


def test_a_damaged_image_stream_is_400_on_image_data() -> None:
    """The header is whole (Pillow opens it), the pixel data is cut: libpng's error is the image's fault."""
    data = png_bytes(random_tile(224))
    with pytest.raises(ClientError) as caught:
        decode_tile(base64.b64encode(data[: len(data) // 2]).decode(), 224, "h1")
    assert (caught.value.status_code, caught.value.field) == (400, "image_data")
    assert "PngError" in caught.value.reason

"""Level 0 read from JPEG tiles (model_code/slides/jpeg_tiles.py) as a hostile client meets it: tiles that
libjpeg-turbo decodes one way through imagecodecs and another through OpenSlide, headers that hide their
frame's size, tiles OpenSlide refuses in the box checked at opening. Pixels must be OpenSlide's or an error
naming the body, never a 500 or a decoder allocating gigabytes."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import imagecodecs
import numpy as np
import openslide
import pytest
import tifffile

from kit.slides.synthetic import make_slide, write_svs
from model_code.slides.reader import Slide, SlideReadError
from tests.support.serving import Running
from tests.support.slides import post_slide, refused

CHECKED = (1, 2, 5, 6)  # the 4 x 3 tile slide's tiles in the box read at opening


@pytest.fixture(scope="module")
def svs(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 1024 x 768 px SVS of 256 px YCbCr JPEG tiles (4 x 3), colourful everywhere."""
    image = np.random.default_rng(0).integers(0, 4, (12, 16, 3), dtype=np.uint8) * 80 + 10
    image = np.kron(image, np.ones((64, 64, 1), np.uint8))
    return write_svs(tmp_path_factory.mktemp("jpeg") / "base.svs", image, 0.25, pyramid=False).read_bytes()


def with_tiles(slide: bytes, tiles: dict[int, bytes]) -> bytes:
    """`slide` with level 0's tiles at these indices replaced (appended, offsets and byte counts patched)."""
    data = bytearray(slide)
    with tifffile.TiffFile(io.BytesIO(slide)) as tiff:
        offsets, counts = tiff.pages[0].tags["TileOffsets"], tiff.pages[0].tags["TileByteCounts"]
    for index, jpeg in tiles.items():
        struct.pack_into("<I", data, offsets.valueoffset + 4 * index, len(data))
        struct.pack_into("<I", data, counts.valueoffset + 4 * index, len(jpeg))
        data += jpeg
    return bytes(data)


def tile_of(slide: bytes, index: int) -> bytes:
    with tifffile.TiffFile(io.BytesIO(slide)) as tiff:
        page = tiff.pages[0]
        return slide[page.dataoffsets[index] : page.dataoffsets[index] + page.databytecounts[index]]


def outcome(slide: Slide, box: tuple[int, int, int, int], reader: str) -> np.ndarray | None:
    """Level 0's pixels in `box` from the slide's reader or from OpenSlide's; None where it refuses them."""
    try:
        return slide._read(*box, *box[2:]) if reader == "slide" else slide._openslide(0, *box)
    except Exception as exc:
        assert isinstance(exc, (SlideReadError, openslide.OpenSlideError)), exc
        return None


def rgb_coded(side: int = 256) -> bytes:
    """A JPEG coded as RGB (Adobe's marker says so), not as the page's YCbCr."""
    tile = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return imagecodecs.jpeg8_encode(tile, level=90, colorspace="RGB", outcolorspace="RGB")


def twelve_bit() -> bytes:
    return imagecodecs.jpeg8_encode(np.full((256, 256, 3), 2000, np.uint16), level=90, bitspersample=12)


def hidden_frame(jpeg: bytes, side: int) -> bytes:
    """`jpeg` with a frame of `side` px that libjpeg reads, after a standalone RST0 marker, and its own frame
    where a reader taking RST0 for a segment lands (0xFFC0 bytes on: the bytes it takes for RST0's length)."""
    at = jpeg.index(b"\xff\xc0")
    frame = jpeg[at : at + 2 + int.from_bytes(jpeg[at + 2 : at + 4], "big")]
    huge = frame[:5] + side.to_bytes(2, "big") * 2 + frame[9:]
    head = b"\xff\xd8\xff\xd0" + huge
    gap = 4 + 0xFFC0 - len(head)
    return head + b"\xff\xfe" + gap.to_bytes(2, "big") + bytes(gap - 4) + frame + jpeg[2:at] + jpeg[at + len(frame) :]


@pytest.mark.parametrize(
    "jpeg",
    [rgb_coded(), twelve_bit(), None, None],
    ids=["rgb-coded", "12-bit", "cut-short", "checked-tiles-missing"],
)
def test_a_tile_decoded_its_own_way_reads_as_openslide_reads_it(
    svs: bytes, tmp_path: Path, jpeg: bytes | None, request: pytest.FixtureRequest
) -> None:
    """Was: the RGB-coded tile's colours 251 grey levels off, the 12-bit one's and the cut-short one's pixels
    made up where OpenSlide refuses them; and with the checked box's tiles missing, nothing was checked at all."""
    case = request.node.callspec.id
    tiles = {11: jpeg or tile_of(svs, 11)[:-100]}
    if case == "checked-tiles-missing":
        tiles = {index: b"" for index in CHECKED} | {11: rgb_coded()}
    path = tmp_path / "odd.svs"
    path.write_bytes(with_tiles(svs, tiles))
    for box in [(0, 0, 1024, 768), (800, 600, 100, 100), (100, 100, 500, 300)]:
        slide = Slide(path)  # a fresh one: after an error OpenSlide's handle gives only that error
        got, expected = outcome(slide, box, "slide"), outcome(slide, box, "openslide")
        slide.close()
        assert (got is None) == (expected is None), (box, expected is None and "OpenSlide refuses it")
        assert got is None or np.array_equal(got, expected), box


def test_a_standalone_marker_cannot_hide_a_huge_frame_from_the_size_check(svs: bytes, tmp_path: Path) -> None:
    """Was: the check took RST0 for a segment, saw the decoy 256 px frame and let libjpeg decode the real one
    (2000 px here; 65535 px, 12 GB, costs the same few kB)."""
    path = tmp_path / "hidden.svs"
    path.write_bytes(with_tiles(svs, {11: hidden_frame(tile_of(svs, 11), 2000)}))
    slide = Slide(path)
    with (
        mock.patch("imagecodecs.jpeg8_decode", wraps=imagecodecs.jpeg8_decode) as decode,
        pytest.raises(SlideReadError, match="JPEG frame None is not a 256 px tile"),
    ):
        slide.read(800, 600, 64, 64)
    assert decode.call_count == 0
    slide.close()


def test_a_checked_tile_openslide_refuses_leaves_level_0_to_it_and_leaks_nothing(svs: bytes, tmp_path: Path) -> None:
    """Was: OpenSlideError out of Slide(), a 500, and the slide's files left open."""
    path = tmp_path / "twelve.svs"
    path.write_bytes(with_tiles(svs, {1: twelve_bit()}))
    descriptors = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        slide = Slide(path)
        assert slide._tiles is None
        with pytest.raises(SlideReadError, match="precision 12"):
            slide.read(300, 10, 64, 64)
        slide.close()
    assert len(os.listdir("/proc/self/fd")) <= descriptors


@pytest.fixture(scope="module")
def tissue(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 1792 x 1344 px slide at 0.5 um/px (7 x 6 tiles), about two thirds tissue."""
    return make_slide(tmp_path_factory.mktemp("redteam-jpeg") / "half.svs", 0.5).read_bytes()


@pytest.mark.parametrize(
    ("hostile", "spared", "reason"),
    [
        (lambda tile: hidden_frame(tile, 2000), (9, 10, 16, 17), "JPEG frame None"),
        (lambda tile: twelve_bit(), (), "precision 12"),
        (lambda tile: tile[:-100], (), "Premature end"),
    ],
    ids=["hidden-frame", "12-bit", "cut-short"],
)
def test_hostile_level_0_tiles_are_a_400_naming_the_body_and_the_server_goes_on(
    running: Running, tissue: bytes, hostile: Callable[[bytes], bytes], spared: tuple[int, ...], reason: str
) -> None:
    """Every level-0 tile hostile but those `spared` (the box checked at opening): was a 500 for the 12-bit and
    cut-short ones (OpenSlide refusing the checked box), a decoder allocating what the hidden frame claims."""
    with tifffile.TiffFile(io.BytesIO(tissue)) as tiff:
        count = len(tiff.pages[0].dataoffsets)
    tiles = {index: hostile(tile_of(tissue, index)) for index in range(count) if index not in spared}
    assert reason in refused(post_slide(running, with_tiles(tissue, tiles), "model=h1"), "body")
    assert post_slide(running, tissue, "model=h1").status_code == 200

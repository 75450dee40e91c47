"""Level 0 read straight from a slide's JPEG tiles (model_code/slides/jpeg_tiles.py) equals OpenSlide's
pixels, and everything it does not cover still reads through OpenSlide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from kit.slides.synthetic import make_slide
from model_code.slides.jpeg_tiles import open_level0
from model_code.slides.reader import Slide, SlideReadError


@pytest.fixture(scope="module")
def svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0.25 um/px Aperio-style SVS (YCbCr JPEG tiles of 256 px; 3584 x 2688 px, so edge tiles are partial)."""
    return make_slide(tmp_path_factory.mktemp("jpeg") / "slide.svs", 0.25)


def test_regions_equal_openslides_across_tiles_edges_and_outside(svs: Path) -> None:
    slide = Slide(svs)
    assert slide._tiles is not None, "an Aperio SVS of JPEG tiles reads its level 0 directly"
    width, height = slide.geometry.width, slide.geometry.height
    rng = np.random.default_rng(0)
    boxes = [(int(x), int(y), 448, 448) for x, y in rng.integers(0, (width - 448, height - 448), (12, 2))]
    boxes += [(0, 0, 1, 1), (255, 255, 2, 2), (width - 300, height - 200, 448, 448), (-50, -70, 300, 300)]
    boxes += [(width + 10, 0, 64, 64), (100, 100, 3000, 37)]
    for box in boxes:
        np.testing.assert_array_equal(slide._pixels(0, *box), slide._openslide(0, *box), err_msg=str(box))
    slide.close()


def test_other_compressions_read_through_openslide(tmp_path: Path) -> None:
    path = tmp_path / "deflate.tif"
    image = np.random.default_rng(1).integers(0, 256, (600, 700, 3), dtype=np.uint8)
    tifffile.imwrite(path, image, tile=(256, 256), compression="zlib", photometric="rgb")
    slide = Slide(path, slide_mpp=0.5)
    assert slide._tiles is None and slide.vendor == "generic-tiff"
    np.testing.assert_array_equal(slide.read(100, 50, 224, 224), image[50:274, 100:324])
    slide.close()


def test_a_slide_whose_tiles_decode_differently_is_read_through_openslide(svs: Path) -> None:
    assert open_level0(svs, "aperio", lambda x, y, w, h: np.zeros((h, w, 3), np.uint8)) is None
    assert open_level0(svs, "hamamatsu", lambda x, y, w, h: np.zeros((h, w, 3), np.uint8)) is None


def test_a_corrupt_tile_is_a_read_error_naming_where(svs: Path, tmp_path: Path) -> None:
    data = bytearray(svs.read_bytes())
    with tifffile.TiffFile(svs) as tiff:
        page = tiff.pages[0]
        index = len(page.dataoffsets) - 1  # the last tile: the check at opening reads the middle ones
        offset, size = page.dataoffsets[index], page.databytecounts[index]
    data[offset : offset + size] = b"\0" * size
    assert_read_refused(data, tmp_path, (3500, 2600), r"pixels at \(3500, 2600\) cannot be decoded")


def test_a_tile_whose_jpeg_header_claims_a_huge_frame_is_refused_before_decoding(svs: Path, tmp_path: Path) -> None:
    """A frame header of 40000 x 40000 px in one tile's few bytes had the decoder allocate 4.5 GB."""
    data = bytearray(svs.read_bytes())
    with tifffile.TiffFile(svs) as tiff:
        page = tiff.pages[0]
        index = len(page.dataoffsets) - 2
        offset = page.dataoffsets[index]
    frame = data.index(b"\xff\xc0", offset)  # baseline SOF0: length, precision, height, width
    data[frame + 5 : frame + 9] = (40000).to_bytes(2, "big") * 2
    assert_read_refused(data, tmp_path, (3300, 2500), r"JPEG frame \(40000, 40000\) is not a 256 px tile")


def test_a_tile_claiming_gigabytes_is_refused_before_reading(svs: Path, tmp_path: Path) -> None:
    data = bytearray(svs.read_bytes())
    with tifffile.TiffFile(svs) as tiff:
        counts = tiff.pages[0].tags["TileByteCounts"]
        index = len(counts.value) - 2
        at = counts.valueoffset + index * (8 if counts.dtype == 16 else 4)
        width = 8 if counts.dtype == 16 else 4
    data[at : at + width] = (0x7FFFFFFF).to_bytes(width, "little" if data[:2] == b"II" else "big")
    assert_read_refused(data, tmp_path, (3300, 2500), "claims 2147483647 bytes")


def assert_read_refused(data: bytearray, tmp_path: Path, at: tuple[int, int], match: str) -> None:
    """The patched slide opens on the JPEG-tile path (its middle tiles are intact) and reading the 64 px box
    at `at` is a SlideReadError matching `match`."""
    path = tmp_path / "patched.svs"
    path.write_bytes(bytes(data))
    slide = Slide(path)
    try:
        assert slide._tiles is not None
        with pytest.raises(SlideReadError, match=match):
            slide.read(*at, 64, 64)
    finally:
        slide.close()

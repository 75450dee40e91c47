"""Level 0 of a JPEG-tiled TIFF slide (Aperio SVS, generic tiled TIFF) read straight from its tiles.

OpenSlide paints every region it reads at about 15 ns per pixel even when its tiles are cached (2.9 ms of
a 448 px region's 3.9 ms on one core here), which bounds 40x slides, whose model tiles are read at level 0.
For the common layout (level 0 a tiled TIFF page of baseline 8-bit RGB / YCbCr JPEG tiles) this reads the
tiles with tifffile, decodes them with imagecodecs' libjpeg-turbo (the GIL released), keeps recent tiles
in a bounded cache and copies the region out: 742 regions/s against OpenSlide's 200 (composited over
white) on one core, 1,249 against 387 on two (the 448 px level-0 regions of `bench.slides`' slide). A
slide gets this path only when its pixels equal OpenSlide's on a region across four tiles, checked when
it is opened, and a tile only when its JPEG is of a kind (`_header`) decoded there; anything else (other
levels, other compressions and vendors, a mismatch, a tile of another kind) reads through OpenSlide.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile

log = logging.getLogger("optimus.slides")

VENDORS = {"aperio", "generic-tiff"}  # OpenSlide drivers whose level 0 is the file's first TIFF page as it is
CACHE_BYTES = 96 << 20  # decoded tiles kept (at least 4, the most one region of up to a tile spans)
WHITE = 255
FRAMES = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn: baseline, progressive, lossless, arithmetic, ...
SEGMENTS = {0xC4, 0xCC, 0xDB, 0xDC, 0xDD, 0xFE}  # tables (Huffman, arithmetic, quantisation), DNL, DRI, comment
MAX_TILE_SIDE = 4096  # scanners write 240 to 1024 px tiles; larger ones (50 MB decoded) go through OpenSlide


class TileDecodeError(Exception):
    """A tile whose bytes cannot be decoded (truncated or corrupt file)."""


class JpegTiles:
    """Regions of level 0 as RGB uint8, white outside the image or where a tile is missing."""

    def __init__(self, path: Path, tiff: tifffile.TiffFile, reference: Callable[[int, int, int, int], np.ndarray]):
        self._tiff = tiff
        self._reference = reference
        self.kinds: set[bytes] = set()  # the tiles' JPEG kinds (`_header`) the check at opening decoded
        self.checked = False  # once set, a tile of another kind is read through `reference`
        self._page = page = tiff.pages.first
        self._fd = os.open(path, os.O_RDONLY)
        self.height, self.width = page.shape[:2]
        self._tile_h, self._tile_w = page.tilelength, page.tilewidth
        self._columns = -(-self.width // self._tile_w)
        self._cache: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._cache_tiles = max(4, CACHE_BYTES // (self._tile_h * self._tile_w * 3))
        self._max_bytes = 2 * self._tile_h * self._tile_w * 3 + (1 << 16)  # twice raw, and room for headers
        self._lock = threading.Lock()

    @property
    def tile_size(self) -> tuple[int, int]:
        return self._tile_w, self._tile_h

    def close(self) -> None:
        os.close(self._fd)
        self._tiff.close()

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The h x w box at level-0 pixel (x, y)."""
        out = np.full((h, w, 3), WHITE, dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, self.width), min(y + h, self.height)
        for row in range(y0 // self._tile_h, (y1 - 1) // self._tile_h + 1) if y1 > y0 and x1 > x0 else ():
            for col in range(x0 // self._tile_w, (x1 - 1) // self._tile_w + 1):
                tile = self._tile(row * self._columns + col)
                if tile is None:
                    continue
                left, top = col * self._tile_w, row * self._tile_h
                a, b = max(x0, left), max(y0, top)
                c, d = min(x1, left + tile.shape[1]), min(y1, top + tile.shape[0])
                out[b - y : d - y, a - x : c - x] = tile[b - top : d - top, a - left : c - left]
        return out

    def _tile(self, index: int) -> np.ndarray | None:
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        tile = self._load(index)
        with self._lock:
            self._cache[index] = tile
            if len(self._cache) > self._cache_tiles:
                self._cache.popitem(last=False)
        return tile

    def _load(self, index: int) -> np.ndarray | None:
        """Tile `index` decoded; None where it is missing (0 bytes: glass, white as OpenSlide shows it)."""
        size = int(self._page.databytecounts[index])
        if size > self._max_bytes:  # read as it claims, one tile could take gigabytes of memory
            raise TileDecodeError(f"tile {index} claims {size} bytes, more than {self._max_bytes} for a tile")
        if not size:
            return None
        data = os.pread(self._fd, size, int(self._page.dataoffsets[index]))
        if len(data) < size:
            raise TileDecodeError(f"tile {index} is truncated")
        header = _header(data)
        if header is None or header[0] != (self._tile_h, self._tile_w):
            # a header claiming 65535 x 65535 px in a few bytes would have the decoder allocate 12 GB
            frame = header and header[0]
            raise TileDecodeError(f"tile {index}'s JPEG frame {frame} is not a {self._tile_w} px tile")
        if self.checked and header[1] not in self.kinds:  # decodes its own way (colour transform, precision, ...)
            row, col = divmod(index, self._columns)
            return self._reference(col * self._tile_w, row * self._tile_h, self._tile_w, self._tile_h)
        self.kinds.add(header[1])
        try:
            decoded, _, _ = self._page.decode(data, index, jpegtables=self._page.jpegtables)
        except Exception as exc:  # imagecodecs' and tifffile's errors share no base class
            raise TileDecodeError(f"tile {index}: {exc}") from None
        if decoded is None:
            raise TileDecodeError(f"tile {index} decodes to nothing")
        return decoded[0]


def open_level0(path: Path, vendor: str, reference: Callable[[int, int, int, int], np.ndarray]) -> JpegTiles | None:
    """The tile reader when the file's level 0 qualifies and reads a box across four tiles exactly as
    `reference(x, y, w, h)` (OpenSlide) does; else None."""
    if vendor not in VENDORS:
        return None
    try:
        tiff = tifffile.TiffFile(path)
    except Exception:
        return None
    try:
        qualifies = _qualifies(tiff.pages.first)
    except Exception:
        qualifies = False
    if not qualifies:
        tiff.close()
        return None
    tiles = JpegTiles(path, tiff, reference)
    (tile_w, tile_h), columns, rows = (
        tiles.tile_size,
        tiles.width // tiles.tile_size[0],
        tiles.height // tiles.tile_size[1],
    )
    box = (max(columns // 2 * tile_w - tile_w // 2, 0), max(rows // 2 * tile_h - tile_h // 2, 0), tile_w, tile_h)
    try:
        same = np.array_equal(tiles.read(*box), reference(*box))
    except Exception:  # a tile either reader refuses: OpenSlide says why when it is read
        same = False
    if not same or not tiles.kinds:
        tiles.close()
        log.info("%s: level 0 read through OpenSlide (its JPEG tiles decode differently here)", path.name)
        return None
    tiles.checked = True
    return tiles


def _header(data: bytes) -> tuple[tuple[int, int], bytes] | None:
    """A JPEG stream's frame (height, width) and its kind: what besides its tables steers its decoding (frame
    and APPn segments, such as Adobe's colour transform, and its last two bytes: libjpeg pads a stream cut short
    with grey where OpenSlide refuses it). Read as libjpeg reads it: None for a stream with no frame before its
    scan, or with a marker this does not follow (a standalone marker, garbage, fill bytes)."""
    if data[:2] != b"\xff\xd8":
        return None
    at, frame, kind = 2, None, data[-2:]
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        if marker == 0xDA:  # the scan
            return (frame, kind) if frame is not None else None
        if marker in FRAMES and frame is None and length >= 8:
            frame = int.from_bytes(data[at + 5 : at + 7], "big"), int.from_bytes(data[at + 7 : at + 9], "big")
        elif not (0xE0 <= marker <= 0xEF or marker in SEGMENTS) or length < 2:
            return None
        if marker not in SEGMENTS:
            kind += data[at : at + 2 + length]
        at += 2 + length
    return None


def _qualifies(page: tifffile.TiffPage) -> bool:
    """A tiled page of 8-bit, 3-sample, interleaved JPEG tiles (the Aperio and generic TIFF layout) of at
    most MAX_TILE_SIDE px."""
    return (
        max(page.tilewidth, page.tilelength) <= MAX_TILE_SIDE
        and page.is_tiled
        and page.compression == tifffile.COMPRESSION.JPEG
        and page.samplesperpixel == 3
        and page.bitspersample == 8
        and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
        and page.tiledepth == 1
        and len(page.shape) == 3
        and len(page.dataoffsets) == len(page.databytecounts) >= _tile_count(page)
    )


def _tile_count(page: tifffile.TiffPage) -> int:
    return -(-page.shape[0] // page.tilelength) * -(-page.shape[1] // page.tilewidth)

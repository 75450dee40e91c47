"""Where the tissue is: tissue-seg over the slide at its own resolution (8 um/px), then the tile grid at
the model's resolution with each tile's tissue ratio (the fraction of its area the mask marks)."""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from model_code.errors import ClientError
from model_code.records import Record
from model_code.runners import Runner
from model_code.slides.reader import Geometry, Slide, SlideReadError

log = logging.getLogger("optimus.slides")

Read = Callable[[tuple[int, int]], np.ndarray]
MAX_TILE_UM = 8192  # a tile's side: 8 mm, far above any model's field of view (224 px at 0.5 um/px: 112 um)
MAX_GRID_TILES = 4_000_000  # a 100 mm square slide in 224 px tiles at 0.25 um/px has 3.2 million


@dataclass(frozen=True)
class Grid:
    """Square tiles of `extent` level-0 pixels on a stride of `extent`, each read as `size` pixels."""

    coords: np.ndarray  # [N, 2] int64 level-0 x, y of each tile's top-left corner
    extent: float
    size: int


def grid(geometry: Geometry, mpp: float, size: int) -> Grid:
    """Every whole tile of `size` pixels at `mpp` um/px that fits in the slide, row by row; a tile over
    MAX_TILE_UM or a grid over MAX_GRID_TILES is refused."""
    if size * mpp > MAX_TILE_UM:
        raise ClientError(
            f"tiles of {size} px at {mpp:g} um/px span {size * mpp:g} um, over {MAX_TILE_UM} um", field="tile_size"
        )
    extent = size * mpp / geometry.mpp
    cols, rows = int(geometry.width // extent), int(geometry.height // extent)
    if cols * rows > MAX_GRID_TILES:
        raise ClientError(
            f"tiles of {size} px at {mpp:g} um/px lay a grid of {cols * rows} tiles on this slide, over "
            f"{MAX_GRID_TILES}; raise tile_size or mpp",
            field="tile_size",
        )
    ys, xs = np.mgrid[0:rows, 0:cols]
    coords = np.stack([np.round(xs.ravel() * extent), np.round(ys.ravel() * extent)], axis=1).astype(np.int64)
    return Grid(coords, extent, size)


class SlideCancelled(Exception):
    """The slide's client went away: its reading and forward passes stop at the next chunk."""


class Chunk(NamedTuple):
    """Tiles `start` onwards, read: the pixels of those that could be, and why each other one could not."""

    start: int
    pixels: np.ndarray  # [n, H, W, 3] uint8, in order, the tiles that could not be read left out
    failed: dict[int, str]  # index (in the whole list) of each tile that could not be read -> why


def chunks(
    read: Read, coords: np.ndarray, size: int, pool: Executor, prefetch: int, stop: threading.Event, skip: bool
) -> Iterator[Chunk]:
    """Chunks of `size` tiles in order, read in `pool`, at most `prefetch` chunks ahead; a tile whose pixels
    cannot be decoded is left out of its chunk when `skip`, else its SlideReadError raised. SlideCancelled
    (reads not yet started are dropped) once `stop` is set."""
    pending: deque[Future[Chunk]] = deque()
    try:
        for start in range(0, len(coords), size):
            pending.append(pool.submit(_read_chunk, read, coords[start : start + size], start, skip))
            if len(pending) > prefetch:
                yield _next(pending, stop)
        while pending:
            yield _next(pending, stop)
    finally:
        for future in pending:
            future.cancel()


def _next(pending: deque[Future[Chunk]], stop: threading.Event) -> Chunk:
    if stop.is_set():
        raise SlideCancelled()
    return pending.popleft().result()


def _read_chunk(read: Read, coords: np.ndarray, start: int, skip: bool) -> Chunk:
    tiles, failed = [], {}
    for i, (x, y) in enumerate(coords, start):
        try:
            tiles.append(read((int(x), int(y))))
        except SlideReadError as exc:
            if not skip:
                raise
            failed[i] = exc.reason
    return Chunk(start, np.stack(tiles) if tiles else np.empty((0, 0, 0, 3), np.uint8), failed)


def records(pixels: np.ndarray, model: str, mode: str, bulk_rna: np.ndarray | None = None) -> list[Record]:
    """The runners' input: one Record per tile, as the tile API decodes them."""
    return [Record(i, model, mode, {}, tile, bulk_rna) for i, tile in enumerate(pixels)]


def tissue_mask(
    slide: Slide, seg: Runner, pool: Executor, prefetch: int, stop: threading.Event, skip: bool
) -> tuple[np.ndarray, float, str]:
    """The slide's tissue mask (uint8 {0, 1}) at tissue-seg's resolution, that resolution (um/px), and why
    no region could be decoded ('' when some could). A region that cannot be decoded (when `skip`) is taken
    for tissue, so that the model tiles there are tried, and named as skipped if they cannot be read either."""
    geometry, size, mpp = slide.geometry, seg.entry.tile_size, seg.entry.resolution
    extent = size * mpp / geometry.mpp
    rows, cols = math.ceil(geometry.height / extent), math.ceil(geometry.width / extent)
    mask = np.zeros((rows * size, cols * size), dtype=np.uint8)
    ys, xs = np.mgrid[0:rows, 0:cols]
    cells = np.stack([xs.ravel(), ys.ravel()], axis=1)
    coords = np.round(cells * extent).astype(np.int64)
    failed: dict[int, str] = {}
    for chunk in chunks(lambda xy: slide.read(*xy, extent, size), coords, seg.max_batch, pool, prefetch, stop, skip):
        failed.update(chunk.failed)
        end = chunk.start + len(chunk.pixels) + len(chunk.failed)
        read = [i for i in range(chunk.start, end) if i not in chunk.failed]
        outputs = seg(records(chunk.pixels, seg.entry.name, "prediction")) if read else []
        for i, output in zip(read, outputs, strict=True):
            col, row = cells[i]
            mask[row * size : (row + 1) * size, col * size : (col + 1) * size] = output["prediction"].reshape(
                size, size
            )
    for i in failed:
        col, row = cells[i]
        mask[row * size : (row + 1) * size, col * size : (col + 1) * size] = 1
    unreadable = ""
    if len(failed) == len(coords):
        unreadable = f"none of the slide's {len(coords)} tissue-seg regions can be decoded; first: {failed[0]}"
    if failed:
        log.warning("%d of %d tissue-seg regions cannot be decoded, taken as tissue; first: %s",
                    len(failed), len(coords), next(iter(failed.values())))  # fmt: skip
    height, width = round(geometry.height * geometry.mpp / mpp), round(geometry.width * geometry.mpp / mpp)
    return mask[: max(height, 1), : max(width, 1)], mpp, unreadable


def tissue_ratios(mask: np.ndarray, mask_mpp: float, geometry: Geometry, tiles: Grid) -> np.ndarray:
    """The fraction of each tile's area that the mask marks as tissue (float32, [N])."""
    scale = geometry.mpp / mask_mpp  # mask pixels per level-0 pixel
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int32)  # masks are under 2**31 px
    integral[1:, 1:] = mask.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)
    x0 = np.clip(np.round(tiles.coords[:, 0] * scale).astype(np.int64), 0, mask.shape[1] - 1)
    y0 = np.clip(np.round(tiles.coords[:, 1] * scale).astype(np.int64), 0, mask.shape[0] - 1)
    side = max(round(tiles.extent * scale), 1)
    x1, y1 = np.minimum(x0 + side, mask.shape[1]), np.minimum(y0 + side, mask.shape[0])
    area = (x1 - x0) * (y1 - y0)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return (inside / area).astype(np.float32)


def select(tiles: Grid, ratios: np.ndarray, minimum: float) -> tuple[Grid, np.ndarray]:
    """The tiles whose tissue ratio reaches `minimum`, in grid order."""
    keep = ratios >= minimum if minimum > 0 else np.ones(len(ratios), dtype=bool)
    return Grid(tiles.coords[keep], tiles.extent, tiles.size), ratios[keep]

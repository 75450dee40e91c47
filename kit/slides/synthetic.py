"""Small pyramidal Aperio-style SVS slides made from the real H&E samples, for the demo, tests and benchmark.

The tissue's outline and colour come from the 8 um/px sample thumbnail, its texture from the 0.5 um/px
sample tile (flipped and turned, so neighbouring tiles differ); tifffile writes JPEG tiles, a pyramid
downsampled by 4 per level, a thumbnail, and the Aperio description OpenSlide reads the mpp from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from kit.endpoints.samples import SAMPLES

THUMBNAIL_MPP = 8.0  # the 512x512 sample
TEXTURE_MPP = 0.5  # the 224x224 sample
BACKGROUND = np.array([243, 243, 243], dtype=np.float32)


def tissue_image(width_um: float, height_um: float, mpp: float, origin_px: tuple[int, int] = (370, 180)) -> np.ndarray:
    """An H x W x 3 uint8 image at `mpp` of the sample thumbnail's region starting at `origin_px` (8 um/px)."""
    thumb = Image.open(SAMPLES / "he_tile_512.png").convert("RGB")
    box_w, box_h = width_um / THUMBNAIL_MPP, height_um / THUMBNAIL_MPP
    x, y = origin_px
    if x + box_w > thumb.width or y + box_h > thumb.height:
        raise ValueError(f"a {width_um:g} x {height_um:g} um slide does not fit the sample thumbnail at {origin_px}")
    width, height = round(width_um / mpp), round(height_um / mpp)
    region = (x, y, x + box_w, y + box_h)
    colour = np.asarray(thumb.resize((width, height), Image.Resampling.BILINEAR, box=region), dtype=np.float32)
    saturation = (colour.max(axis=2) - colour.min(axis=2)) / (colour.max(axis=2) + 1)
    tissue = saturation > 0.05
    texture = _texture(width, height, mpp)
    shade = texture / texture.reshape(-1, 3).mean(axis=0, dtype=np.float64)  # float32 sums saturate
    out = np.where(tissue[..., None], shade * colour, colour)
    return np.clip(out, 0, 255).astype(np.uint8)


def _texture(width: int, height: int, mpp: float) -> np.ndarray:
    """The 224 sample, in its 8 flips and turns, tiled over width x height pixels at `mpp`."""
    sample = Image.open(SAMPLES / "he_tile_224.png").convert("RGB")
    side = round(224 * TEXTURE_MPP / mpp)
    base = np.asarray(sample.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)
    variants = [np.rot90(base, k) for k in range(4)] + [np.rot90(base[:, ::-1], k) for k in range(4)]
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(-(-height // side)):
        rows.append(np.concatenate([variants[rng.integers(8)] for _ in range(-(-width // side))], axis=1))
    return np.concatenate(rows, axis=0)[:height, :width]


def write_svs(
    path: Path, image: np.ndarray, mpp: float | None, tile: int = 256, quality: int = 90, pyramid: bool = True
) -> Path:
    """An Aperio-style SVS: tiled JPEG levels (downsample 4 per level, unless not `pyramid`), a thumbnail,
    mpp when given."""
    height, width = image.shape[:2]
    mpp_text = f"|MPP = {mpp}" if mpp is not None else ""
    aperio = f"Aperio Image Library v12.0.15\r\n{width}x{height}"
    options: dict[str, Any] = {"metadata": None, "photometric": "rgb"}
    tiled = {**options, "compression": "jpeg", "compressionargs": {"level": quality}, "tile": (tile, tile)}
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(image)
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(image, description=f"{aperio} ({tile}x{tile}) JPEG/RGB Q={quality}{mpp_text}", **tiled)
        thumb = pil.copy()
        thumb.thumbnail((768, 768))
        tiff.write(np.asarray(thumb), description=f"{aperio} -> {thumb.width}x{thumb.height}", **options)
        level = 4
        while pyramid and min(width, height) // level >= tile:
            reduced = pil.resize((width // level, height // level), Image.Resampling.LANCZOS)
            tiff.write(np.asarray(reduced), description=f"{aperio} -> {reduced.width}x{reduced.height}", **tiled)
            level *= 4
    return path


def make_slide(
    path: Path,
    mpp: float | None = 0.5,
    size_um: tuple[float, float] = (896, 672),
    origin_px: tuple[int, int] = (370, 180),
) -> Path:
    """A generated slide of tissue from the samples, scanned at `mpp` (None: 0.5, and no mpp in its metadata)."""
    return write_svs(path, slide_image(mpp or TEXTURE_MPP, size_um, origin_px), mpp)


def slide_image(mpp: float, size_um: tuple[float, float], origin_px: tuple[int, int]) -> np.ndarray:
    """The tissue made at the texture's 0.5 um/px and resized (bicubic) to `mpp` (4x faster than making it
    at 0.25 um/px)."""
    image = tissue_image(*size_um, TEXTURE_MPP, origin_px)
    if mpp != TEXTURE_MPP:
        height, width = round(size_um[1] / mpp), round(size_um[0] / mpp)
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))
    return image


def write_large_svs(path: Path, target_bytes: int, mpp: float = 0.25, tile: int = 256, quality: int = 95) -> Path:
    """An Aperio-style SVS of at least `target_bytes` on the thumbnail's tissue outline, each tissue tile one of 16
    textured H&E tiles, glass elsewhere, every level (downsample 4) laid out alike so tissue-seg finds the same
    tissue. The 17 tiles are JPEG-encoded once and written as encoded segments: a 1 GB slide in seconds, in
    the memory of a few tiles."""
    thumb = Image.open(SAMPLES / "he_tile_512.png").convert("RGB").crop((150, 150, 420, 380))
    tiles = [_tissue_tile(tile, mpp, seed) for seed in range(16)] + [np.full((tile, tile, 3), 243, np.uint8)]
    options: dict[str, Any] = {
        "metadata": None, "photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": quality},
        "tile": (tile, tile),
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.concatenate(tiles, axis=1), **options)
    with tifffile.TiffFile(path) as bank:
        page, handle = bank.pages[0], bank.filehandle
        segments = []
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            handle.seek(offset)
            segments.append(handle.read(count))
    cols = 64
    while _mask(thumb, cols).sum() * np.mean([len(s) for s in segments[:16]]) < target_bytes:
        cols = int(cols * 1.1) + 1
    width, height = cols * tile, _mask(thumb, cols).shape[0] * tile
    aperio = f"Aperio Image Library v12.0.15\r\n{width}x{height}"
    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        level = 1
        while level == 1 or min(width, height) // level >= tile:
            mask = _mask(thumb, -(-width // level // tile), -(-height // level // tile))
            chosen = (segments[(r * 7 + c * 3) % 16 if on else 16] for (r, c), on in np.ndenumerate(mask))
            shape = (height // level, width // level, 3)
            note = f"({tile}x{tile}) JPEG/RGB Q={quality}|MPP = {mpp}" if level == 1 else f"-> {shape[1]}x{shape[0]}"
            tiff.write(chosen, shape=shape, dtype=np.uint8, description=f"{aperio} {note}", **options)
            level *= 4
    return path


def _mask(thumb: Image.Image, cols: int, rows: int | None = None) -> np.ndarray:
    """Tissue (True) per tile of a `cols` wide grid over the thumbnail's outline."""
    rows = rows or max(1, round(cols * thumb.height / thumb.width))
    colour = np.asarray(thumb.resize((cols, rows), Image.Resampling.BILINEAR), dtype=np.float32)
    return (colour.max(axis=2) - colour.min(axis=2)) / (colour.max(axis=2) + 1) > 0.05


def _tissue_tile(tile: int, mpp: float, seed: int) -> np.ndarray:
    """The sample's texture in one of four H&E colours."""
    colour = np.array([[200, 120, 170], [180, 100, 160], [215, 150, 190], [170, 90, 150]][seed % 4], np.float32)
    texture = _texture(tile * (seed + 1), tile, mpp)[:, tile * seed :]
    shade = texture / texture.reshape(-1, 3).mean(axis=0, dtype=np.float64)
    return np.clip(shade * colour, 0, 255).astype(np.uint8)

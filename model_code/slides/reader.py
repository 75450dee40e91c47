"""Reading a slide at any resolution: OpenSlide (its `openslide-bin` wheel), the level whose downsample is
the largest not above the one asked for, then bicubic resampling (antialiased: Pillow widens its filter
when it shrinks) to the size asked for. OpenSlide is thread-safe and releases the GIL while it decodes, so
worker threads read in parallel."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from model_code.errors import ClientError

LEVEL_TOLERANCE = 1.01  # a level 1% finer than asked for is used as it is, without resampling
MAX_READ_SIDE = 2048  # larger regions (a slide without a pyramid) are read in quarters: memory stays bounded


class SlideReadError(ClientError):
    """A slide whose data cannot be decoded (truncated, corrupt): the request's fault, a 400."""

    def __init__(self, reason: str):
        super().__init__(reason, field="body")


@dataclass(frozen=True)
class Geometry:
    width: int  # level-0 pixels
    height: int
    mpp: float  # um/px at level 0
    mpp_source: str  # "metadata" or "slide_mpp option"


class Slide:
    """An open slide; `read` gives RGB uint8 regions at any scale, white where the slide has no pixels."""

    def __init__(self, path: Path, slide_mpp: float | None = None):
        try:
            self._slide = openslide.OpenSlide(path)
        except openslide.OpenSlideUnsupportedFormatError:
            raise ClientError(
                "is not a whole-slide image OpenSlide reads (Aperio SVS, generic tiled TIFF, NDPI, ...)", field="body"
            ) from None
        except openslide.OpenSlideError as exc:
            raise SlideReadError(f"the slide is corrupt or truncated: {exc}") from None
        width, height = self._slide.dimensions
        self.geometry = Geometry(width, height, *_mpp(self._slide.properties, slide_mpp))
        self.vendor = self._slide.properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown")

    def close(self) -> None:
        self._slide.close()

    def read(self, x: int, y: int, extent: float, size: int) -> np.ndarray:
        """The level-0 square at (x, y) of side `extent` pixels, as a size x size x 3 uint8 array."""
        downsample = extent / size
        level = max(
            (i for i, d in enumerate(self._slide.level_downsamples) if d <= downsample * LEVEL_TOLERANCE), default=0
        )
        level_downsample = self._slide.level_downsamples[level]
        side = round(extent / level_downsample)
        if abs(side - size) <= size * (LEVEL_TOLERANCE - 1):
            side = size
        if side > MAX_READ_SIDE and size % 2 == 0:  # no level near the scale asked for: read it in quarters
            half, step = size // 2, extent / 2
            rows = [
                np.concatenate([self.read(round(x + i * step), round(y + j * step), step, half) for i in (0, 1)], 1)
                for j in (0, 1)
            ]
            return np.concatenate(rows, 0)
        try:
            region = self._slide.read_region((x, y), level, (side, side))
        except openslide.OpenSlideError as exc:
            raise SlideReadError(f"the slide's pixels at ({x}, {y}) cannot be decoded: {exc}") from None
        rgb = _on_white(region)
        if side != size:
            rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(rgb)


def _on_white(region: Image.Image) -> Image.Image:
    """OpenSlide's RGBA (transparent outside the scanned area) over white glass."""
    alpha = region.getchannel("A").getextrema()
    if alpha[0] == 255:
        return region.convert("RGB")
    white = Image.new("RGBA", region.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, region).convert("RGB")


def _mpp(properties: Mapping[str, str], override: float | None) -> tuple[float, str]:
    if override is not None:
        return override, "slide_mpp option"
    try:
        x = float(properties[openslide.PROPERTY_NAME_MPP_X])
        y = float(properties.get(openslide.PROPERTY_NAME_MPP_Y, x))
    except (KeyError, ValueError):
        raise ClientError(
            "the slide states no microns per pixel (openslide.mpp-x) in its metadata; send slide_mpp=<um/px of "
            "level 0> in X-Amzn-SageMaker-Custom-Attributes (or as a query parameter)",
            field="slide_mpp",
        ) from None
    if x <= 0 or abs(x - y) > 0.01 * x:
        raise ClientError(f"the slide's mpp ({x} x {y}) is not square; send slide_mpp=<um/px>", field="slide_mpp")
    return x, "metadata"

"""A picture of a slide's features file: the thumbnail with the tissue mask's outline and the kept tiles'
grid, beside a map of the tile features (their first three principal components as RGB)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import openslide
from PIL import Image, ImageDraw, ImageFilter

OUTLINE = (0, 160, 60)
GRID = (40, 90, 220)


def features_picture(slide_path: Path, features_path: Path, out: Path, width: int = 900) -> Path:
    """Write the PNG `out` for the slide and its HDF5 features; returns `out`."""
    with openslide.OpenSlide(slide_path) as slide:
        thumb = slide.get_thumbnail((width, width)).convert("RGB")
        level0 = slide.dimensions
    with h5py.File(features_path, "r") as features:
        coords, feats, mask = (
            features["coords"][:],
            features["features"][:].astype(np.float32),
            features["tissue_mask"][:],
        )
        extent = float(features.attrs["patch_size_level0"])
    scale = thumb.width / level0[0]
    left = thumb.copy()
    outline = Image.fromarray(mask * 255).resize(thumb.size, Image.Resampling.NEAREST).filter(ImageFilter.FIND_EDGES)
    outline = outline.filter(ImageFilter.MaxFilter(3))
    left.paste(Image.new("RGB", thumb.size, OUTLINE), mask=outline)
    right = Image.new("RGB", thumb.size, (255, 255, 255))
    draw_grid, draw_map = ImageDraw.Draw(left), ImageDraw.Draw(right)
    colours = pca_rgb(feats)
    for (x, y), colour in zip(coords, colours, strict=True):
        box = (x * scale, y * scale, (x + extent) * scale - 1, (y + extent) * scale - 1)
        draw_grid.rectangle(box, outline=GRID)
        draw_map.rectangle(box, fill=tuple(int(c) for c in colour))
    picture = Image.new("RGB", (thumb.width * 2 + 30, thumb.height + 40), (255, 255, 255))
    picture.paste(left, (10, 30))
    picture.paste(right, (thumb.width + 20, 30))
    label = ImageDraw.Draw(picture)
    label.text((10, 8), f"{slide_path.name}: tissue outline, {len(coords)} tiles", fill=(0, 0, 0))
    label.text((thumb.width + 20, 8), "tile features: first 3 principal components as RGB", fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    return out


def pca_rgb(features: np.ndarray) -> np.ndarray:
    """[N, D] -> [N, 3] uint8: the first three principal components, each stretched to 0..255."""
    if len(features) < 2:
        return np.full((len(features), 3), 128, dtype=np.uint8)
    centred = features - features.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ components[:3].T
    if projected.shape[1] < 3:
        projected = np.pad(projected, ((0, 0), (0, 3 - projected.shape[1])))
    low, high = np.percentile(projected, 2, axis=0), np.percentile(projected, 98, axis=0)
    return (np.clip((projected - low) / np.maximum(high - low, 1e-9), 0, 1) * 255).astype(np.uint8)

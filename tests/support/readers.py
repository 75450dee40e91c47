"""Other tools' readers of patch-features files, re-expressed from their public source, to run on the files
the kit writes: TRIDENT v0.3.0's slide-encoder batch and reuse of coords, STAMP v2.5's coordinates and
feature type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

# --- TRIDENT v0.3.0, as its code reads a patch-features file ---------------------------------------------


def trident_slide_encoder_batch(path: Path) -> dict[str, Any]:
    """WSI.extract_slide_features: `coords`, `features`, and the attributes **of the coords dataset**, which
    the slide encoders take as batch['attributes'] (they need `patch_size_level0`)."""
    with h5py.File(path, "r") as f:
        coords = f["coords"][:]
        features = f["features"][:]
        coords_attrs = dict(f["coords"].attrs)
    return {"features": features[None], "coords": coords, "attributes": coords_attrs}


def trident_patching_attributes(coords_attrs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """WSI's reuse of existing coords: patch_size, level0 and target magnification, refused when any is None."""
    found = tuple(coords_attrs.get(k) for k in ("patch_size", "level0_magnification", "target_magnification"))
    assert None not in found, f"TRIDENT would refuse these coords: {coords_attrs}"
    return found


# --- STAMP v2.5, as stamp.modeling.data.get_coords reads coordinates -------------------------------------


def stamp_get_coords(f: h5py.File) -> tuple[str, np.ndarray, float, int | None]:
    """(branch taken, coords in um, tile size in um, tile size in px), in STAMP's order of branches."""
    coords = f["coords"][:]
    tile_size_px = None
    if (tile_size := f.attrs.get("tile_size", None)) and f.attrs.get("unit", None) == "um":
        branch, tile_size_um, coords_um = "v2", float(tile_size), coords
    elif tile_size := f.attrs.get("tile_size_um", None):
        branch, tile_size_um, coords_um = "newer", float(tile_size), coords
    elif round(f.attrs.get("tile_size", stride(coords))) == 224:
        branch, tile_size_um, tile_size_px, coords_um = "historic", 256.0, 224, coords / 224 * 256
    else:
        raise RuntimeError("unable to infer coordinates from feature file")
    assert "stamp_version" not in f.attrs, "STAMP refuses a stamp_version newer than its own"
    if not tile_size_px and "tile_size_px" in f.attrs:
        tile_size_px = int(f.attrs["tile_size_px"])
    return branch, coords_um, tile_size_um, tile_size_px


def stride(coords: np.ndarray) -> float:
    """The smallest step between the tiles' x coordinates (STAMP's guess of the tile size)."""
    xs = np.unique(coords[:, 0])
    return float(np.min(np.diff(xs))) if len(xs) > 1 else 0.0


def stamp_feature_type(f: h5py.File) -> str:
    """detect_feature_type: `feat_type` when it or `encoder` is on the root, else tile."""
    if f.attrs.get("feat_type") is not None or f.attrs.get("encoder") is not None:
        return str(f.attrs.get("feat_type"))
    return "tile"

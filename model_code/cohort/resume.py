"""Resume: an output already under the checkpoints is kept when it is complete (outputs appear only under
their final name, once whole) and was made the same way, as its own attributes say: the same model and
weights digest, the same options, the same slide mpp and bulk RNA."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import h5py
import zarr
from zarr.storage import ZipStore

from model_code.inference import Models
from model_code.runners import Runner
from model_code.slides.job import model_version
from model_code.slides.options import SlideOptions
from model_code.slides.writers import VENDOR_NAMES

log = logging.getLogger("optimus.cohort")


def recipe(options: SlideOptions, runner: Runner, models: Models, with_rna: bool) -> dict[str, Any]:
    """The attributes (and the features' dtype) an output made with these options and models has."""
    entry = runner.entry
    made = {
        "model": entry.name,
        "model_version": model_version(models.model_dir, entry.files),
        "mode": options.mode,
        "mpp": options.mpp or entry.resolution,
        "tile_size": options.tile_size or entry.tile_size,
        "min_tissue": options.min_tissue,
        "bulk_rna": with_rna,
        "slide_mpp_source": "slide_mpp option" if options.slide_mpp is not None else "metadata",
        "dtype": options.dtype,
    }
    if options.slide_mpp is not None:
        made["slide_mpp"] = options.slide_mpp
    return made


def finished_tiles(path: Path, expected: dict[str, Any]) -> int | None:
    """The tiles of the output at `path` when it exists, reads and matches `expected` (a `recipe`), else None."""
    if not path.is_file():
        return None
    try:
        found = _h5(path) if path.suffix == ".h5" else _zarr(path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        log.warning("%s is unreadable (%s): it is made again", path, exc)
        return None
    differs = sorted(key for key, value in expected.items() if _plain(found.get(key)) != value)
    if differs:
        log.info("%s was made otherwise (%s): it is made again", path, ", ".join(differs))
        return None
    return int(found["tiles"])


def _h5(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as file:
        return {**file.attrs, "dtype": str(file["features"].dtype)}


def _zarr(path: Path) -> dict[str, Any]:
    with ZipStore(path, mode="r") as store:
        group = zarr.open_group(store, mode="r")
        return {**group.attrs, "dtype": str(group[VENDOR_NAMES["features"]].dtype)}  # type: ignore[union-attr]


def _plain(value: Any) -> Any:
    """numpy scalars from HDF5 attributes as Python values."""
    return value.item() if hasattr(value, "item") else value

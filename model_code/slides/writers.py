"""Slide outputs, written as the forward passes finish (never all features in memory at once).

HDF5 (default) in one of the layouts of `layouts` (TRIDENT's, which CLAM's readers take, or STAMP's): the
features [N, D], `coords` [N, 2] (each tile's top-left corner), `tissue_ratios` [N], `tissue_mask` (uint8,
at tissue-seg's 8 um/px), `embeddings` [N, 1536] when M-Optimus answers prediction_with_embedding, and
`skipped_coords` [K, 2] (level-0 pixels, in every layout) of the tiles left out because their pixels cannot
be decoded; attributes describe the model, tiles, slide and how the file was made. Zarr as the vendor's SDK
writes it (layouts.vendor_coords, layouts.vendor_attributes), zipped into one file: `outputs` for
`features`, `coords` and `skipped_coords` in pixels at the tiles' resolution, the other arrays and the
kit's attributes alike.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
import zarr

from model_code.slides import layouts
from model_code.slides.layouts import SUFFIXES, VENDOR_NAMES, vendor_attributes, vendor_coords

__all__ = ["MEDIA_TYPES", "SUFFIXES", "Writer", "open_writer"]

MEDIA_TYPES = {"h5": "application/x-hdf5", "zarr": "application/zip"}
NONE = np.zeros(0, dtype=np.int64)


class Writer(Protocol):
    def write(self, start: int, outputs: dict[str, np.ndarray]) -> None: ...
    def close(self, attributes: dict[str, Any], skipped: np.ndarray = NONE) -> None:
        """`skipped`: positions in the coords given at opening of the tiles left out (their outputs were not
        written: the rows written are the others, in order); they go from `coords` and `tissue_ratios` to
        `skipped_coords`."""


@dataclass(frozen=True)
class Plan:
    """What a writer is opened for: len(coords) tiles (level-0 pixels) and their tissue ratios, whose outputs
    are named and sized by `widths` (dataset name -> D), in `dtype`; `mask` is the tissue mask at
    tissue-seg's resolution, stored as `tissue_mask`; `genes`: a model's gene sets (`input_genes`,
    `output_genes`), which the vendor SDK's Zarr holds as `input_gene_names` / `output_gene_names`."""

    coords: np.ndarray
    ratios: np.ndarray
    widths: dict[str, int]
    dtype: str
    mask: np.ndarray
    genes: dict[str, list[str]]


def open_writer(
    kind: str,
    path: Path,
    coords: np.ndarray,
    ratios: np.ndarray,
    widths: dict[str, int],
    dtype: str,
    mask: np.ndarray,
    layout: str = "trident",
    genes: dict[str, list[str]] | None = None,
) -> Writer:
    """A writer of `kind` ("h5" or "zarr") at `path`, for the Plan of the other arguments; `layout` applies to
    HDF5 (Zarr is the vendor SDK's)."""
    plan = Plan(coords, ratios, widths, dtype, mask, genes or {})
    return H5Writer(path, plan, layout) if kind == "h5" else ZarrWriter(path, plan)


class H5Writer:
    """HDF5 in `layout`: `coords` and the attributes, which depend on the slide's geometry, are written at
    the end."""

    def __init__(self, path: Path, plan: Plan, layout: str):
        self.file = h5py.File(path, "w")
        self.plan, self.layout = plan, layout
        self.names = {name: layouts.FEATURES[layout] if name == "features" else name for name in plan.widths}
        self.file.create_dataset("tissue_mask", data=plan.mask, compression="gzip")
        self.file.create_dataset("tissue_ratios", data=plan.ratios.astype(np.float32))
        tiles = len(plan.coords)
        for name, width in plan.widths.items():
            chunks = (min(tiles, 1024), width) if tiles else None
            self.file.create_dataset(self.names[name], shape=(tiles, width), dtype=plan.dtype, chunks=chunks)

    def write(self, start: int, outputs: dict[str, np.ndarray]) -> None:
        for name, values in outputs.items():
            self.file[self.names[name]][start : start + len(values)] = values

    def close(self, attributes: dict[str, Any], skipped: np.ndarray = NONE) -> None:
        (kept, ratios), lost = _split(self.plan, skipped)
        if len(skipped):
            del self.file["tissue_ratios"]
            self.file.create_dataset("tissue_ratios", data=ratios)
            for name in self.plan.widths:
                self.file[self.names[name]].resize(len(kept), axis=0)
        coords, coords_attributes = layouts.coords_dataset(self.layout, kept, attributes)
        self.file.create_dataset("coords", data=coords).attrs.update(coords_attributes)
        self.file.create_dataset("skipped_coords", data=lost)
        self.file[self.names["features"]].attrs.update(layouts.features_attributes(self.layout, attributes))
        self.file.attrs.update(layouts.root_attributes(self.layout, attributes))
        self.file.close()


class ZarrWriter:
    """Zarr (format 2, readable by zarr 2 and 3) in a directory, zipped into one file at the end: entries of a
    zip cannot be rewritten in place, and the features arrive a batch at a time."""

    def __init__(self, path: Path, plan: Plan):
        self.path, self.plan = path, plan
        self.directory = path.with_name(path.name + ".d")
        self.group = zarr.open_group(self.directory, mode="w", zarr_format=2)
        self.group.create_array("tissue_mask", data=plan.mask)
        for role, names in plan.genes.items():  # input_genes -> input_gene_names (read by its pseudobulk)
            self.group.create_array(role.removesuffix("s") + "_names", data=np.array(names))
        for name, width in plan.widths.items():
            shape = (len(plan.coords), width)
            self.group.create_array(VENDOR_NAMES.get(name, name), shape=shape, dtype=plan.dtype, chunks=(1024, width))

    def write(self, start: int, outputs: dict[str, np.ndarray]) -> None:
        for name, values in outputs.items():
            self.group[VENDOR_NAMES.get(name, name)][start : start + len(values)] = values  # type: ignore[index]

    def close(self, attributes: dict[str, Any], skipped: np.ndarray = NONE) -> None:
        (coords, ratios), lost = _split(self.plan, skipped)
        if len(skipped):
            for name, width in self.plan.widths.items():
                self.group[VENDOR_NAMES.get(name, name)].resize((len(coords), width))  # type: ignore[union-attr]
        self.group.create_array("coords", data=vendor_coords(coords, attributes))
        self.group.create_array("tissue_ratios", data=ratios)
        self.group.create_array("skipped_coords", data=vendor_coords(lost, attributes))
        self.group.attrs.update(vendor_attributes(attributes, len(coords)))
        with zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for file in sorted(self.directory.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(self.directory).as_posix())
        shutil.rmtree(self.directory)


def _split(plan: Plan, skipped: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """(coords, tissue ratios) of the tiles kept, and the coords [K, 2] of those skipped."""
    keep = np.ones(len(plan.coords), dtype=bool)
    keep[skipped] = False
    kept = (plan.coords[keep].astype(np.int64), plan.ratios[keep].astype(np.float32))
    return kept, plan.coords[~keep].astype(np.int64).reshape(-1, 2)

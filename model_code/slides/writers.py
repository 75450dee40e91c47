"""Slide outputs, written as the forward passes finish (never all features in memory at once).

HDF5 (default), the layout TRIDENT and CLAM users read: `features` [N, D], `coords` [N, 2] (level-0 x, y
of each tile's top-left corner), `tissue_ratios` [N], `tissue_mask` (uint8, at tissue-seg's 8 um/px),
`embeddings` [N, 1536] when M-Optimus answers prediction_with_embedding, and `skipped_coords` [K, 2] of the
tiles left out because their pixels cannot be decoded; attributes describe the model, tiles and slide.
Zarr in a zip store, as the vendor's SDK writes it: `outputs` for `features`, the other arrays and
attributes alike.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
import zarr

VENDOR_NAMES = {"features": "outputs"}  # the vendor SDK's Zarr names
MEDIA_TYPES = {"h5": "application/x-hdf5", "zarr": "application/zip"}
SUFFIXES = {"h5": ".h5", "zarr": ".zarr.zip"}
NONE = np.zeros(0, dtype=np.int64)


class Writer(Protocol):
    def write(self, start: int, outputs: dict[str, np.ndarray]) -> None: ...
    def close(self, attributes: dict[str, Any], skipped: np.ndarray = NONE) -> None:
        """`skipped`: positions in the coords given at opening of the tiles left out (their outputs were not
        written: the rows written are the others, in order); they go from `coords` and `tissue_ratios` to
        `skipped_coords`."""


def open_writer(
    kind: str, path: Path, coords: np.ndarray, ratios: np.ndarray, widths: dict[str, int], dtype: str, mask: np.ndarray
) -> Writer:
    """A writer for len(coords) tiles whose outputs are named and sized by `widths` (dataset name -> D);
    `mask` is the tissue mask at tissue-seg's resolution, stored as `tissue_mask`."""
    return (H5Writer if kind == "h5" else ZarrWriter)(path, coords, ratios, widths, dtype, mask)


class H5Writer:
    def __init__(
        self, path: Path, coords: np.ndarray, ratios: np.ndarray, widths: dict[str, int], dtype: str, mask: np.ndarray
    ):
        self.coords, self.ratios = coords, ratios
        self.file = h5py.File(path, "w")
        self.file.create_dataset("tissue_mask", data=mask, compression="gzip")
        self.file.create_dataset("coords", data=coords.astype(np.int64))
        self.file.create_dataset("tissue_ratios", data=ratios.astype(np.float32))
        self.widths = widths
        for name, width in widths.items():
            chunks = (min(len(coords), 1024), width) if len(coords) else None
            self.file.create_dataset(name, shape=(len(coords), width), dtype=dtype, chunks=chunks)

    def write(self, start: int, outputs: dict[str, np.ndarray]) -> None:
        for name, values in outputs.items():
            self.file[name][start : start + len(values)] = values

    def close(self, attributes: dict[str, Any], skipped: np.ndarray = NONE) -> None:
        kept, lost = _split(self.coords, self.ratios, skipped)
        if len(skipped):
            for name in ("coords", "tissue_ratios"):
                del self.file[name]
            self.file.create_dataset("coords", data=kept[0])
            self.file.create_dataset("tissue_ratios", data=kept[1])
            for name in self.widths:
                self.file[name].resize(len(kept[0]), axis=0)
        self.file.create_dataset("skipped_coords", data=lost)
        self.file.attrs.update({k: v for k, v in attributes.items() if v is not None})
        self.file.close()


class ZarrWriter:
    """Zarr (format 2, readable by zarr 2 and 3) in a directory, zipped into one file at the end: entries of a
    zip cannot be rewritten in place, and the features arrive a batch at a time."""

    def __init__(
        self, path: Path, coords: np.ndarray, ratios: np.ndarray, widths: dict[str, int], dtype: str, mask: np.ndarray
    ):
        self.path, self.coords, self.ratios, self.widths = path, coords, ratios, widths
        self.directory = path.with_name(path.name + ".d")
        self.group = zarr.open_group(self.directory, mode="w", zarr_format=2)
        self.group.create_array("coords", data=coords.astype(np.int64))
        self.group.create_array("tissue_ratios", data=ratios.astype(np.float32))
        self.group.create_array("tissue_mask", data=mask)
        for name, width in widths.items():
            shape = (len(coords), width)
            self.group.create_array(VENDOR_NAMES.get(name, name), shape=shape, dtype=dtype, chunks=(1024, width))

    def write(self, start: int, outputs: dict[str, np.ndarray]) -> None:
        for name, values in outputs.items():
            self.group[VENDOR_NAMES.get(name, name)][start : start + len(values)] = values  # type: ignore[index]

    def close(self, attributes: dict[str, Any], skipped: np.ndarray = NONE) -> None:
        kept, lost = _split(self.coords, self.ratios, skipped)
        if len(skipped):
            self.group.create_array("coords", data=kept[0], overwrite=True)
            self.group.create_array("tissue_ratios", data=kept[1], overwrite=True)
            for name, width in self.widths.items():
                self.group[VENDOR_NAMES.get(name, name)].resize((len(kept[0]), width))  # type: ignore[union-attr]
        self.group.create_array("skipped_coords", data=lost)
        self.group.attrs.update({k: v for k, v in attributes.items() if v is not None})
        with zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for file in sorted(self.directory.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(self.directory).as_posix())
        shutil.rmtree(self.directory)


def _split(
    coords: np.ndarray, ratios: np.ndarray, skipped: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """(coords, tissue ratios) of the tiles kept, and the coords [K, 2] of those skipped."""
    keep = np.ones(len(coords), dtype=bool)
    keep[skipped] = False
    return (coords[keep].astype(np.int64), ratios[keep].astype(np.float32)), coords[~keep].astype(np.int64).reshape(
        -1, 2
    )

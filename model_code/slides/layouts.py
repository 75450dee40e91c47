"""How a features file is laid out for the tool that reads it next, and where a slide's output goes.

The facts are in DESIGN.md, "Feature files that the next tools read" (read from each tool's source):
- `trident` (the default): TRIDENT v0.3.0's patch-features file, which CLAM's h5 readers also take:
  `features` [N, D] with `encoder` (and `name`) on the dataset; `coords` [N, 2] int64 level-0 pixels of each
  tile's top-left corner with TRIDENT's patching attributes on the dataset (`patch_size`,
  `patch_size_level0`, `level0_magnification`, `target_magnification`, `overlap`, `level0_width`,
  `level0_height`, `name`).
- `stamp`: STAMP v2.5's: `feats` [N, D]; `coords` [N, 2] micrometres from the slide's origin; root
  `extractor` (as STAMP spells it), `unit = "um"`, `tile_size_um`, `tile_size_px`, `feat_type = "tile"`.
  The kit's `tile_size` is written as `tile_size_px` here: STAMP reads a root `tile_size` as micrometres
  when `unit` is "um" (224 px would become 224 um), and without `unit` as its historic format.
Both keep the kit's own attributes on the root, and `tissue_ratios`, `tissue_mask` (and `embeddings`).
One file cannot serve both: each calls its coordinates `coords`, in pixels and in micrometres.
- Zarr, as the vendor SDK (1.3.1) writes and reads it: `outputs` for `features`; `coords` [N, 2] int32 in
  pixels at the tiles' resolution (`mpp`: the grid index times the tile size, what its plots read at
  `mpp`); root `tile_size` and `stride` as [w, h], `slide_dimensions`, `slide_dimensions_at_mpp`,
  `num_tiles` beside the kit's own. One file (a zip, SUFFIXES) where it travels or sits in S3; a directory
  (`.zarr`, LOCAL_SUFFIXES), which the SDK's `zarr.open` reads, where the kit lays outputs on a disk.
numpy is imported where it is used: the CLI reads this module's names to build its parser.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

LAYOUTS = ("trident", "stamp")
FEATURES = {"trident": "features", "stamp": "feats"}
TRIDENT_ENCODERS = {"h0": "hoptimus0", "h1": "hoptimus1", "h0-mini": "h0-mini"}  # TRIDENT's patch encoder names
STAMP_EXTRACTORS = {"h0": "h-optimus-0", "h1": "h-optimus-1", "h0-mini": "h0-mini"}  # STAMP's ExtractorName
STAMP_ONLY = ("extractor", "unit", "tile_size_um", "feat_type")
SUFFIXES = {"h5": ".h5", "zarr": ".zarr.zip"}  # one file: the server's answer, an S3 object, a cohort job's output
LOCAL_SUFFIXES = {"h5": ".h5", "zarr": ".zarr"}  # on a disk of the operator's: Zarr as the vendor SDK opens it
VENDOR_NAMES = {"features": "outputs"}  # the vendor SDK's Zarr names
VENDOR_ONLY = ("stride", "slide_dimensions", "slide_dimensions_at_mpp", "num_tiles")


def magnification(mpp: float) -> float:
    """TRIDENT's magnification of a resolution: 20x is 0.5 um/px (a whole number when it is one)."""
    value = 10 / mpp
    return round(value) if abs(value - round(value)) < 1e-6 else round(value, 3)


def level0_magnification(slide_mpp: float) -> float:
    """The magnification TRIDENT assigns a slide of `slide_mpp` at level 0 (its own bands; past them, which
    TRIDENT refuses, 10 / mpp)."""
    for limit, mag in ((0.16, 80), (0.2, 60), (0.3, 40), (0.6, 20), (1.2, 10), (2.4, 5)):
        if slide_mpp < limit:
            return mag
    return magnification(slide_mpp)


def job_dir(mpp: float, tile_size: int, model: str) -> str:
    """TRIDENT's job tree for these tiles and model: `20x_224px_0px_overlap/features_hoptimus1`."""
    encoder = TRIDENT_ENCODERS.get(model, model)
    return f"{magnification(mpp):g}x_{tile_size}px_0px_overlap/features_{encoder}"


def output_name(slide: str, fmt: str, job: str | None = None, suffixes: dict[str, str] = SUFFIXES) -> str:
    """The output's path for a slide given by its path relative to the cohort (`sub/a.svs` -> `sub/a.h5`); in
    TRIDENT's job tree `job` (job_dir), the slide's name alone, as TRIDENT names it (`JOB/a.h5`)."""
    path = PurePosixPath(slide)
    stem = path.stem if path.suffix else path.name  # a DICOM folder is a slide too
    if job is not None:
        return f"{job}/{stem}{suffixes[fmt]}"
    return str(path.parent / f"{stem}{suffixes[fmt]}")


def install(made: Path, target: Path) -> None:
    """Put a finished output (`made`, one file) at `target`, replacing what is there: a Zarr zip is unpacked
    into the directory `target` when its name ends as LOCAL_SUFFIXES names it."""
    if not target.name.endswith(LOCAL_SUFFIXES["zarr"]):
        made.replace(target)
        return
    unpacked = target.with_name(target.name + ".unpacking")
    shutil.rmtree(unpacked, ignore_errors=True)
    with zipfile.ZipFile(made) as archive:
        for entry in archive.infolist():  # the kit's own zip, checked all the same: no path leaves `unpacked`
            if entry.filename.startswith("/") or ".." in PurePosixPath(entry.filename).parts:
                raise ValueError(f"{made}: entry {entry.filename!r} would leave the output's directory")
        archive.extractall(unpacked)
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
    unpacked.rename(target)
    made.unlink()


def vendor_coords(coords: np.ndarray, attributes: dict[str, Any]) -> np.ndarray:
    """Level-0 pixels as the vendor SDK's Zarr has them: pixels at the tiles' resolution, int32."""
    import numpy as np

    index = np.round(np.asarray(coords, dtype=np.float64) / attributes["patch_size_level0"])
    return (index * int(attributes["tile_size"])).astype(np.int32).reshape(-1, 2)


def level0_coords(coords: np.ndarray, attributes: dict[str, Any]) -> np.ndarray:
    """vendor_coords undone: the grid index times the tile's extent at level 0, int64 (the kit's attributes)."""
    import numpy as np

    index = np.round(np.asarray(coords, dtype=np.float64) / attributes["tile_size"]).reshape(-1, 2)
    return np.round(index * attributes["patch_size_level0"]).astype(np.int64)


def vendor_attributes(attributes: dict[str, Any], tiles: int) -> dict[str, Any]:
    """The kit's attributes (None left out) with the vendor SDK's Zarr attributes beside them."""
    root = {key: value for key, value in attributes.items() if value is not None}
    size, width, height = int(root["tile_size"]), int(root["slide_width"]), int(root["slide_height"])
    scale = root["slide_mpp"] / root["mpp"]
    return root | {
        "tile_size": [size, size],
        "stride": [size, size],
        "slide_dimensions": [width, height],
        "slide_dimensions_at_mpp": [round(width * scale), round(height * scale)],
        "num_tiles": tiles,
    }


def coords_dataset(layout: str, coords: np.ndarray, attributes: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """`coords` and its dataset attributes from level-0 pixel coordinates and the kit's attributes."""
    import numpy as np

    if layout == "stamp":
        return (coords * attributes["slide_mpp"]).astype(np.float32), {}
    return coords.astype(np.int64), {
        "patch_size": int(attributes["tile_size"]),
        "patch_size_level0": round(attributes["patch_size_level0"]),
        "level0_magnification": level0_magnification(attributes["slide_mpp"]),
        "target_magnification": magnification(attributes["mpp"]),
        "overlap": 0,
        "level0_width": int(attributes["slide_width"]),
        "level0_height": int(attributes["slide_height"]),
        "name": attributes.get("slide_name") or "",
    }


def features_attributes(layout: str, attributes: dict[str, Any]) -> dict[str, Any]:
    if layout == "stamp":
        return {}
    return {
        "encoder": TRIDENT_ENCODERS.get(attributes["model"], attributes["model"]),
        "name": attributes.get("slide_name") or "",
    }


def root_attributes(layout: str, attributes: dict[str, Any]) -> dict[str, Any]:
    """The kit's attributes (None left out), with STAMP's where STAMP reads them."""
    root = {key: value for key, value in attributes.items() if value is not None}
    if layout == "stamp":
        root["tile_size_px"] = root.pop("tile_size")
        root |= {
            "extractor": STAMP_EXTRACTORS.get(root["model"], root["model"]),
            "unit": "um",
            "tile_size_um": float(root["tile_size_px"] * root["mpp"]),
            "feat_type": "tile",
        }
    return root


@dataclass
class Output:
    """A kit output read back, in the kit's own terms whatever its layout: `coords` in level-0 pixels,
    `features` under that name, the kit's attributes."""

    arrays: dict[str, np.ndarray]
    attributes: dict[str, Any]


def read_output(path: Path) -> Output:
    """A kit output (HDF5 in either layout, or the vendor SDK's Zarr, zipped or a directory); ValueError when
    it is not one."""
    import numpy as np

    if path.is_dir() or zipfile.is_zipfile(path):
        arrays, attributes = _read_zarr(path)
        if "stride" in attributes:  # in the SDK's terms (a kit Zarr from before has the kit's)
            attributes["tile_size"] = attributes["tile_size"][0]
            for name in ("coords", "skipped_coords"):
                arrays[name] = level0_coords(arrays[name], attributes)
            for key in VENDOR_ONLY:
                attributes.pop(key)
    else:
        import h5py

        with h5py.File(path, "r") as file:
            attributes = dict(file.attrs)
            arrays = {name: file[name][()] for name in file if isinstance(file[name], h5py.Dataset)}
    if "model" not in attributes or "slide_mpp" not in attributes:
        raise ValueError("no kit attributes (model, slide_mpp): not a kit output")
    if attributes.get("unit") == "um":  # the stamp layout
        arrays["features"] = arrays.pop("feats")
        arrays["coords"] = np.round(arrays["coords"] / attributes["slide_mpp"]).astype(np.int64)
        attributes["tile_size"] = attributes.pop("tile_size_px")
        for key in STAMP_ONLY:
            attributes.pop(key, None)
    return Output(arrays, {key: _plain(value) for key, value in attributes.items()})


def read_attributes(path: Path) -> dict[str, Any]:
    """The root attributes of an output (HDF5 or Zarr) without reading its arrays."""
    if path.is_dir() or zipfile.is_zipfile(path):
        with _zarr_group(path) as group:
            return dict(group.attrs)
    import h5py

    with h5py.File(path, "r") as file:
        return {key: _plain(value) for key, value in file.attrs.items()}


def _read_zarr(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import numpy as np

    names = {vendor: ours for ours, vendor in VENDOR_NAMES.items()}
    with _zarr_group(path) as group:
        return {names.get(name, name): np.asarray(array[()]) for name, array in group.arrays()}, dict(group.attrs)


@contextmanager
def _zarr_group(path: Path) -> Iterator[Any]:
    import zarr
    from zarr.storage import LocalStore, ZipStore

    store = LocalStore(path, read_only=True) if path.is_dir() else ZipStore(path, mode="r")
    try:
        yield zarr.open_group(store, mode="r")
    finally:
        store.close()


def _plain(value: Any) -> Any:
    """numpy scalars from h5py as Python values."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value

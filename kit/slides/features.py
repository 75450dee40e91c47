"""What a slide endpoint answered: a features file (HDF5 or Zarr zip) and the tile count it records; shared by
the engines that send slides (kit/slides/run.py, kit/cohorts/runner.py) and `kit cohort status`."""

from __future__ import annotations

from pathlib import Path


class SlideFailed(Exception):
    """A slide the endpoint could not answer: the reason, as the server gave it."""


def output_tiles(path: Path) -> int:
    """The tile count a features file records (HDF5 or Zarr zip); SlideFailed when it is not one."""
    import zipfile

    import h5py

    try:
        if zipfile.is_zipfile(path):
            import zarr
            from zarr.storage import ZipStore

            return int(zarr.open_group(ZipStore(path, mode="r"), mode="r").attrs["tiles"])  # type: ignore[arg-type]
        with h5py.File(path, "r") as features:
            return int(features.attrs["tiles"])
    except (OSError, KeyError, ValueError) as exc:
        raise SlideFailed(f"the answer is not a features file ({exc})") from None

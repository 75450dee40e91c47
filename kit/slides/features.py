"""What a slide endpoint answers, a features file: the tile count it records, and whether existing outputs were
made the way a run asks; shared by the engines that send slides (kit/slides/run.py, kit/cohorts/runner.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kit import KitError
from kit.slides.transport import SlideFailed


@dataclass
class SlideJob:
    """A slide, its path in the directory given (or its file name), and where its output goes."""

    slide: Path
    name: str
    target: Path
    bulk_rna: bool = False


def check_existing(jobs: list[SlideJob], wanted: dict[str, object]) -> None:
    """Refuse outputs that exist but were made another way (naming what differs), before anything runs."""
    from model_code.slides.layouts import read_attributes
    from model_code.slides.provenance import differences

    stale = []
    for one in jobs:
        if one.target.exists():
            try:
                found = differences(read_attributes(one.target), {**wanted, "bulk_rna": one.bulk_rna})
            except (OSError, ValueError, KeyError) as exc:
                found = [f"not a features file ({exc})"]
            if found:
                stale.append(f"{one.target} ({'; '.join(found)})")
    if stale:
        shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        raise KitError(
            f"{len(stale)} existing output(s) were made another way: {shown}; "
            "--overwrite redoes them, or give another --out"
        )


def output_tiles(path: Path) -> int:
    """The tile count a features file records (HDF5 or Zarr zip); SlideFailed when it is not one."""
    from model_code.slides.layouts import read_attributes

    try:
        return int(read_attributes(path)["tiles"])
    except (OSError, KeyError, ValueError) as exc:
        raise SlideFailed(f"the answer is not a features file ({exc})") from None

"""The slides of a cohort: each a file OpenSlide reads, or a multi-file unit processed as one slide (an
`.mrxs` file with its folder of the same name, a folder holding one DICOM series); from the slides channel's
listing, or exactly the slides cohort.jsonl names."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from model_code.cohort.config import JobFailed
from model_code.slides.layouts import SUFFIXES, output_name

SLIDE_SUFFIXES = frozenset({".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".svslide", ".mrxs"})
DICOM_SUFFIX = ".dcm"


@dataclass(frozen=True)
class Unit:
    """One slide: `name` its path relative to the channel (a file, or a DICOM series' folder), `files` what
    makes it up (relative to the channel), `size` their bytes; from cohort.jsonl, its id, mpp and bulk RNA."""

    name: str
    files: tuple[str, ...]
    size: int
    slide_id: str | None = None
    slide_mpp: float | None = None
    bulk_rna: str | None = None

    def output(self, fmt: str) -> str:
        """Where its features go under the checkpoints: `sub/b.svs` -> `sub/b.h5`, a slide_id -> `ID.h5`."""
        return self.slide_id + SUFFIXES[fmt] if self.slide_id is not None else output_name(self.name, fmt)


def list_units(channel: Path) -> list[Unit]:
    """Every slide under `channel`, in path order; files that are no slide's are left out."""
    units: list[Unit] = []
    for folder, dirs, files in os.walk(channel):
        dirs.sort()
        here = Path(folder)
        if any(name.lower().endswith(DICOM_SUFFIX) for name in files):
            units.append(unit(channel, here.relative_to(channel).as_posix()))
            dirs.clear()  # a series' folder is one slide
            continue
        for name in sorted(files):
            if Path(name).suffix.lower() in SLIDE_SUFFIXES:
                units.append(unit(channel, (here / name).relative_to(channel).as_posix()))
        stems = {Path(name).stem for name in files if name.lower().endswith(".mrxs")}
        dirs[:] = [name for name in dirs if name not in stems]  # an .mrxs slide's data folder is part of it
    return units


def unit(channel: Path, name: str, **cohort: object) -> Unit:
    """The unit at `name` (relative to the channel) with the files it is made of; a missing one has none."""
    path = channel / name
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file()]
    elif path.suffix.lower() == ".mrxs" and path.with_suffix("").is_dir():
        files = [path, *(p for p in sorted(path.with_suffix("").rglob("*")) if p.is_file())]
    else:
        files = [path] if path.is_file() else []
    relative = tuple(p.relative_to(channel).as_posix() for p in files)
    return Unit(name, relative, sum(p.stat().st_size for p in files), **cohort)  # type: ignore[arg-type]


def read_cohort(path: Path, channel: Path) -> list[Unit]:
    """The slides cohort.jsonl lists (`slide`, `slide_id`, `slide_mpp`, `bulk_rna`, as the contract says)."""
    units, seen = [], set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, slide_id, mpp, rna = row["slide"], row.get("slide_id"), row.get("slide_mpp"), row.get("bulk_rna")
            _check(name, slide_id, mpp, rna)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise JobFailed(f"cohort.jsonl line {number}: {exc or type(exc).__name__}") from None
        if name in seen:
            raise JobFailed(f"cohort.jsonl line {number}: slide '{name}' is listed twice")
        seen.add(name)
        units.append(unit(channel, name, slide_id=slide_id, slide_mpp=mpp, bulk_rna=rna))
    return units


def _check(name: object, slide_id: object, mpp: object, rna: object) -> None:
    for field, value in (("slide", name), ("slide_id", slide_id), ("bulk_rna", rna)):
        if value is None and field != "slide":
            continue
        if not isinstance(value, str) or not value or value.startswith("/") or ".." in PurePosixPath(value).parts:
            raise ValueError(f"'{field}' must be a relative path without '..', not {value!r}")
    if mpp is not None and (isinstance(mpp, bool) or not isinstance(mpp, int | float)):
        raise ValueError(f"'slide_mpp' must be a number or null, not {mpp!r}")

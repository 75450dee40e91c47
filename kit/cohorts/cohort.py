"""What a cohort is, for every engine (local server, async endpoint, training job): its slides, from files and
directories, S3 prefixes or a cohort CSV, with their ids, sizes and output names.

A cohort CSV has one slide a row. Columns: `slide` (a local path, relative to the CSV, or s3://BUCKET/KEY),
optional `slide_id` (names the output; default: the slide's path), `slide_mpp` (um/px of level 0, for a slide
without it), `bulk_rna` (a local JSON file: a list of raw counts in the model's input-gene order, -1 for a gene
not measured, as the slide path takes it) and `tiles` (for `kit plan`).

In S3 a slide is one object, or a multi-file unit: an `.mrxs` object with the folder of the same name beside
it, or a folder of `.dcm` objects (one DICOM series).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from kit import KitError
from kit.s3 import head, parse

COLUMNS = ("slide", "slide_id", "slide_mpp", "bulk_rna", "tiles")
SLIDE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # it names S3 keys and output files
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".vms", ".svslide", ".mrxs")
DICOM_SUFFIX = ".dcm"  # a folder of DICOM instances is one slide
MRXS = ".mrxs"  # with the folder of its stem beside it, one slide


@dataclass(frozen=True)
class CohortSlide:
    source: str  # a local path or an s3:// URI (of a multi-file unit: its .mrxs object, or its DICOM folder/)
    slide_id: str
    bulk_rna: Path | None = None
    tiles: int | None = None
    slide_mpp: float | None = None
    size: int | None = None  # bytes, all its objects together; None where not yet known
    parts: tuple[str, ...] = ()  # the S3 keys of its objects (a multi-file unit has several)
    named: bool = False  # slide_id given in a cohort CSV (else it is derived, and outputs keep the slide's path)

    @property
    def in_s3(self) -> bool:
        return self.source.startswith("s3://")


def slide_id(source: str) -> str:
    """'s3://b/x/TCGA-01.svs' or 'x/TCGA-01.svs' -> 'TCGA-01'."""
    return PurePosixPath(source.rstrip("/")).name.split(".")[0]


def output_name(relative: str, named_id: str | None, fmt: str) -> str:
    """A slide's output, relative to the output prefix: the slide_id a CSV named it by, else its path relative
    to the cohort's root with its suffix replaced (`sub/b.svs` -> `sub/b.h5`; model_code/slides/layouts.py)."""
    from model_code.slides.layouts import SUFFIXES
    from model_code.slides.layouts import output_name as path_name

    return named_id + SUFFIXES[fmt] if named_id else path_name(relative.rstrip("/"), fmt)


def named_slides(paths: list[Path]) -> list[tuple[Path, str]]:
    """Files as given (named by their file name); directories searched (recursively) for slide files and
    folders of DICOM instances (each one slide), in name order, each named by its path in the directory; a
    folder of DICOM instances given is that slide."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir() and any(p.suffix.lower() == DICOM_SUFFIX for p in path.iterdir()):
            found.append((path, path.name))
        elif path.is_dir():
            files = [p for p in path.rglob("*") if p.is_file()]
            series = {p.parent for p in files if p.suffix.lower() == DICOM_SUFFIX}
            slides = sorted([p for p in files if p.suffix.lower() in SLIDE_SUFFIXES] + list(series))
            found += [(p, p.relative_to(path).as_posix()) for p in slides]
        elif path.is_file():
            found.append((path, path.name))
        else:
            raise KitError(f"{path}: no such file or directory")
    if not found:
        raise KitError(f"no slides ({', '.join(SLIDE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return found


def find_slides(paths: list[Path]) -> list[Path]:
    return [slide for slide, _ in named_slides(paths)]


def s3_slides(s3: Any, uri: str) -> list[CohortSlide]:
    """The slides under an S3 prefix with their sizes, multi-file units grouped (one slide each)."""
    bucket, prefix = parse(uri)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    objects = {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")}
    slides = _units(bucket, objects)
    if not slides:
        raise KitError(f"no slides ({', '.join(SLIDE_SUFFIXES)}, or folders of {DICOM_SUFFIX}) under {uri}")
    return slides


def _units(bucket: str, objects: dict[str, int]) -> list[CohortSlide]:
    units: dict[str, list[str]] = {}  # the unit's source key -> its keys
    mrxs = {key.removesuffix(PurePosixPath(key).suffix) + "/": key for key in objects if key.lower().endswith(MRXS)}
    for key in sorted(objects):
        folder = str(PurePosixPath(key).parent) + "/"
        owner = next((m for d, m in mrxs.items() if key.startswith(d)), None)
        if owner is not None:
            units.setdefault(owner, []).append(key)
        elif key.lower().endswith(DICOM_SUFFIX):
            units.setdefault(folder, []).append(key)
        elif key.lower().endswith(SLIDE_SUFFIXES):
            units.setdefault(key, []).insert(0, key)
    return [
        CohortSlide(f"s3://{bucket}/{source}", slide_id(source), size=sum(objects[k] for k in keys), parts=tuple(keys))
        for source, keys in sorted(units.items())
    ]


def with_sizes(s3: Any, slides: list[CohortSlide]) -> list[CohortSlide]:
    """S3 slides of a cohort CSV come without sizes: HEAD each (which also finds one that is not there)."""
    sized = []
    for slide in slides:
        if slide.in_s3 and slide.size is None:
            found = head(s3, *parse(slide.source))
            if found is None:
                raise KitError(f"{slide.source}: no such object")
            slide = replace(slide, size=found["ContentLength"])
        sized.append(slide)
    return sized


def read_cohort(path: Path) -> list[CohortSlide]:
    """The rows of a cohort CSV; an unknown column, a missing slide or a repeated slide_id is an error naming
    its line."""
    if not path.is_file():
        raise KitError(f"{path}: no such cohort CSV")
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        unknown = set(reader.fieldnames or ()) - set(COLUMNS)
        if "slide" not in (reader.fieldnames or ()) or unknown:
            raise KitError(
                f"{path}: columns must be {', '.join(COLUMNS)} with 'slide' required (got {reader.fieldnames})"
            )
        slides, seen = [], set()
        for line, row in enumerate(reader, start=2):
            slides.append(_row(path, line, row))
            if slides[-1].slide_id in seen:
                raise KitError(f"{path}:{line}: slide_id '{slides[-1].slide_id}' appears twice")
            seen.add(slides[-1].slide_id)
    if not slides:
        raise KitError(f"{path}: no slides")
    return slides


def _row(path: Path, line: int, row: dict[str, str]) -> CohortSlide:
    source = (row.get("slide") or "").strip()
    if not source:
        raise KitError(f"{path}:{line}: column 'slide' is empty")
    size = None
    if source.startswith("s3://"):
        parse(source, f"{path}:{line}: slide", needs_key=True)
    else:
        local = (path.parent / source).resolve()
        if not local.is_file():
            raise KitError(f"{path}:{line}: slide '{source}': no such file")
        source, size = str(local), local.stat().st_size
    rna = (row.get("bulk_rna") or "").strip()
    rna_path = (path.parent / rna).resolve() if rna else None
    if rna_path is not None and not rna_path.is_file():
        raise KitError(f"{path}:{line}: bulk_rna '{rna}': no such file")
    tiles = (row.get("tiles") or "").strip()
    if tiles and not tiles.isdigit():
        raise KitError(f"{path}:{line}: tiles '{tiles}' is not a whole number")
    mpp = (row.get("slide_mpp") or "").strip()
    try:
        slide_mpp = float(mpp) if mpp else None
    except ValueError:
        raise KitError(f"{path}:{line}: slide_mpp '{mpp}' is not a number of um/px") from None
    given = (row.get("slide_id") or "").strip()
    name = given or slide_id(source)
    if not SLIDE_ID.fullmatch(name):
        raise KitError(f"{path}:{line}: slide_id '{name}': letters, digits, '.', '_' and '-' only (it names files)")
    return CohortSlide(source, name, rna_path, int(tiles) if tiles else None, slide_mpp, size, named=bool(given))


def cohort_slides(
    sources: list[str], cohort: Path | None, s3: Any | None = None, *, unique: bool = True
) -> list[CohortSlide]:
    """From a cohort CSV, and/or slide files, directories and s3:// prefixes (listed with `s3`, a client);
    `unique`: refuse two slides with one id (engines whose outputs are named by id)."""
    slides = read_cohort(cohort) if cohort else []
    local = [Path(s) for s in sources if not s.startswith("s3://")]
    if local:
        slides += [CohortSlide(str(p.resolve()), slide_id(p.name), size=p.stat().st_size) for p in find_slides(local)]
    for prefix in (s for s in sources if s.startswith("s3://")):
        slides += s3_slides(s3, prefix)
    if not slides:
        raise KitError("no slides: give slide files, directories, s3:// prefixes or --cohort")
    return unique_ids(slides) if unique else slides


def unique_ids(slides: list[CohortSlide]) -> list[CohortSlide]:
    """The slides, after refusing two with one id (for engines whose outputs are named by id)."""
    counts = Counter(s.slide_id for s in slides)
    repeated = sorted(i for i, n in counts.items() if n > 1)
    if repeated:
        raise KitError(f"slide ids given twice: {', '.join(repeated)} (name them apart in a cohort CSV's slide_id)")
    return slides

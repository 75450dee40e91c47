"""A cohort CSV: one slide a row. Columns: `slide` (a local path, relative to the CSV, or s3://BUCKET/KEY),
optional `slide_id` (default: the file's stem), `bulk_rna` (a JSON list of raw counts in the model's
input-gene order, -1 for a gene not measured, as the slide path takes it) and `tiles` (for `kit plan`)."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kit import KitError

COLUMNS = ("slide", "slide_id", "bulk_rna", "tiles")
SLIDE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # it names S3 keys and output files


@dataclass(frozen=True)
class CohortSlide:
    source: str  # a local path or an s3:// URI
    slide_id: str
    bulk_rna: Path | None = None
    tiles: int | None = None

    @property
    def in_s3(self) -> bool:
        return self.source.startswith("s3://")


def slide_id(source: str) -> str:
    """'s3://b/x/TCGA-01.svs' or 'x/TCGA-01.svs' -> 'TCGA-01'."""
    return PurePosixPath(source).name.split(".")[0]


def read_cohort(path: Path) -> list[CohortSlide]:
    """The rows of a cohort CSV; an unknown column, a missing slide or a repeated slide_id is an error naming
    its line."""
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
    if not source.startswith("s3://"):
        local = (path.parent / source).resolve()
        if not local.is_file():
            raise KitError(f"{path}:{line}: slide '{source}': no such file")
        source = str(local)
    rna = (row.get("bulk_rna") or "").strip()
    rna_path = (path.parent / rna).resolve() if rna else None
    if rna_path is not None and not rna_path.is_file():
        raise KitError(f"{path}:{line}: bulk_rna '{rna}': no such file")
    tiles = (row.get("tiles") or "").strip()
    if tiles and not tiles.isdigit():
        raise KitError(f"{path}:{line}: tiles '{tiles}' is not a whole number")
    name = (row.get("slide_id") or "").strip() or slide_id(source)
    if not SLIDE_ID.fullmatch(name):
        raise KitError(f"{path}:{line}: slide_id '{name}': letters, digits, '.', '_' and '-' only (it names files)")
    return CohortSlide(source, name, rna_path, int(tiles) if tiles else None)

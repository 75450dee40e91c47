"""Tar and zip bodies: one slide's files (a single slide file, a DICOM series, an `.mrxs` with its folder, ...),
with or without `bulk_rna.json` (M-Optimus's bulk RNA: a JSON list of the 19374 raw counts, -1 for a gene not
measured, as in the tile API), anywhere in the archive.

Only regular files are unpacked (links, devices and folders are ignored), each under the request's own
directory: a name's `..`, `.` and empty parts are dropped, so no name reaches outside it. Refused: more
than MAX_MEMBERS entries, sparse tar members (their holes would unpack to more than the body: a disk bomb),
encrypted zip entries, zips that unpack to more than the slide limit, two members of one name.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import IO

import numpy as np
import orjson

from model_code.catalogue import ModelSpec
from model_code.errors import ClientError
from model_code.records import bulk_rna_vector
from model_code.slides.slide_files import slide_file

TAR = "application/x-tar"
ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed"})
BULK_RNA_FILE = "bulk_rna.json"
MAX_MEMBERS = 4096  # a MIRAX slide holds a few hundred .dat files at most, a DICOM series a dozen instances
MAX_NAME_PARTS = 32
MAX_RNA_BYTES = 16 << 20  # 19374 counts as JSON: under 1 MB


def is_archive(kind: str) -> bool:
    return kind == TAR or kind in ZIP_TYPES


def unpack(body: Path, kind: str, workdir: Path, limit: int, spec: ModelSpec) -> tuple[Path, np.ndarray | None]:
    """The archive at `body` unpacked under `workdir` -> the file OpenSlide opens, and the bulk RNA's log1p
    counts for the model of `spec` (None without bulk_rna.json); `limit`: bytes the files may take unpacked."""
    root = workdir / "unpacked"
    root.mkdir()
    try:
        files = _tar(body, root) if kind == TAR else _zip(body, root, limit)
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ClientError(
            f"is not a readable {'tar' if kind == TAR else 'zip'} archive ({exc})", field="body"
        ) from None
    rnas = [path for path in files if path.name == BULK_RNA_FILE]
    if len(rnas) > 1:
        raise ClientError(f"the archive holds {len(rnas)} {BULK_RNA_FILE} files; send one", field="bulk_rna")
    return slide_file(root, frozenset({BULK_RNA_FILE})), bulk_rna_file(rnas[0], spec) if rnas else None


def _tar(body: Path, root: Path) -> list[Path]:
    size = body.stat().st_size
    written = []
    with tarfile.open(body, "r:") as archive:
        for count, member in enumerate(archive, start=1):
            _count(count)
            if member.issparse() or member.size > size:
                raise ClientError(
                    f"tar member '{member.name}' is sparse or larger than the tar; tar without --sparse", field="body"
                )
            if member.isfile():
                source = archive.extractfile(member)
                assert source is not None  # a regular file
                with source:
                    written.append(_write(root, member.name, source))
    return written


def _zip(body: Path, root: Path, limit: int) -> list[Path]:
    with body.open("rb") as file:
        end = zipfile._EndRecData(file)  # type: ignore[attr-defined]  # the entry count, before reading any entry
    if end is None:
        raise ClientError("is not a readable zip archive (no end of central directory)", field="body")
    _count(end[zipfile._ECD_ENTRIES_TOTAL])  # type: ignore[attr-defined]
    written, total = [], 0
    with zipfile.ZipFile(body) as archive:
        for info in archive.infolist():
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix mode recorded, a plain file
            if info.is_dir() or kind not in (0, stat.S_IFREG):
                continue  # folders, links (a zip holds a symlink as a file of its target's name), ...
            if info.flag_bits & 0x1:
                raise ClientError(f"zip entry '{info.filename}' is encrypted", field="body")
            total += info.file_size
            if total > limit:
                raise ClientError(f"the zip unpacks to over {limit} bytes (MAX_SLIDE_MB)", field="body", status=413)
            with archive.open(info) as source:  # reads at most file_size bytes, and checks the CRC
                written.append(_write(root, info.filename, source))
    return written


def _count(count: int) -> None:
    if count > MAX_MEMBERS:
        raise ClientError(f"the archive holds over {MAX_MEMBERS} entries; send one slide's files", field="body")


def _write(root: Path, name: str, source: IO[bytes]) -> Path:
    """`source` copied to `root`/<the name's plain parts>; a second member of one name is refused."""
    parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    if not parts or len(parts) > MAX_NAME_PARTS or any("\x00" in part for part in parts):
        raise ClientError(f"archive member '{name[:200]}' has no usable name", field="body")
    path = root.joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        target = path.open("xb")
    except FileExistsError:
        raise ClientError(f"the archive holds two members named '{'/'.join(parts)[:200]}'", field="body") from None
    with target:
        shutil.copyfileobj(source, target, 1 << 20)
    return path


def check_takes_bulk_rna(spec: ModelSpec) -> None:
    """A 400 for bulk RNA sent with a slide for a model whose spec takes none."""
    if not spec.bulk_rna_genes:
        raise ClientError(f"model '{spec.name}' takes no bulk RNA; send the slide alone", field="bulk_rna")


def bulk_rna_file(path: Path, spec: ModelSpec) -> np.ndarray:
    """bulk_rna.json (a JSON list of the raw counts, -1 for a gene not measured) -> the log1p vector the model
    of `spec` takes."""
    check_takes_bulk_rna(spec)
    if path.stat().st_size > MAX_RNA_BYTES:
        raise ClientError(f"{BULK_RNA_FILE} is over {MAX_RNA_BYTES} bytes", field="bulk_rna")
    try:
        counts = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ClientError(f"{BULK_RNA_FILE} is not JSON ({exc})", field="bulk_rna") from None
    if not isinstance(counts, list):
        raise ClientError(f"{BULK_RNA_FILE} must be a JSON list of counts", field="bulk_rna")
    if not all(isinstance(count, int | float) and not isinstance(count, bool) for count in counts):
        raise ClientError(f"{BULK_RNA_FILE} must hold numbers only", field="bulk_rna")
    bulk = bulk_rna_vector(counts, spec.name, spec.bulk_rna_genes)
    assert bulk is not None
    return bulk

"""Which file OpenSlide must open for a slide made of several files, held in one directory.

A MIRAX slide is an `.mrxs` file beside a folder of `.dat` files and `Slidedat.ini`; a Hamamatsu VMS is a
`.vms` (or `.vmu`) beside its JPEG files; a DICOM WSI is a series of instances (one per level, and label or
overview images), any of which OpenSlide opens, finding the others in the same folder. Used for the files of
a tar or zip body, and by the cohort worker for a multi-file slide copied to local disk.
"""

from __future__ import annotations

from pathlib import Path

import openslide

from model_code.errors import ClientError

INDEX_SUFFIXES = (".mrxs", ".vms", ".vmu")  # the file OpenSlide opens, beside the slide's other files
DICOM = "dicom"


def slide_file(directory: Path, ignore: frozenset[str] = frozenset()) -> Path:
    """The file OpenSlide opens for the one slide in `directory` (files at any depth, names in `ignore` left
    out): its index file (.mrxs, .vms, .vmu), an instance of its DICOM series, or its one file OpenSlide
    reads. ClientError (field `body`) when there is no slide there, or more than one."""
    files = sorted(path for path in directory.rglob("*") if path.is_file() and path.name not in ignore)
    names = ", ".join(str(path.relative_to(directory)) for path in files[:10]) + (", ..." if len(files) > 10 else "")
    indexes = [path for path in files if path.suffix.lower() in INDEX_SUFFIXES]
    if len(indexes) > 1:
        raise ClientError(f"holds several slides ({names}); send one slide at a time", field="body")
    if indexes:
        return indexes[0]
    if len(files) == 1:
        return files[0]
    formats = {path: openslide.OpenSlide.detect_format(path) for path in files}
    readable = [path for path, vendor in formats.items() if vendor]
    if readable and all(formats[path] == DICOM for path in readable):
        if len({path.parent for path in readable}) > 1:
            raise ClientError(f"holds DICOM instances in several folders ({names}); send one series", field="body")
        return readable[0]
    if len(readable) == 1:
        return readable[0]
    if not readable:
        raise ClientError(f"holds no file OpenSlide reads ({names or 'no files'})", field="body")
    raise ClientError(f"holds several slides ({names}); send one slide at a time", field="body")

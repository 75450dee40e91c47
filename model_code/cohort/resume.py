"""Resume: an output already under the checkpoints is kept when it is complete (outputs appear only under
their final name, once whole) and was made the same way, as its own attributes say (its recipe and weights
digest: model_code.slides.provenance)."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

from model_code.slides.layouts import read_attributes
from model_code.slides.provenance import differences

log = logging.getLogger("optimus.cohort")


def finished_tiles(path: Path, wanted: dict[str, Any], model_version: str | None) -> int | None:
    """The tiles of the output at `path` when it exists, reads and was made as `wanted` (a provenance recipe)
    with these weights; else None (it is made again)."""
    if not path.is_file():
        return None
    try:
        attributes = read_attributes(path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        log.warning("%s is unreadable (%s): it is made again", path, exc)
        return None
    differs = differences(attributes, wanted, model_version)
    if differs:
        log.info("%s was made otherwise (%s): it is made again", path, "; ".join(differs))
        return None
    return int(attributes["tiles"])

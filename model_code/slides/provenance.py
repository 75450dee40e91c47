"""How a features file was made, recorded in it, and the check a resume makes before reusing one.

Every file records the model and its weights digest (`model_version`), the kit's version, the source
revision, and `recipe`: every option that changes the numbers or the file, resolved (`mpp` is 0.5, not
"the model's"), as JSON. A resume reuses a file only when its recipe is the one asked for now.

The source revision is a digest of `model_code`'s Python files, computed where the code runs: the image
and a venv give the same digest for the same code, nothing has to be written at build time (a file written
by `docker build` goes stale in a venv, and a build argument would change the image's asset hash, so every
commit would replace every endpoint), and the image has no git. `source_commit` adds git's commit when the
code runs from a checkout (with `+dirty` when `model_code` has uncommitted changes).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from model_code.catalogue import MODELS, canonical_name
from model_code.slides.options import SlideOptions

PACKAGE = Path(__file__).resolve().parents[1]  # model_code/
RECIPE = "recipe"


def recipe(options: SlideOptions, model: str | None = None, bulk_rna: bool = False) -> dict[str, Any]:
    """What makes two outputs of one slide the same: the model (canonical name) and the options that change
    the numbers or the file, defaults resolved from the catalogue."""
    name = canonical_name(model or options.model or "") or model or options.model
    spec = MODELS.get(name or "")
    return {
        "model": name,
        "mode": options.mode,
        "mpp": options.mpp or (spec.resolution if spec else None),
        "tile_size": options.tile_size or (spec.tile_size if spec else None),
        "min_tissue": options.min_tissue,
        "format": options.format,
        "layout": options.layout,
        "dtype": options.dtype,
        "slide_mpp": options.slide_mpp,
        "bulk_rna": bulk_rna,
    }


def differences(attributes: dict[str, Any], wanted: dict[str, Any], model_version: str | None = None) -> list[str]:
    """How the file with these attributes was made otherwise than `wanted` (a recipe), one phrase each;
    `slide_mpp` counts only where the file used it (the slide had no mpp of its own)."""
    if RECIPE not in attributes:
        return [f"no recipe recorded (kit {attributes.get('kit_version', 'unknown')})"]
    made = json.loads(attributes[RECIPE])
    if attributes.get("slide_mpp_source") != "slide_mpp option":
        made["slide_mpp"] = wanted.get("slide_mpp")
    found = [f"{key} {made.get(key)} there, {value} asked" for key, value in wanted.items() if made.get(key) != value]
    if model_version is not None and attributes.get("model_version") != model_version:
        found.append(f"weights {attributes.get('model_version')} there, {model_version} here")
    return found


def provenance() -> dict[str, str | None]:
    """`source_revision` and `source_commit` (None outside a git checkout) of the running code."""
    return {"source_revision": source_revision(), "source_commit": source_commit()}


@cache
def source_revision() -> str:
    """sha256 (first 16 hex digits) over model_code's Python files, their paths and bytes."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"sha256:{digest.hexdigest()[:16]}"


@cache
def source_commit() -> str | None:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(PACKAGE), *args], capture_output=True, text=True, timeout=10)
        if done.returncode:
            raise OSError(done.stderr)
        return done.stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != PACKAGE.parent:
            return None  # model_code is not this checkout's own
        dirty = git("status", "--porcelain", "--", ".")
        return git("rev-parse", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None

"""Model artifacts: build (builder, demo models, exporting), verify and upload them. The only part of the
kit that imports torch (in builder and what it imports; this module and the commands' modules do not)."""

from __future__ import annotations

from pathlib import Path

from kit import KitError
from model_code.manifest import MANIFEST


def check_model_dir(path: Path) -> Path:
    """`path` as an artifact directory `kit package` wrote, before anything heavy is imported; the package
    directory (OUT instead of OUT/model) is named as the fix."""
    if not path.exists():
        raise KitError(f"{path} does not exist")
    if not path.is_dir():
        raise KitError(f"{path} is not a directory: give OUT/model, as `kit package` wrote it")
    if not (path / MANIFEST).is_file():
        inner = path / "model"
        hint = f"did you mean {inner}?" if (inner / MANIFEST).is_file() else "give OUT/model, as `kit package` wrote it"
        raise KitError(f"{path} has no {MANIFEST}: {hint}")
    return path

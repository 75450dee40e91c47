"""Benchmarks: `make bench`."""

from __future__ import annotations

import json
from pathlib import Path


def write_figures(path: Path, figures: object) -> None:
    """A benchmark's figures as indented JSON at `path` (its folder made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")

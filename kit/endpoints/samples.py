"""Sample tiles and synthetic request records for the demo, the smoke test and the tests."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from kit.endpoints.client import request_record
from model_code.catalogue import METADATA, MODELS, N_INPUT_GENES, canonical_name

SAMPLES = Path(__file__).parent / "samples"


def sample_png(tile_size: int) -> bytes:
    """A real H&E tile (PNG bytes) of the given size: 224 or 512."""
    return (SAMPLES / f"he_tile_{tile_size}.png").read_bytes()


def wire_record(
    model: str,
    mode: str,
    png: bytes | None = None,
    *,
    bulk_rna: list[float] | None = None,
    patch_idx: int = 0,
) -> dict[str, Any]:
    """A request record for `model` as the vendor's client sends it, with the sample tile unless given one."""
    spec = MODELS[canonical_name(model) or model]
    tile = b"" if mode == METADATA else (png if png is not None else sample_png(spec.tile_size))
    return request_record(
        model,
        mode,
        base64.b64encode(tile).decode(),
        spec.tile_size,
        spec.tile_size,
        bulk_rna=bulk_rna,
        slide_name="demo-slide",
        x=224 * patch_idx,
        tissue_ratio=1.0,
        patch_idx=patch_idx,
        resolution=spec.resolution,
    )


def synthetic_counts(seed: int = 0) -> list[float]:
    """A bulk RNA vector of plausible raw counts for M-Optimus."""
    return [float((i * 7919 + seed) % 97) for i in range(N_INPUT_GENES)]

"""Checking an artifact: loaded through model_fn and every mode run once (`kit package`'s last step,
`kit verify`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kit import KitError
from model_code.catalogue import ECHO_FIELDS, EMBEDDING, PREDICTION
from model_code.inference import ParsedRequest, load_models, predict_fn
from model_code.manifest import ModelEntry, read_manifest
from model_code.records import Record


def check_artifact(model_dir: Path) -> dict[str, dict[str, int]]:
    """Load through model_fn (checksums included) and run every mode on a blank tile; returns output sizes.
    CUDA packages are left out where this machine has no GPU (they are checked when the endpoint loads)."""
    manifest = read_manifest(model_dir)
    here = [m.name for m in manifest.models if runs_here(m)]
    models = load_models(model_dir, only=here)
    sizes: dict[str, dict[str, int]] = {}
    for name, runner in models.runners.items():
        spec = runner.spec
        blank = np.zeros((spec.tile_size, spec.tile_size, 3), dtype=np.uint8)
        echo = dict.fromkeys(ECHO_FIELDS)
        records = [Record(i, name, mode, echo, blank, None) for i, mode in enumerate(spec.modes) if mode != "metadata"]
        result = predict_fn(ParsedRequest(list(records), "list"), models)
        assert result.results is not None
        sizes[name] = {}
        for record, entry in zip(records, result.results, strict=True):
            assert isinstance(entry, dict)
            output = entry["output"]
            sizes[name][record.mode] = len(output)
            expected = spec.outputs[EMBEDDING if record.mode == EMBEDDING else PREDICTION]
            if len(output) != expected or not np.isfinite(output).all():
                raise KitError(f"{name}, mode {record.mode}: {len(output)} outputs, expected {expected} finite values")
    return sizes


def runs_here(entry: ModelEntry) -> bool:
    return entry.package is None or entry.package.device == "cpu" or torch.cuda.is_available()


def verify_artifact(model_dir: Path) -> dict[str, dict[str, object]]:
    """`kit verify`: per model its format, precision, and for a package its device, CUDA architecture, batch
    bounds and the torch releases that ran it (when packaged, and now); then the output sizes of a run."""
    sizes = check_artifact(model_dir)
    report: dict[str, dict[str, object]] = {}
    for entry in read_manifest(model_dir).models:
        row: dict[str, object] = {"format": entry.format, "precision": entry.dtype}
        if entry.package is not None:
            row |= entry.package.model_dump(include={"device", "cuda_arch", "batch_min", "batch_max"})
            row["packaged_with_torch"] = entry.package.probed_with_torch
        row["ran_with_torch"] = torch.__version__ if entry.name in sizes else None
        row["outputs"] = sizes.get(
            entry.name, f"not run here: needs a CUDA GPU ({entry.package and entry.package.cuda_arch})"
        )
        report[entry.name] = row
    return report

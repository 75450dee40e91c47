"""Public timm checkpoints into an artifact: a file or a snapshot directory as users download it, checked
against the catalogue (its config.json, then every tensor on the meta device) and stored as safetensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kit import KitError
from kit.artifacts.exporting import DTYPES
from model_code.catalogue import MODELS
from model_code.loaders import build_vit, check_state_dict
from model_code.manifest import ModelEntry


def timm_model(name: str, model_dir: Path, checkpoint: Path | None, timm_config: Path | None, dtype: str) -> ModelEntry:
    """A timm checkpoint (file or snapshot directory) checked against the architecture on the meta device and
    stored as safetensors in `dtype`, one tensor at a time (no model, no fp32 copy); `timm_config`, a JSON file
    of ViT arguments over the catalogue's."""
    spec = MODELS[name]
    if checkpoint is None:
        raise KitError("--timm-checkpoint is required for real weights (or pass --demo)")
    weights_file, published = resolve_checkpoint(checkpoint, name)
    config = dict(spec.timm_config or {})
    if timm_config is not None:
        if not timm_config.is_file():
            raise KitError(f"--timm-config: {timm_config} does not exist")
        config.update(json.loads(timm_config.read_text()))
    with torch.device("meta"):
        architecture = build_vit(config)
    state = read_checkpoint(weights_file)
    check_state_dict(architecture, state, str(weights_file))
    weights = f"{name}/weights.safetensors"
    (model_dir / name).mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(DTYPES[dtype]).contiguous() for k, v in state.items()}, str(model_dir / weights))
    licence = str(published.get("pretrained_cfg", {}).get("license") or spec.licence) if published else spec.licence
    return ModelEntry.for_model(
        name,
        format="timm-safetensors",
        files={"weights": weights},
        dtype=dtype,
        demo=False,
        timm_config=config,
        licence=licence,
        source=f"timm checkpoint {checkpoint.name}" + (f" ({published['architecture']})" if published else ""),
    )


def resolve_checkpoint(path: Path, name: str) -> tuple[Path, dict[str, Any] | None]:
    """A checkpoint file, or a snapshot directory as downloaded from the model hub: its weights file
    (model.safetensors, else pytorch_model.bin) and its config.json, checked against the catalogue."""
    if path.is_file():
        return path, None
    if not path.is_dir():
        raise KitError(f"--timm-checkpoint: {path} does not exist")
    weights = next((path / f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).is_file()), None)
    if weights is None:
        found = sorted(p.name for p in path.iterdir())
        raise KitError(f"--timm-checkpoint: {path} has no model.safetensors or pytorch_model.bin (it holds {found})")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise KitError(f"--timm-checkpoint: {path} has no config.json naming its timm architecture")
    published = json.loads(config_file.read_text())
    check_published_config(published, name, str(config_file))
    return weights, published


def check_published_config(published: dict[str, Any], name: str, source: str) -> None:
    """Refuse a config.json that contradicts the catalogue: architecture, width, pooling, model_args, input
    size and normalisation, each named with both values."""
    spec = MODELS[name]
    timm = dict(spec.timm_config or {})
    pretrained = published.get("pretrained_cfg") or {}
    norm = spec.normalisation or {}
    checks: list[tuple[str, object, object]] = [
        ("architecture", published.get("architecture"), spec.timm_architecture),
        ("num_features", published.get("num_features"), timm.get("embed_dim")),
        ("pretrained_cfg.input_size", pretrained.get("input_size"), [3, spec.tile_size, spec.tile_size]),
        ("pretrained_cfg.mean", pretrained.get("mean"), list(norm.get("mean", ()))),
        ("pretrained_cfg.std", pretrained.get("std"), list(norm.get("std", ()))),
    ]
    if spec.pooling == "cls":
        checks.append(("global_pool", published.get("global_pool"), "token"))
    checks += [(f"model_args.{k}", v, timm[k]) for k, v in (published.get("model_args") or {}).items() if k in timm]
    for field, given, expected in checks:
        if given is not None and not _same(given, expected):
            raise KitError(f"{source}: {field} is {given!r}, the catalogue's '{name}' needs {expected!r}")


def _same(given: object, expected: object) -> bool:
    if isinstance(given, list) and isinstance(expected, list):
        return len(given) == len(expected) and all(_same(g, e) for g, e in zip(given, expected, strict=True))
    if isinstance(given, int | float) and isinstance(expected, int | float) and not isinstance(given, bool):
        return abs(float(given) - float(expected)) <= 1e-4 * max(1.0, abs(float(expected)))
    return given == expected


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch checkpoint (plain, or under 'model' / 'state_dict'), mapped
    from the file rather than read into memory where the format allows."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (non-zip) format cannot be mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise KitError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state

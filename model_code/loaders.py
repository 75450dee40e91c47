"""Torch modules from artifact files: timm ViTs from a config plus a safetensors state dict, and
exported programs (`.pt2`). The packager uses the same functions, so what it checks is what serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from timm.layers import GluMlp, Mlp, SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer

from model_code.errors import ArtifactError

# Layer classes a manifest may name (JSON holds names, not classes).
_LAYERS: dict[str, Any] = {
    "SwiGLUPacked": SwiGLUPacked,
    "GluMlp": GluMlp,
    "Mlp": Mlp,
    "SiLU": torch.nn.SiLU,
    "GELU": torch.nn.GELU,
}


def build_vit(config: dict[str, Any]) -> VisionTransformer:
    """A timm VisionTransformer from JSON-able keyword arguments (layer classes given by name)."""
    kwargs = dict(config)
    for key in ("mlp_layer", "act_layer"):
        if key in kwargs:
            name = kwargs[key]
            if name not in _LAYERS:
                raise ArtifactError(f"timm_config.{key}: unknown layer '{name}' (known: {', '.join(_LAYERS)})")
            kwargs[key] = _LAYERS[name]
    try:
        return VisionTransformer(**kwargs)
    except TypeError as exc:
        raise ArtifactError(f"timm_config is not valid for timm's VisionTransformer: {exc}") from None


def load_vit(config: dict[str, Any], weights: Path) -> VisionTransformer:
    """Build the ViT and load its state dict strictly: any missing or unexpected key is refused."""
    model = build_vit(config)
    state = load_file(str(weights))
    load_state_dict_strict(model, state, str(weights))
    return model.eval()


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every tensor into the model; missing, unexpected or misshapen keys are refused."""
    try:
        model.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{source} does not fit the architecture: {str(exc)[:1500]}") from None


def load_program(path: Path) -> torch.nn.Module:
    """An exported program saved with torch.export.save, as a callable module."""
    try:
        return torch.export.load(str(path)).module()
    except Exception as exc:  # torch raises many types for a bad archive
        raise ArtifactError(f"{path} is not a loadable torch.export program: {exc}") from None

"""Torch modules from artifact files: timm ViTs from a config plus a safetensors state dict, and
exported programs (`.pt2`; AOTInductor packages are model_code.aoti's). The packager uses the same
functions, so what it checks is what serves."""

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


def load_vit(config: dict[str, Any], weights: Path, device: torch.device) -> VisionTransformer:
    """Build the ViT on the meta device and put the safetensors' tensors straight into place, on `device`
    and in their stored dtype: no random initialisation and no full copy on the host (safetensors maps
    the file). Any missing, unexpected or misshapen key is refused."""
    with torch.device("meta"):
        model = build_vit(config)
    state = load_file(str(weights), device=str(device))
    check_state_dict(model, state, str(weights))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a state dict whose names or shapes differ from the model's (which may live on the meta device)."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    given = {key: tuple(value.shape) for key, value in state.items()}
    problems = [f"missing {sorted(set(expected) - set(given))}"] if set(expected) - set(given) else []
    if set(given) - set(expected):
        problems.append(f"unexpected {sorted(set(given) - set(expected))}")
    problems += [
        f"{key}: shape {list(given[key])}, the architecture needs {list(shape)}"
        for key, shape in expected.items()
        if key in given and given[key] != shape
    ]
    if problems:
        raise ArtifactError(f"{source} does not fit the architecture: {'; '.join(problems)[:1500]}")


def load_program(path: Path, device: torch.device) -> torch.nn.Module:
    """An exported program saved with torch.export.save, as a callable module."""
    try:
        return torch.export.load(str(path)).module().to(device)
    except Exception as exc:  # torch raises many types for a bad archive
        raise ArtifactError(f"{path} is not a loadable torch.export program: {exc}") from None


def embed(vit: torch.nn.Module, tiles: torch.Tensor, pooling: str) -> torch.Tensor:
    """An H-Optimus embedding: the ViT's own output (CLS token, through its head) for "cls"; for
    "cls+mean_patch" (H0-mini) the CLS token and the mean of the patch tokens, registers excluded."""
    if pooling == "cls":
        return vit(tiles)
    tokens = vit.forward_features(tiles)  # type: ignore[operator]
    prefix = int(vit.num_prefix_tokens)  # type: ignore[arg-type]  # CLS + registers
    return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(dim=1)], dim=1)

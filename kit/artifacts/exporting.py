"""Writing model files in the formats real weights use: safetensors state dicts and torch.export programs."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

DTYPES = {"float32": torch.float32, "float16": torch.float16}


def save_state_dict(module: torch.nn.Module, path: Path, dtype: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().to(DTYPES[dtype]).contiguous() for key, value in module.state_dict().items()}
    save_file(state, str(path))


def export_program(module: torch.nn.Module, example_args: tuple[torch.Tensor, ...], path: Path) -> None:
    """torch.export with a dynamic batch dimension on every input, saved as a .pt2 archive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module.eval(), example_args, dynamic_shapes=tuple({0: batch} for _ in example_args))
    torch.export.save(program, str(path))

"""Writing model files in the formats real weights use: safetensors state dicts, torch.export programs and
AOTInductor packages (the vendor's format)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from kit import KitError
from model_code.aoti import VENDOR_METADATA
from model_code.catalogue import PROGRAM_INPUTS, PROGRAM_OUTPUTS

DTYPES = {"float32": torch.float32, "float16": torch.float16}


def save_state_dict(module: torch.nn.Module, path: Path, dtype: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().to(DTYPES[dtype]).contiguous() for key, value in module.state_dict().items()}
    save_file(state, str(path))


def export_program(module: torch.nn.Module, example_args: tuple[torch.Tensor, ...], path: Path) -> None:
    """torch.export with a dynamic batch dimension on every input, saved as a .pt2 archive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(_export(module, example_args, (1, 4096)), str(path))


def compile_aoti_package(
    module: torch.nn.Module,
    example_args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    device: str = "cpu",
    batch: tuple[int, int] | None = (1, 64),
    metadata: dict[str, Any] | None = None,
) -> Path:
    """An AOTInductor package, as the vendor ships its models: `module` exported with the batch axis of every
    input bounded by `batch` (min, max; None: fixed at the example's), compiled by
    torch._inductor.aoti_compile_and_package for `device` ("cuda" compiles kernels for this machine's GPU),
    in the precision of the module and example inputs. `metadata` (see vendor_metadata) is embedded as the
    vendor's model_metadata.json. Needs a C++ compiler; compiling a tiny model takes about a minute."""
    if device == "cuda" and not torch.cuda.is_available():
        raise KitError("compiling an AOTInductor package for CUDA needs a GPU on this machine")
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval().to(device)
    args = tuple(arg.to(device) for arg in example_args)
    # Size-oblivious, in export and lowering: otherwise a dynamic batch axis is assumed never to be 0 or 1,
    # and the package takes batches of 2 or more only.
    with torch.no_grad(), _size_oblivious():
        program = _export(module, args, batch)
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    if metadata is not None:
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(f"{path.stem}/extra/{VENDOR_METADATA}", json.dumps(metadata, indent=2))
    return path


def vendor_metadata(family: str, precision: str = "float32", batch: int | str = "batch") -> dict[str, Any]:
    """A model_metadata.json of the vendor's kind for a program of `family`: input and output names, shapes
    (the batch axis a string when dynamic) and dtypes."""
    inputs = [
        {"name": name, "shape": [batch, *shape], "dtype": precision if kind == "float" else kind}
        for name, shape, kind in PROGRAM_INPUTS[family]
    ]
    outputs = [{"name": name, "shape": [batch, *shape], "dtype": precision} for name, shape in PROGRAM_OUTPUTS[family]]
    return {"inputs": inputs, "outputs": outputs}


def _size_oblivious() -> Any:
    from torch.fx.experimental import _config

    return _config.patch(backed_size_oblivious=True)  # type: ignore[attr-defined]


def _export(
    module: torch.nn.Module, example_args: tuple[torch.Tensor, ...], batch: tuple[int, int] | None
) -> torch.export.ExportedProgram:
    if batch is None:
        return torch.export.export(module.eval(), example_args)
    axis = torch.export.Dim("batch", min=batch[0], max=batch[1])
    with _size_oblivious():  # see compile_aoti_package
        return torch.export.export(module.eval(), example_args, dynamic_shapes=tuple({0: axis} for _ in example_args))

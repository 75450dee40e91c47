"""AOTInductor packages, the vendor's `.pt2` format (torch._inductor.aoti_compile_and_package): what a
package says about itself, and loading and probing it.

A package holds compiled kernels for one device: a `.so` for a CPU, `.cubin` files for one CUDA
architecture. It does not record the torch release it was built with, so whether it runs is decided
by loading it under this torch and running it (`probe`). Input checks (`AOTI_RUNTIME_CHECK_INPUTS`)
are turned on, so a tensor of the wrong dtype or batch size is refused with a message, not misread;
those messages are also how the probe learns the package's precision and batch bounds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model_code.catalogue import PROGRAM_INPUTS, PROGRAM_OUTPUTS, arch_runs_on
from model_code.errors import ArtifactError

AOTI_PACKAGE = "aoti-package"
TORCH_EXPORT = "torch-export"
VENDOR_METADATA = "model_metadata.json"  # the vendor's own addition to its packages (optional)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ATEN_DTYPES = {"kFloat": "float32", "kHalf": "float16", "kBFloat16": "bfloat16"}

log = logging.getLogger(__name__)


def detect_format(path: Path) -> str:
    """ "aoti-package" or "torch-export": both are zip archives with a `.pt2` name."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path} is not a .pt2 archive (a zip file): {exc}") from None
    if any("/data/aotinductor/" in name for name in names):
        return AOTI_PACKAGE
    if any(name.endswith("/models/model.json") or "/models/" in name for name in names):
        return TORCH_EXPORT
    raise ArtifactError(f"{path} is a zip archive but neither an AOTInductor package nor a torch.export program")


@dataclass(frozen=True)
class PackageFacts:
    """What a package states about itself, read without loading it."""

    device: str  # "cpu" or "cuda"
    cuda_arch: str | None  # "sm_86"; "sm_90a" for arch-specific code
    cpu_isa: str | None
    declared: dict[str, Any] | None  # the vendor's model_metadata.json, when the package carries one


def read_facts(path: Path) -> PackageFacts:
    """Device from `*wrapper_metadata.json` (AOTI_DEVICE_KEY), CUDA architecture from the `.cubin` files."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        wrappers = [n for n in names if n.endswith("wrapper_metadata.json")]
        if not wrappers:
            raise ArtifactError(f"{path}: AOTInductor package without a *wrapper_metadata.json")
        wrapper = json.loads(archive.read(wrappers[0]))
        archs = {cubin_arch(archive.read(n), n) for n in names if n.endswith(".cubin")}
        vendor = [n for n in names if n.rsplit("/", 1)[-1] == VENDOR_METADATA]
        declared = json.loads(archive.read(vendor[0])) if vendor else None
    device = str(wrapper.get("AOTI_DEVICE_KEY", ""))
    if device not in ("cpu", "cuda"):
        raise ArtifactError(f"{path}: compiled for device '{device}'; the kit serves cpu and cuda packages")
    if len(archs) > 1:
        raise ArtifactError(f"{path}: kernels for several CUDA architectures {sorted(archs)}")
    arch = archs.pop() if archs else None
    if device == "cuda" and arch is None:
        capability = str(wrapper.get("AOTI_COMPUTE_CAPABILITY", "")).replace(".", "")
        arch = f"sm_{capability}" if capability else None
    return PackageFacts(device, arch, wrapper.get("AOTI_CPU_ISA") or None, declared)


def cubin_arch(data: bytes, name: str = "cubin") -> str:
    """The SM architecture of a CUDA ELF object: e_flags' low byte under ABI version 7, bits 8-15 under
    version 8 (CUDA 12.8+), as in LLVM's BinaryFormat/ELF.h (EF_CUDA_SM, EF_CUDA_SM_MASK)."""
    if data[:4] != b"\x7fELF" or len(data) < 52:
        raise ArtifactError(f"{name}: not an ELF object")
    (flags,) = struct.unpack_from("<I", data, 48 if data[4] == 2 else 36)  # e_flags of ELF64 / ELF32
    if data[8] >= 8:  # EI_ABIVERSION: ELFABIVERSION_CUDA_V2
        sm, accelerated = (flags >> 8) & 0xFF, bool(flags & 0x8)
    else:
        sm, accelerated = flags & 0xFF, bool(flags & 0x800)
    return f"sm_{sm}{'a' if accelerated else ''}"


def check_device(path: Path, facts: PackageFacts, device: torch.device) -> torch.device:
    """The device the package runs on here: a CPU package on the CPU; a CUDA one on a GPU it was compiled
    for. Refuses (ArtifactError) a CUDA package on a host without one, or on another architecture."""
    if facts.device == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ArtifactError(
            f"{path} is an AOTInductor package compiled for CUDA ({facts.cuda_arch or 'unknown architecture'}) "
            f"and this host serves on '{device}' (no GPU, or OPTIMUS_DEVICE=cpu): serve it on a GPU instance "
            "whose architecture it was compiled for, or compile the package for the CPU"
        )
    major, minor = torch.cuda.get_device_capability(device)
    here = f"sm_{major}{minor}"
    if facts.cuda_arch and not arch_runs_on(facts.cuda_arch, here):
        raise ArtifactError(
            f"{path} holds kernels for {facts.cuda_arch} and this GPU ({torch.cuda.get_device_name(device)}) is "
            f"{here}: compile the package for {here}, or serve it on an instance type with a {facts.cuda_arch} GPU"
        )
    return device


class AotiModule(torch.nn.Module):
    """A loaded package as a module: hands it contiguous inputs (it checks strides), casts floating ones to
    the precision compiled in, and pads a batch smaller than the package's smallest (a fixed batch axis).
    Holds no parameters: `.to()` leaves it as it is."""

    def __init__(self, compiled: Any, precision: str = "float32", batch_min: int = 1):
        super().__init__()
        self.compiled = compiled
        self.precision = precision
        self.batch_min = batch_min

    def forward(self, *inputs: torch.Tensor) -> Any:
        dtype = DTYPES[self.precision]
        n = inputs[0].shape[0]
        pad = self.batch_min - n
        args = [
            torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad > 0 else x
            for x in ((t.to(dtype) if t.is_floating_point() else t).contiguous() for t in inputs)
        ]
        outputs = self.compiled(*args)
        if pad > 0:
            outputs = [o[:n] for o in outputs] if isinstance(outputs, list | tuple) else outputs[:n]
        return outputs


def load_package(path: Path, device: torch.device) -> AotiModule:
    """Load a package with torch._inductor.aoti_load_package, input checks on."""
    os.environ.setdefault("AOTI_RUNTIME_CHECK_INPUTS", "1")  # read once per loaded package, at its first run
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else -1)
    try:
        compiled = torch._inductor.aoti_load_package(str(path), device_index=index)
    except Exception as exc:  # the loader raises many types for a package this torch cannot load
        raise ArtifactError(
            f"{path}: torch {torch.__version__} cannot load this AOTInductor package ({type(exc).__name__}: "
            f"{str(exc)[:500]}); build the serving image with the torch release the package was compiled "
            "with (TORCH_VERSION, see container/torch-versions.txt)"
        ) from None
    return AotiModule(compiled)


@dataclass(frozen=True)
class Probe:
    """What running a package showed: the precision it takes and its batch bounds (max None: none found)."""

    precision: str
    batch_min: int
    batch_max: int | None


_FIXED = re.compile(r"input_handles\[(\d+)\]: unmatched dim value at (\d+), expected: (\d+)")
_TOO_SMALL = re.compile(r"input_handles\[(\d+)\]: dim value is too small at (\d+), expected it to be >= (\d+)")
_TOO_LARGE = re.compile(r"input_handles\[(\d+)\]: dim value is too large at (\d+), expected to be <= (\d+)")
_DTYPE = re.compile(r"input_handles\[(\d+)\]: unmatched dtype, expected: \d+\(at::(\w+)\)")


def probe(module: AotiModule, family: str, device: torch.device, want: int, name: str) -> Probe:
    """Run the package at batch 1 (or its fixed batch) and at `want` tiles, in fp32 unless it asks for
    another precision; check every output's shape against the catalogue. Refuses what does not fit."""
    precision, batch, batch_min, batch_max = "float32", 1, 1, None
    for _ in range(8):
        module.precision, module.batch_min = precision, 1
        try:
            outputs = module(*example_inputs(family, batch, device))
        except RuntimeError as exc:
            text = str(exc)
            if (dtype := _DTYPE.search(text)) and dtype[2] in _ATEN_DTYPES and dtype[1] == "0":
                precision = _ATEN_DTYPES[dtype[2]]
            elif (bound := _FIXED.search(text) or _TOO_SMALL.search(text)) and bound[2] == "0":
                batch = batch_min = int(bound[3])
                batch_max = batch if _FIXED.search(text) else batch_max
            elif (bound := _TOO_LARGE.search(text)) and bound[2] == "0":
                batch = batch_max = int(bound[3])
            else:
                reason = _first(text)
                raise ArtifactError(
                    f"model '{name}': the package does not take the catalogue's inputs: {reason}"
                ) from None
            continue
        check_outputs(outputs, family, batch, name)
        if batch_max is not None or batch >= want:
            module.precision, module.batch_min = precision, batch_min
            return Probe(precision, batch_min, batch_max)
        batch = want
    raise ArtifactError(f"model '{name}': probing the package did not settle on a batch size and precision")


def example_inputs(family: str, batch: int, device: torch.device) -> list[torch.Tensor]:
    """Inputs of the catalogue's shapes for `batch` tiles: zeros (int64 for index inputs)."""
    return [
        torch.zeros((batch, *shape), dtype=torch.int64 if kind == "int64" else torch.float32, device=device)
        for _, shape, kind in PROGRAM_INPUTS[family]
    ]


def check_outputs(outputs: Any, family: str, batch: int, name: str) -> None:
    values = list(outputs) if isinstance(outputs, list | tuple) else [outputs]
    expected = [(batch, *shape) for _, shape in PROGRAM_OUTPUTS[family]]
    got = [tuple(v.shape) for v in values]
    if got != expected:
        raise ArtifactError(f"model '{name}': the package returns shapes {got}, the catalogue needs {expected}")


def check_declared(declared: dict[str, Any], family: str, name: str) -> tuple[str, int, int | None]:
    """The vendor's model_metadata.json against the catalogue: (precision, batch_min, batch_max).

    Reads `inputs` and `outputs` as lists of {name, shape, dtype} (or maps of name -> {shape, dtype});
    a string in a shape is a dynamic axis.
    """

    def entries(key: str) -> list[dict[str, Any]]:
        value = declared.get(key)
        if isinstance(value, dict):
            value = [{"name": k, **v} for k, v in value.items()]
        if not isinstance(value, list) or not all(isinstance(v, dict) and "shape" in v for v in value):
            raise ArtifactError(f"model '{name}': {VENDOR_METADATA} has no '{key}' list of shapes")
        return value

    inputs, outputs = entries("inputs"), entries("outputs")
    for key, items, wanted in (
        ("inputs", inputs, [s for _, s, _ in PROGRAM_INPUTS[family]]),
        ("outputs", outputs, [s for _, s in PROGRAM_OUTPUTS[family]]),
    ):
        shapes = [tuple(item["shape"][1:]) for item in items]
        if shapes != [tuple(s) for s in wanted]:
            raise ArtifactError(
                f"model '{name}': {VENDOR_METADATA} declares {key} {shapes} per tile, the catalogue needs {wanted}"
            )
    first = inputs[0]["shape"][0]
    precision = str(inputs[0].get("dtype", "float32")).removeprefix("torch.")
    if precision not in DTYPES:
        raise ArtifactError(f"model '{name}': {VENDOR_METADATA} declares tiles of dtype '{precision}'")
    return (precision, first, first) if isinstance(first, int) else (precision, 1, None)


def _first(text: str) -> str:
    return next((line for line in text.splitlines() if "input_handles" in line), text.splitlines()[0])[:300]

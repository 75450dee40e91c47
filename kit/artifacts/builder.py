"""Building a model artifact directory and its model.tar.gz (`kit package`, `kit verify`).

Demo models are built here; real weights are converted (timm checkpoints or snapshot directories ->
safetensors) or copied (torch.export programs, AOTInductor packages, gene sets). Either way the result
is loaded back through model_fn and every mode of every model is run on a blank tile before the
artifact is declared good (a CUDA package only where this machine has a GPU).
"""

from __future__ import annotations

import gzip
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kit import REPO, KitError
from kit.artifacts.demo_models import build_demo_model
from kit.artifacts.exporting import DTYPES
from kit.artifacts.programs import DEFAULT_INSTANCE_TYPE, describe_program
from model_code.catalogue import (
    ECHO_FIELDS,
    EMBEDDING,
    MODELS,
    N_INPUT_GENES,
    N_OUTPUT_GENES,
    PREDICTION,
)
from model_code.inference import Batch, load_models, predict_fn
from model_code.loaders import build_vit, check_state_dict
from model_code.manifest import MANIFEST, ModelEntry, read_gene_csv, read_manifest, write_manifest
from model_code.records import Record

MODEL_CODE = REPO / "model_code"
HANDLER_PACKAGES = {"timm", "safetensors", "pillow", "pydantic", "orjson", "pybase64"}  # AWS's image has torch


@dataclass(frozen=True)
class Sources:
    """Where real weights come from; all None for the demo."""

    timm_checkpoint: Path | None = None  # a file, or a snapshot directory (config.json + weights)
    timm_config: Path | None = None  # override the catalogue's architecture (tests, variants)
    h_optimus_program: Path | None = None  # an encoder as a program (the vendor's h1_optimus_cls_token.pt2)
    m_optimus_program: Path | None = None
    input_genes: Path | None = None
    output_genes: Path | None = None
    tissue_seg_program: Path | None = None
    dtype: str = "float16"
    instance_type: str = DEFAULT_INSTANCE_TYPE  # the endpoint's: a CUDA package must run on its GPU


def package(
    models: list[str],
    out: Path,
    *,
    demo: bool,
    sources: Sources = Sources(),
    with_code: bool = False,
    demo_format: str = "native",
    demo_device: str = "cpu",
) -> Path:
    """Write OUT/model/ and OUT/model.tar.gz; returns the model directory.

    The artifact is built and checked in a staging directory and only then moved into place, so a
    failure leaves no half-written artifact behind. `with_code` adds code/ for AWS's own PyTorch
    serving image (see add_code). `demo_format` "aoti" makes the demo models AOTInductor packages
    compiled for `demo_device`.
    """
    model_dir = out / "model"
    if model_dir.exists() and not (model_dir / MANIFEST).is_file() and any(model_dir.iterdir()):
        raise KitError(f"{model_dir} exists and is not an artifact; refusing to overwrite it")
    encoders = [name for name in models if MODELS[name].family == "encoder"]
    if not demo and len(encoders) > 1:
        raise KitError(f"one encoder per artifact with real weights, got {encoders}")
    staging = out / ".model.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        entries = [
            build_demo_model(n, staging, demo_format, demo_device, sources.instance_type)
            if demo
            else _real_model(n, staging, sources)
            for n in models
        ]
        write_manifest(staging, entries, add_code(staging) if with_code else ())
        check_artifact(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(model_dir, ignore_errors=True)
    staging.rename(model_dir)
    _tar(model_dir, out / "model.tar.gz")
    return model_dir


def add_code(model_dir: Path) -> list[str]:
    """code/model_code/ and code/requirements.txt: what AWS's PyTorch serving image needs to run our
    handler unchanged (it puts code/ on sys.path; set SAGEMAKER_PROGRAM=model_code.inference). The
    requirements are the handler's imports beyond torch, pinned as in our image."""
    code = model_dir / "code"
    written = []
    for source in sorted(MODEL_CODE.glob("*.py")):
        target = code / "model_code" / source.name
        _copy(source, target)
        written.append(str(target.relative_to(model_dir)))
    pins = (REPO / "container" / "requirements.txt").read_text().splitlines()
    needed = [pin for pin in pins if pin.split("==")[0] in HANDLER_PACKAGES]
    (code / "requirements.txt").write_text("\n".join(needed) + "\n")
    return [*written, "code/requirements.txt"]


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
        result = predict_fn(Batch(list(records), "list"), models)
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


def _real_model(name: str, model_dir: Path, sources: Sources) -> ModelEntry:
    family = MODELS[name].family
    programs = {"encoder": sources.h_optimus_program, "m-optimus": sources.m_optimus_program}
    program = programs.get(family, sources.tissue_seg_program)
    if family == "encoder" and program is None:
        return _timm_model(name, model_dir, sources)
    flag = "--h-optimus-program" if family == "encoder" else f"--{name}-program"
    source = _required(program, flag)
    target = f"{name}/program.pt2"
    _copy(source, model_dir / target)
    described = describe_program(name, model_dir / target, sources.instance_type)
    files = {"program": target}
    if family == "m-optimus":
        for role, genes, count in (
            ("input_genes", sources.input_genes, N_INPUT_GENES),
            ("output_genes", sources.output_genes, N_OUTPUT_GENES),
        ):
            path = _required(genes, f"--{role.replace('_', '-')}")
            read_gene_csv(path, count)
            files[role] = f"{name}/{role}.csv"
            _copy(path, model_dir / files[role])
    return ModelEntry.for_model(name, files=files, demo=False, source=f"program file {source.name}", **described)


def _timm_model(name: str, model_dir: Path, sources: Sources) -> ModelEntry:
    """A timm checkpoint (file or snapshot directory) checked against the architecture on the meta device and
    stored as safetensors in `sources.dtype`, one tensor at a time (no model, no fp32 copy)."""
    spec = MODELS[name]
    checkpoint = sources.timm_checkpoint
    if checkpoint is None:
        raise KitError("--timm-checkpoint is required for real weights (or pass --demo)")
    weights_file, published = resolve_checkpoint(checkpoint, name)
    config = dict(spec.timm_config or {})
    if sources.timm_config is not None:
        config.update(json.loads(_required(sources.timm_config, "--timm-config").read_text()))
    with torch.device("meta"):
        architecture = build_vit(config)
    state = read_checkpoint(weights_file)
    check_state_dict(architecture, state, str(weights_file))
    weights = f"{name}/weights.safetensors"
    (model_dir / name).mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(DTYPES[sources.dtype]).contiguous() for k, v in state.items()}, str(model_dir / weights))
    licence = str(published.get("pretrained_cfg", {}).get("license") or spec.licence) if published else spec.licence
    return ModelEntry.for_model(
        name,
        format="timm-safetensors",
        files={"weights": weights},
        dtype=sources.dtype,
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


def _required(path: Path | None, flag: str) -> Path:
    if path is None:
        raise KitError(f"{flag} is required for real weights (or pass --demo)")
    if not path.is_file():
        raise KitError(f"{flag}: {path} does not exist")
    return path


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _tar(model_dir: Path, target: Path) -> None:
    """model.tar.gz with the artifact's files at its root, as SageMaker extracts it to /opt/ml/model.

    Entries are world-readable and owned by root with a fixed time, so the container's non-root user can
    read them and the same models give the same bytes. Weights hardly compress: gzip's fastest level.
    """

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mode, info.uid, info.gid, info.uname, info.gname, info.mtime = 0o644, 0, 0, "root", "root", 0
        return info

    packed = gzip.GzipFile(target, "wb", compresslevel=1, mtime=0)
    with packed, tarfile.open(fileobj=packed, mode="w") as archive:
        for path in sorted(model_dir.rglob("*")):
            if path.is_file():
                path.chmod(0o644)
                archive.add(path, arcname=str(path.relative_to(model_dir)), filter=normalise)

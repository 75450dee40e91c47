"""Building a model artifact directory and its model.tar.gz (`kit package`, `kit verify`).

Demo models are built here; real weights are converted (timm checkpoints -> safetensors) or copied
(exported programs, gene sets). Either way the result is loaded back through model_fn and every mode
of every model is run on a blank tile before the artifact is declared good.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from kit import REPO, KitError
from kit.artifacts.demo_models import build_demo_model
from kit.artifacts.exporting import save_state_dict
from model_code.catalogue import (
    ECHO_FIELDS,
    EMBEDDING,
    MODELS,
    N_INPUT_GENES,
    N_OUTPUT_GENES,
    PREDICTION,
)
from model_code.inference import Batch, model_fn, predict_fn
from model_code.loaders import build_vit, load_program, load_state_dict_strict
from model_code.manifest import MANIFEST, ModelEntry, read_gene_csv, write_manifest
from model_code.records import Record

MODEL_CODE = REPO / "model_code"
HANDLER_PACKAGES = {"timm", "safetensors", "pillow", "pydantic", "orjson", "pybase64"}  # AWS's image has torch


@dataclass(frozen=True)
class Sources:
    """Where real weights come from; all None for the demo."""

    timm_checkpoint: Path | None = None
    timm_config: Path | None = None  # override the catalogue's architecture (tests, variants)
    m_optimus_program: Path | None = None
    input_genes: Path | None = None
    output_genes: Path | None = None
    tissue_seg_program: Path | None = None
    dtype: str = "float16"


def package(models: list[str], out: Path, *, demo: bool, sources: Sources = Sources(), with_code: bool = False) -> Path:
    """Write OUT/model/ and OUT/model.tar.gz; returns the model directory.

    The artifact is built and checked in a staging directory and only then moved into place, so a
    failure leaves no half-written artifact behind. `with_code` adds code/ for AWS's own PyTorch
    serving image (see add_code).
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
        entries = [build_demo_model(n, staging) if demo else _real_model(n, staging, sources) for n in models]
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
    """Load through model_fn (checksums included) and run every mode on a blank tile; returns output sizes."""
    models = model_fn(model_dir)
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


def _real_model(name: str, model_dir: Path, sources: Sources) -> ModelEntry:
    family = MODELS[name].family
    if family == "encoder":
        return _timm_model(name, model_dir, sources)
    program = sources.m_optimus_program if family == "m-optimus" else sources.tissue_seg_program
    flag = f"--{name}-program"
    target = f"{name}/program.pt2"
    _copy(_required(program, flag), model_dir / target)
    load_program(model_dir / target)  # refuse an unloadable archive now, not at deploy time
    files = {"program": target}
    if family == "m-optimus":
        for role, source, count in (
            ("input_genes", sources.input_genes, N_INPUT_GENES),
            ("output_genes", sources.output_genes, N_OUTPUT_GENES),
        ):
            path = _required(source, f"--{role.replace('_', '-')}")
            read_gene_csv(path, count)
            files[role] = f"{name}/{role}.csv"
            _copy(path, model_dir / files[role])
    return ModelEntry.for_model(name, format="torch-export", files=files, dtype="float32", demo=False)


def _timm_model(name: str, model_dir: Path, sources: Sources) -> ModelEntry:
    checkpoint = _required(sources.timm_checkpoint, "--timm-checkpoint")
    config = dict(MODELS[name].timm_config or {})
    if sources.timm_config is not None:
        config.update(json.loads(_required(sources.timm_config, "--timm-config").read_text()))
    model = build_vit(config)
    load_state_dict_strict(model, read_checkpoint(checkpoint), str(checkpoint))
    weights = f"{name}/weights.safetensors"
    save_state_dict(model, model_dir / weights, sources.dtype)
    return ModelEntry.for_model(
        name,
        format="timm-safetensors",
        files={"weights": weights},
        dtype=sources.dtype,
        demo=False,
        timm_config=config,
    )


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch checkpoint (plain, or under 'model' / 'state_dict')."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
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
    read them and the same models give the same bytes.
    """

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mode, info.uid, info.gid, info.uname, info.gname, info.mtime = 0o644, 0, 0, "root", "root", 0
        return info

    with gzip.GzipFile(target, "wb", mtime=0) as packed, tarfile.open(fileobj=packed, mode="w") as archive:
        for path in sorted(model_dir.rglob("*")):
            if path.is_file():
                path.chmod(0o644)
                archive.add(path, arcname=str(path.relative_to(model_dir)), filter=normalise)

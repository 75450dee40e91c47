"""Building a model artifact directory and its model.tar.gz (`kit package`).

Demo models are built by kit/artifacts/demo_models.py; real weights are converted (timm checkpoints or
snapshot directories -> safetensors, kit/artifacts/checkpoints.py) or copied here (torch.export programs,
AOTInductor packages, gene sets). Either way the result is loaded back through model_fn and every mode of
every model is run on a blank tile (kit/artifacts/checking.py) before the artifact is declared good.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from kit import KitError
from kit.artifacts.checking import check_artifact
from kit.artifacts.checkpoints import timm_model
from kit.artifacts.code import add_code
from kit.artifacts.demo_models import build_demo_model
from kit.artifacts.programs import describe_program
from model_code.catalogue import MODELS, N_INPUT_GENES, N_OUTPUT_GENES
from model_code.manifest import MANIFEST, ModelEntry, read_gene_csv, write_manifest
from stacks.names import DEFAULT_INSTANCE_TYPE


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


def _real_model(name: str, model_dir: Path, sources: Sources) -> ModelEntry:
    family = MODELS[name].family
    programs = {"encoder": sources.h_optimus_program, "m-optimus": sources.m_optimus_program}
    program = programs.get(family, sources.tissue_seg_program)
    if family == "encoder" and program is None:
        return timm_model(name, model_dir, sources.timm_checkpoint, sources.timm_config, sources.dtype)
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

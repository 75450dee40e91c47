"""The model artifact: a directory (what SageMaker extracts to /opt/ml/model) described by manifest.json.

The manifest lists the models, how each is stored and what it promises (tile size, normalisation,
output sizes), and the sha256 of every file. Reading a manifest checks every file against it.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from model_code import __version__
from model_code.catalogue import MODELS
from model_code.errors import ArtifactError

MANIFEST = "manifest.json"


class Normalisation(BaseModel):
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class AotiPackage(BaseModel):
    """What `kit package` found out about an AOTInductor package (see model_code.aoti)."""

    model_config = ConfigDict(extra="forbid")

    device: Literal["cpu", "cuda"]
    cuda_arch: str | None  # "sm_86": the kernels' architecture
    cpu_isa: str | None
    batch_min: int = 1
    batch_max: int | None = None  # None: no bound found
    shapes_from: Literal["model_metadata.json", "probe"]
    probed_with_torch: str | None  # the torch release that loaded and ran it when packaged; None: not run


class ModelEntry(BaseModel):
    """One model of an artifact; `files` maps a role (weights, program, input_genes, output_genes) to a path.

    `dtype` is the stored weights' dtype, or for an AOTInductor package the precision compiled in.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    format: Literal["timm-safetensors", "torch-export", "aoti-package"]
    files: dict[str, str]
    tile_size: int
    resolution: float
    normalisation: Normalisation | None
    outputs: dict[str, int]
    dtype: Literal["float32", "float16", "bfloat16"]
    timm_config: dict[str, object] | None = None
    package: AotiPackage | None = None
    pooling: Literal["cls", "cls+mean_patch"] = "cls"
    licence: str = ""
    source: str = ""  # where the weights came from
    demo: bool = False

    @classmethod
    def for_model(
        cls, name: str, *, format: str, files: dict[str, str], dtype: str, demo: bool, **extra: object
    ) -> ModelEntry:
        """An entry with the catalogue's promises (tile size, resolution, normalisation, outputs) for `name`."""
        spec = MODELS[name]
        return cls.model_validate(
            {
                "name": name,
                "format": format,
                "files": files,
                "tile_size": spec.tile_size,
                "resolution": spec.resolution,
                "normalisation": spec.normalisation,
                "outputs": spec.outputs,
                "dtype": dtype,
                "pooling": spec.pooling,
                "licence": "demo weights, no licence needed" if demo else spec.licence,
                "source": "random weights built by the kit (kit/demo_models.py)" if demo else spec.weights_source,
                "demo": demo,
                **extra,
            }
        )


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kit_version: str = __version__
    models: list[ModelEntry]
    sha256: dict[str, str]  # relative path -> hex digest, for every file of the artifact but the manifest

    def entry(self, name: str) -> ModelEntry | None:
        return next((m for m in self.models if m.name == name), None)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(model_dir: Path, models: list[ModelEntry], extra: Iterable[str] = ()) -> Manifest:
    """Hash every file the models list, and `extra` files (code), and write manifest.json beside them."""
    paths = sorted({path for entry in models for path in entry.files.values()} | set(extra))
    manifest = Manifest(models=models, sha256={p: sha256_file(model_dir / p) for p in paths})
    (model_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def read_manifest(model_dir: Path) -> Manifest:
    """Read and check an artifact: schema, catalogue consistency, presence and sha256 of every file."""
    path = model_dir / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: {model_dir} is not a model artifact made by `kit package`")
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise ArtifactError(f"{path} is not a valid manifest: {exc}") from None
    for entry in manifest.models:
        _check_against_catalogue(entry)
        unlisted = set(entry.files.values()) - set(manifest.sha256)
        if unlisted:
            raise ArtifactError(f"model '{entry.name}': files without a checksum in the manifest: {sorted(unlisted)}")
    for rel, expected in manifest.sha256.items():
        file = model_dir / rel
        if not file.is_file():
            raise ArtifactError(f"{file} is listed in the manifest but missing")
        actual = sha256_file(file)
        if actual != expected:
            raise ArtifactError(f"{file}: sha256 {actual} does not match the manifest's {expected}")
    return manifest


def _check_against_catalogue(entry: ModelEntry) -> None:
    spec = MODELS.get(entry.name)
    if spec is None:
        raise ArtifactError(f"manifest lists model '{entry.name}', which this kit does not serve")
    promised = (spec.tile_size, spec.outputs)
    if (entry.tile_size, entry.outputs) != promised:
        raise ArtifactError(
            f"model '{entry.name}': manifest promises tile {entry.tile_size} and outputs {entry.outputs}, "
            f"the wire protocol needs tile {spec.tile_size} and outputs {spec.outputs}"
        )


def read_gene_csv(path: Path, expected: int) -> list[str]:
    """A one-column CSV (header, then one Ensembl ID per row) -> the IDs, checked for count and duplicates."""
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    genes = [row[0].strip() for row in rows[1:]]
    if len(genes) != expected:
        raise ArtifactError(f"{path}: {len(genes)} genes after the header, expected {expected}")
    if len(set(genes)) != len(genes) or not all(genes):
        raise ArtifactError(f"{path}: gene IDs must be unique and non-empty")
    return genes

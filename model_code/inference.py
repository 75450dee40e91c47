"""The SageMaker handler contract: model_fn, input_fn, predict_fn, output_fn.

The only way the server reaches the models, and a user module AWS's PyTorch serving image can run
unchanged. Errors: `ClientError` (4xx, names record and field), `ForwardError` (503, retryable).

A JSON object in gives an object out; a JSON list or JSON lines give one entry per record, in order,
where a bad record's entry is its error and the others are answered normally.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from model_code import aoti
from model_code.catalogue import (
    EMBEDDING,
    MODELS,
    N_INPUT_GENES,
    N_OUTPUT_GENES,
    PREDICTION,
    PREDICTION_WITH_EMBEDDING,
)
from model_code.errors import ArtifactError, ClientError
from model_code.loaders import load_program, load_vit
from model_code.manifest import ModelEntry, read_gene_csv, read_manifest
from model_code.records import (
    JSON,
    JSONLINES,
    JSONLINES_TYPES,
    Layout,
    Record,
    decode_record,
    media_type,
    split_body,
)
from model_code.runners import RUNNERS, Runner

DEFAULT_MAX_BATCH_SIZE = 32

log = logging.getLogger(__name__)

RecordMap = Callable[
    [Callable[[tuple[int, Any]], "Record | ClientError"], list[tuple[int, Any]]], Iterable["Record | ClientError"]
]


@dataclass(frozen=True)
class Batch:
    """Records of one request (or of many, merged by the server) and, after predict_fn, their results."""

    records: list[Record | ClientError]
    layout: Layout
    results: list[dict[str, Any] | ClientError] | None = None


@dataclass
class Models:
    """Everything model_fn loaded: one runner per model the artifact holds."""

    runners: dict[str, Runner]
    model_dir: Path


def model_fn(model_dir: str | Path) -> Models:
    """Load and check every model the artifact's manifest lists, on the GPU when there is one."""
    return load_models(Path(model_dir))


def load_models(model_dir: Path, only: Iterable[str] | None = None) -> Models:
    """model_fn, optionally for some of the artifact's models (`kit package` checks those it can run here)."""
    manifest = read_manifest(model_dir)
    expected = os.environ.get("OPTIMUS_MODELS")  # set by the CDK stack: the models this endpoint must host
    held = [entry.name for entry in manifest.models]
    if expected and sorted(expected.split(",")) != sorted(held):
        raise ArtifactError(
            f"this endpoint is configured for models {expected} but the artifact holds {','.join(held)}"
        )
    device = torch.device(os.environ.get("OPTIMUS_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
    max_batch = int(os.environ.get("MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE))
    runners: dict[str, Runner] = {}
    for entry in manifest.models:
        if only is not None and entry.name not in only:
            continue
        files = {role: model_dir / path for role, path in entry.files.items()}
        runner = _load_runner(entry, files, device, max_batch)
        if entry.name == "m-optimus":
            runner.extra_metadata = {
                "input_genes": read_gene_csv(files["input_genes"], N_INPUT_GENES),
                "output_genes": read_gene_csv(files["output_genes"], N_OUTPUT_GENES),
            }
        runners[entry.name] = runner
    return Models(runners, model_dir)


def _load_runner(entry: ModelEntry, files: dict[str, Path], device: torch.device, max_batch: int) -> Runner:
    """One model's module on its device, in the runner of its family. An AOTInductor package is probed
    first (precision, batch bounds, output shapes) under this torch, and its batches capped at its bound."""
    family = MODELS[entry.name].family
    module: torch.nn.Module
    if entry.format == "timm-safetensors":
        module = load_vit(dict(entry.timm_config or {}), files["weights"], device)
    elif entry.format == "torch-export":
        module = load_program(files["program"], device)
    else:
        facts = aoti.read_facts(files["program"])
        device = aoti.check_device(files["program"], facts, device)
        module = aoti.load_package(files["program"], device)
        probed = aoti.probe(module, family, device, max_batch, entry.name)
        max_batch = min(max_batch, probed.batch_max or max_batch)
        log.info(
            "model %s: AOTInductor package for %s%s, runs in %s as compiled (no autocast), batches of %d to %d tiles",
            entry.name, facts.device, f" {facts.cuda_arch}" if facts.cuda_arch else "", probed.precision,
            probed.batch_min, max_batch,
        )  # fmt: skip
    return RUNNERS[family](entry, module, device, max_batch)


def input_fn(input_data: bytes | str, content_type: str) -> Batch:
    """Parse and decode a request; a single bad record (or a body that is not records) raises.

    Exactly two parameters: AWS's toolkit passes its context to a handler with one more.
    """
    return parse_request(input_data, content_type, None)


def parse_request(
    input_data: bytes | str, content_type: str, overrides: dict[str, str] | None, map_records: RecordMap = map
) -> Batch:
    """input_fn, where `overrides` (the REST routes' model and mode) fill in or must agree with each record,
    and `map_records` may decode the records of a many-record request in parallel (the server's pool)."""
    raw, layout = split_body(input_data, content_type)
    records = list(map_records(lambda item: decode_record(item[1], item[0], overrides), list(enumerate(raw))))
    batch = Batch(records, layout)
    _raise_single(batch.records, layout)
    return batch


def predict_fn(data: Batch, model: Models) -> Batch:
    """Run each model's records together as batched tensors; metadata records need no forward."""
    results: list[dict[str, Any] | ClientError] = [
        record if isinstance(record, ClientError) else {} for record in data.records
    ]
    groups: dict[str, list[tuple[int, Record]]] = {}
    for i, record in enumerate(data.records):
        if isinstance(record, ClientError):
            continue
        runner = model.runners.get(record.model)
        if runner is None:
            held = ", ".join(model.runners) or "none"
            results[i] = ClientError(
                f"model '{record.model}' is not hosted by this endpoint (it hosts: {held})",
                field="model_name",
                status=404,
                record=record.index,
            )
        elif record.mode == "metadata":
            results[i] = runner.metadata()
        else:
            groups.setdefault(record.model, []).append((i, record))
    for name, members in groups.items():
        outputs = model.runners[name]([record for _, record in members])
        for (i, record), output in zip(members, outputs, strict=True):
            results[i] = response(record, output)
    return with_results(data, results)


def with_results(data: Batch, results: list[dict[str, Any] | ClientError]) -> Batch:
    """The request with its results (predict_fn's, or the server's batcher's); a lone bad record raises."""
    _raise_single(results, data.layout)
    return replace(data, results=results)


def response(record: Record, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """The vendor's response layout: output, the echoed tile fields, then embedding when asked for."""
    first = EMBEDDING if record.mode == EMBEDDING else PREDICTION
    body: dict[str, Any] = {"output": outputs[first], **record.echo}
    if record.mode == PREDICTION_WITH_EMBEDDING:
        body["embedding"] = outputs[EMBEDDING]
    return body


def output_fn(prediction: Batch, accept: str | None) -> tuple[bytes, str]:
    """Serialise results as JSON (object or list, as the request was) or JSON lines; returns (body, type)."""
    assert prediction.results is not None, "output_fn needs the Batch that predict_fn returned"
    entries = [r.to_dict() if isinstance(r, ClientError) else r for r in prediction.results]
    kind = media_type(accept)
    if kind in ("", "*/*"):
        kind = JSONLINES if prediction.layout == "lines" else JSON
    if kind in JSONLINES_TYPES:
        return b"".join(dumps(entry) + b"\n" for entry in entries), JSONLINES
    if kind == JSON:
        return dumps(entries[0] if prediction.layout == "object" else entries), JSON
    raise ClientError(f"cannot answer in '{accept}'; accept {JSON} or {JSONLINES}", field="accept", status=406)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def _raise_single(entries: list[Any], layout: Layout) -> None:
    """A request of one JSON object answers its error as the whole response."""
    if layout == "object" and isinstance(entries[0], ClientError):
        raise entries[0]

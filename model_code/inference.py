"""The SageMaker handler contract: model_fn, input_fn, predict_fn, output_fn.

The only way the server reaches the models, and a user module AWS's PyTorch serving image can run
unchanged. Errors: `ClientError` (4xx, names record and field), `ForwardError` (503, retryable).

A JSON object in gives an object out; a JSON list or JSON lines give one entry per record, in order,
where a bad record's entry is its error and the others are answered normally. A failed forward pass is
split in halves and retried, so only the tile that fails gets a 503 entry.
"""

from __future__ import annotations

import functools
import json
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
from model_code.decoding import decode_item
from model_code.errors import ArtifactError, ClientError, ForwardError, Result
from model_code.loaders import load_program, load_vit
from model_code.manifest import ModelEntry, read_gene_csv, read_manifest
from model_code.records import (
    JSONLINES,
    Layout,
    Record,
    check_answer_size,
    negotiate,
    split_body,
)
from model_code.runners import RUNNERS, ForwardHooks, Runner
from model_code.settings import Limits, max_batch_size

log = logging.getLogger(__name__)

RecordMap = Callable[
    [Callable[[tuple[int, Any]], "Record | ClientError"], list[tuple[int, Any]]], Iterable["Record | ClientError"]
]


@dataclass(frozen=True)
class ParsedRequest:
    """input_fn's request: its records and layout and, after predict_fn, their results (the server hands
    predict_fn a forward batch's records, from many requests, as one of layout "list")."""

    records: list[Record | ClientError]
    layout: Layout
    results: list[Result] | None = None


@dataclass
class Models:
    """Everything model_fn loaded: one runner per model the artifact holds."""

    runners: dict[str, Runner]
    model_dir: Path

    @functools.cached_property
    def metadata_bytes(self) -> dict[str, int]:
        """The size of each model's `mode: metadata` answer (its gene lists, for M-Optimus)."""
        return {name: len(dumps(runner.metadata())) for name, runner in self.runners.items()}


def model_fn(model_dir: str | Path) -> Models:
    """Load and check every model the artifact's manifest lists, on the GPU when there is one."""
    return load_models(model_dir)


def serving_device() -> torch.device:
    """OPTIMUS_DEVICE, else the GPU when there is one, else the CPU."""
    return torch.device(os.environ.get("OPTIMUS_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_models(model_dir: str | Path, hooks: ForwardHooks | None = None, only: Iterable[str] | None = None) -> Models:
    """model_fn, with the server's callbacks around each forward pass; optionally for some of the artifact's
    models (`kit package` checks those it can run here)."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    expected = os.environ.get("OPTIMUS_MODELS")  # set by the CDK stack: the models this endpoint must host
    held = [entry.name for entry in manifest.models]
    if expected and sorted(expected.split(",")) != sorted(held):
        raise ArtifactError(
            f"this endpoint is configured for models {expected} but the artifact holds {','.join(held)}"
        )
    device = serving_device()
    max_batch = max_batch_size()
    runners: dict[str, Runner] = {}
    for entry in manifest.models:
        if only is not None and entry.name not in only:
            continue
        files = {role: model_dir / path for role, path in entry.files.items()}
        runner = _load_runner(entry, files, device, max_batch, hooks)
        if "input_genes" in files:  # a model with gene sets names them in its metadata
            runner.extra_metadata = {
                "input_genes": read_gene_csv(files["input_genes"], N_INPUT_GENES),
                "output_genes": read_gene_csv(files["output_genes"], N_OUTPUT_GENES),
            }
        runners[entry.name] = runner
    return Models(runners, model_dir)


def _load_runner(
    entry: ModelEntry, files: dict[str, Path], device: torch.device, max_batch: int, hooks: ForwardHooks | None
) -> Runner:
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
    return RUNNERS[family](entry, module, device, max_batch, hooks)


def input_fn(input_data: bytes | str, content_type: str) -> ParsedRequest:
    """Parse and decode a request; a single bad record (or a body that is not records) raises.

    Exactly two parameters: AWS's toolkit passes its context to a handler with one more.
    """
    return parse_request(input_data, content_type, None)


def parse_request(
    input_data: bytes | str,
    content_type: str,
    overrides: dict[str, str] | None,
    map_records: RecordMap = map,
    limits: Limits | None = None,
    models: Models | None = None,
) -> ParsedRequest:
    """input_fn, where `overrides` (the REST routes' model and mode) fill in or must agree with each record,
    and `map_records` may decode the records of a many-record request in parallel (the server's pool).
    Too many records, or records whose answers cannot fit `limits` (default: from the environment), are a 413
    before any tile is decoded (metadata answers counted at their size in `models`, when given)."""
    limits = limits or Limits.from_env()
    raw, layout = split_body(input_data, content_type, limits.max_records)
    check_answer_size(raw, overrides, limits.max_response_bytes, models.metadata_bytes if models else None)
    records = list(map_records(functools.partial(decode_item, overrides=overrides), list(enumerate(raw))))
    parsed = ParsedRequest(records, layout)
    _raise_single(parsed.records, layout)
    return parsed


def predict_fn(data: ParsedRequest, model: Models) -> ParsedRequest:
    """Run each model's records together as batched tensors; metadata records need no forward."""
    results: list[Result | None] = [answer_directly(record, model) for record in data.records]
    groups: dict[str, list[tuple[int, Record]]] = {}
    for i, record in enumerate(data.records):
        if results[i] is None:
            assert isinstance(record, Record)
            groups.setdefault(record.model, []).append((i, record))
    for name, members in groups.items():
        outputs = run_isolating(model.runners[name], [record for _, record in members])
        for (i, record), output in zip(members, outputs, strict=True):
            results[i] = output if isinstance(output, ForwardError) else response(record, output)
    return with_results(data, [result for result in results if result is not None])


def answer_directly(record: Record | ClientError, models: Models) -> Result | None:
    """The answer of a record that needs no forward pass (an error, metadata, a model not hosted), else None."""
    if isinstance(record, ClientError):
        return record
    runner = models.runners.get(record.model)
    if runner is None:
        held = ", ".join(models.runners) or "none"
        return ClientError(
            f"model '{record.model}' is not hosted by this endpoint (it hosts: {held})",
            field="model_name",
            status=404,
            record=record.index,
        )
    return runner.metadata() if record.mode == "metadata" else None


def run_isolating(runner: Runner, records: list[Record]) -> list[dict[str, np.ndarray] | ForwardError]:
    """The runner's outputs; when a forward pass fails, its records are split in halves and retried, so
    only a tile that fails alone gets the ForwardError and the others are answered."""
    try:
        return list(runner(records))
    except ForwardError as error:
        if len(records) == 1:
            return [error]
        half = len(records) // 2
        return run_isolating(runner, records[:half]) + run_isolating(runner, records[half:])


def with_results(data: ParsedRequest, results: list[Result]) -> ParsedRequest:
    """The request with its results (predict_fn's, or the server's batcher's); a lone failed record raises."""
    _raise_single(results, data.layout)
    return replace(data, results=results)


def response(record: Record, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """The vendor's response layout: output, the echoed tile fields, then embedding when asked for."""
    first = EMBEDDING if record.mode == EMBEDDING else PREDICTION
    body: dict[str, Any] = {"output": outputs[first], **record.echo}
    if record.mode == PREDICTION_WITH_EMBEDDING:
        body["embedding"] = outputs[EMBEDDING]
    return body


def output_fn(prediction: ParsedRequest, accept: str | None) -> tuple[bytes, str]:
    """Serialise results as JSON (object or list, as the request was) or JSON lines; returns (body, type)."""
    return serialise(prediction, negotiate(accept, prediction.layout), Limits.from_env().max_response_bytes)


def serialise(prediction: ParsedRequest, kind: str, max_bytes: int) -> tuple[bytes, str]:
    """output_fn's body in a negotiated media type; an answer over `max_bytes` is a 413 (MAX_RESPONSE_MB),
    found entry by entry, so no more than the limit is ever built."""
    assert prediction.results is not None, "output_fn needs the ParsedRequest that predict_fn returned"
    if prediction.layout == "object" and kind != JSONLINES:
        parts = [_entry(prediction.results[0])]
        _check_size(len(parts[0]), max_bytes)
        return parts[0], kind
    parts, size = [], 0
    for result in prediction.results:
        parts.append(_entry(result))
        size += len(parts[-1]) + 1
        _check_size(size, max_bytes)
    if kind == JSONLINES:
        return b"".join(part + b"\n" for part in parts), kind
    return b"[" + b",".join(parts) + b"]", kind


def _entry(result: Result) -> bytes:
    return dumps(result.to_dict() if isinstance(result, ClientError | ForwardError) else result)


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ClientError(
            f"the answer is over the limit of {max_bytes} bytes (MAX_RESPONSE_MB); send fewer records per request",
            field="body",
            status=413,
        )


def dumps(value: Any) -> bytes:
    """JSON bytes; strings orjson refuses (lone surrogates such as "\\ud800", which JSON text may carry)
    are written as escapes by the standard library instead."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return json.dumps(value, default=_plain, separators=(",", ":")).encode()


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _raise_single(entries: list[Any], layout: Layout) -> None:
    """A request of one JSON object answers its error as the whole response."""
    if layout == "object" and isinstance(entries[0], ClientError | ForwardError):
        raise entries[0]

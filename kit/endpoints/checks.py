"""The smoke test's checks (`kit smoke`): deployed (or local) endpoints, the way CI should before traffic.

For every model of every endpoint: metadata, every mode on a real H&E sample tile of the right size,
output lengths and finiteness, value ranges, the echoed tile fields, the same tile twice giving the same
output, and p50/p95 latency over N requests. A readable report, plus --json and --junit-xml for CI.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

import numpy as np
import orjson

from kit.endpoints.client import EndpointClient, EndpointError
from kit.endpoints.samples import sample_png
from model_code.catalogue import (
    EMBEDDING,
    METADATA,
    MODELS,
    N_INPUT_GENES,
    PREDICTION,
    PREDICTION_WITH_EMBEDDING,
    ModelSpec,
)

if TYPE_CHECKING:
    import boto3

ECHO = {"slide_name": "smoke-test", "x": 448, "y": 896, "tissue_ratio": 0.5, "patch_idx": 7}
# GPU batches of different make-up may round differently in fp16: "the same" within this tolerance.
SAME_RTOL, SAME_ATOL = 1e-2, 1e-2


@dataclass
class Check:
    endpoint: str
    model: str
    name: str
    passed: bool
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"passed": self.passed, "checks": [asdict(c) for c in self.checks], "latency_ms": self.latency_ms},
            option=orjson.OPT_INDENT_2,
        )

    def to_junit(self) -> bytes:
        suite = ElementTree.Element(
            "testsuite",
            name="optimus-smoke",
            tests=str(len(self.checks)),
            failures=str(sum(not c.passed for c in self.checks)),
        )
        for check in self.checks:
            case = ElementTree.SubElement(
                suite,
                "testcase",
                classname=f"{check.endpoint}.{check.model}",
                name=check.name,
                time=f"{check.seconds:.3f}",
            )
            if not check.passed:
                ElementTree.SubElement(case, "failure", message=check.detail[:500]).text = check.detail
        return ElementTree.tostring(suite, encoding="utf-8", xml_declaration=True)

    def text(self) -> str:
        lines = []
        for check in self.checks:
            mark = "ok  " if check.passed else "FAIL"
            detail = f"  ({check.detail})" if check.detail else ""
            lines.append(f"{mark} {check.endpoint} {check.model:<11} {check.name}{detail}")
        for key, figures in self.latency_ms.items():
            lines.append(
                f"latency {key}: p50 {figures['p50']:.1f} ms, p95 {figures['p95']:.1f} ms over {int(figures['n'])}"
            )
        failed = sum(not c.passed for c in self.checks)
        lines.append(f"{len(self.checks) - failed} passed, {failed} failed")
        return "\n".join(lines)


def smoke(
    endpoints: dict[str, list[str]],
    *,
    session: boto3.Session | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    requests: int = 20,
    token: str | None = None,
) -> Report:
    """endpoints: endpoint name -> models it must host; token: for an on-premise server that asks for one."""
    report = Report()
    for endpoint, models in endpoints.items():
        for model in models:
            client = EndpointClient(
                endpoint, model, region=region, session=session, endpoint_url=endpoint_url, max_attempts=3, token=token
            )
            _check_model(report, client, model, requests)
    return report


def _check_model(report: Report, client: EndpointClient, model: str, requests: int) -> None:
    def run(name: str, check: Callable[[], str]) -> bool:
        began = time.perf_counter()
        try:
            detail, passed = check(), True
        except (AssertionError, EndpointError, KeyError, TypeError, ValueError) as exc:
            detail, passed = f"{type(exc).__name__}: {exc}", False
        report.checks.append(Check(client.endpoint_name, model, name, passed, detail, time.perf_counter() - began))
        return passed

    spec = MODELS.get(model)
    if spec is None:
        run("known model", lambda: _fail(f"the kit knows no model '{model}'"))
        return
    meta: dict[str, Any] = {}
    if not run("metadata", lambda: _metadata(client, spec, meta)):
        return  # the endpoint does not host it (or does not answer): nothing else can pass
    png = sample_png(spec.tile_size)
    rna = [float(i % 50) for i in range(len(meta.get("input_genes", [])))] or None
    for mode in spec.modes:
        if mode != METADATA:
            run(f"mode {mode}", functools.partial(_mode, client, spec, mode, png, rna))
    first = next(m for m in spec.modes if m != METADATA)
    run("same tile twice, same output", lambda: _repeatable(client, first, png, rna))
    run(f"latency over {requests} requests", lambda: _latency(report, client, first, png, rna, requests))


def _fail(message: str) -> str:
    raise AssertionError(message)


def _metadata(client: EndpointClient, spec: ModelSpec, meta: dict[str, Any]) -> str:
    meta.update(client.metadata())
    assert meta.get("model_name") == spec.name, f"metadata names model {meta.get('model_name')!r}"
    square = [spec.tile_size, spec.tile_size]  # [height, width], the vendor's layout
    assert meta.get("tile_size") == square, f"tile_size {meta.get('tile_size')}, expected {square}"
    assert meta.get("embedding_dim") == spec.embedding_dim, f"embedding_dim {meta.get('embedding_dim')}"
    if spec.family in GENE_FAMILIES:
        sizes = (len(meta.get("input_genes", ())), len(meta.get("output_genes", ())))
        assert sizes == (N_INPUT_GENES, spec.outputs[PREDICTION]), f"gene sets of {sizes[0]} and {sizes[1]} IDs"
    return "demo model" if meta.get("demo") else ""


def _ask(client: EndpointClient, mode: str, png: bytes, rna: list[float] | None) -> dict[str, Any]:
    if mode == EMBEDDING:
        return client.embed(png, **ECHO)
    if mode == PREDICTION:
        return client.predict(png, bulk_rna=rna, **ECHO)
    return client.predict_with_embedding(png, bulk_rna=rna, **ECHO)


def _mode(client: EndpointClient, spec: ModelSpec, mode: str, png: bytes, rna: list[float] | None) -> str:
    answer = _ask(client, mode, png, rna)
    fields = {"output": EMBEDDING if mode == EMBEDDING else PREDICTION}
    if mode == PREDICTION_WITH_EMBEDDING:
        fields["embedding"] = EMBEDDING
    for name, output in fields.items():
        values = np.asarray(answer[name], dtype=np.float64)
        expected = spec.outputs[output]
        assert values.shape == (expected,), f"{name} has {values.size} values, expected {expected}"
        assert np.isfinite(values).all(), f"{name} has non-finite values"
    if mode != EMBEDDING:
        PREDICTION_CHECKS[spec.family](np.asarray(answer["output"]))
    echoed = {key: answer.get(key) for key in ECHO}
    assert echoed == ECHO, f"echoed {echoed}, sent {ECHO}"
    return ""


def _repeatable(client: EndpointClient, mode: str, png: bytes, rna: list[float] | None) -> str:
    first, second = (np.asarray(_ask(client, mode, png, rna)["output"]) for _ in range(2))
    assert np.allclose(first, second, rtol=SAME_RTOL, atol=SAME_ATOL), "the same tile gave different outputs"
    return "identical" if np.array_equal(first, second) else f"within rtol {SAME_RTOL}"


def _latency(report: Report, client: EndpointClient, mode: str, png: bytes, rna: list[float] | None, n: int) -> str:
    times = []
    for _ in range(max(n, 2)):
        began = time.perf_counter()
        _ask(client, mode, png, rna)
        times.append((time.perf_counter() - began) * 1000)
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    figures = {"p50": cuts[49], "p95": cuts[94], "n": float(len(times))}
    report.latency_ms[f"{client.endpoint_name}/{client.model_name}/{mode}"] = figures
    return f"p50 {figures['p50']:.1f} ms, p95 {figures['p95']:.1f} ms"


def _binary_mask(output: np.ndarray) -> None:
    assert set(np.unique(output)) <= {0.0, 1.0}, "the mask has values other than 0 and 1"


def _whole_counts(output: np.ndarray) -> None:
    assert (output >= 0).all() and (output == np.round(output)).all(), "gene counts must be whole and >= 0"


# What a prediction must look like, by the catalogue's model family; gene sets come with predicted counts.
PREDICTION_CHECKS: dict[str, Callable[[np.ndarray], None]] = {"tissue-seg": _binary_mask, "m-optimus": _whole_counts}
GENE_FAMILIES = {"m-optimus"}

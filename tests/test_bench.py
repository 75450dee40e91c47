"""The benchmarks run (short versions): the GPU benchmark's CPU mode and the HTTP load generator."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from bench.gpu_bench import flops_per_tile, main, peak_for
from bench.http_load import build_request, run_load
from bench.serving import compare, forward_bound
from kit.endpoints.samples import wire_record
from kit.local import local_server
from model_code.catalogue import H_OPTIMUS_TIMM
from model_code.settings import Settings
from tests.serving import free_port, serve_in_thread


def test_gpu_bench_tiny_mode_writes_figures(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    assert main(["--tiny", "--repeats", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["batch"] for row in result["rows"]] == [1, 2, 4]
    assert all(row["tiles_per_s"] > 0 for row in result["rows"])


def test_real_size_flops_match_the_vit_g_arithmetic() -> None:
    # 2 FLOPs per multiply-add over ~1.1 B parameters for 261 tokens (256 patches, CLS, 4 registers),
    # plus attention: about 0.6 TFLOP per tile.
    assert 5.7e11 < flops_per_tile(dict(H_OPTIMUS_TIMM)) < 6.5e11
    assert peak_for("NVIDIA A10G") == 70.0 and peak_for("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_for("Some Other GPU") is None


def test_load_generator_against_the_server(artifact: Path) -> None:
    port = free_port()
    with serve_in_thread(Settings(model_dir=artifact, port=port, decode_workers=1)):
        request = build_request("127.0.0.1", port, "/invocations", orjson.dumps(wire_record("h1", "embedding")))
        result = run_load("127.0.0.1", port, request, concurrency=4, warmup_s=0.2, duration_s=1.0)
    assert result.requests > 0 and result.errors == 0
    assert 0 < result.percentile(50) <= result.percentile(95)


def test_litserve_contender_runs_the_kits_handler_with_the_same_answers(artifact: Path, models, tmp_path: Path) -> None:
    from tests.test_handler import invoke_json

    port = free_port()
    log = tmp_path / "batches"
    command = [sys.executable, "-m", "bench.litserve_server", "--model-dir", str(artifact), "--port", str(port)]
    record = wire_record("h1", "embedding")
    with local_server([*command, "--batch-log", str(log)], port) as server:
        answer = httpx.post(f"{server.url}/invocations", json=record, timeout=60)
        broken = httpx.post(f"{server.url}/invocations", json={**record, "image_data": "%%%"}, timeout=60)
    assert answer.status_code == 200
    np.testing.assert_array_equal(answer.json()["output"], invoke_json(models, record)["output"])
    assert log.read_text().split() == ["1"]  # the forward pass logged its batch size
    assert broken.status_code == 400  # a tile that does not decode: LitServe's client error


def test_pipelining_bound_is_the_lower_of_forward_and_cpu() -> None:
    assert forward_bound(8) == pytest.approx(8 / 0.028) and forward_bound(64) == forward_bound(32)

    def row(part: str, concurrency: int, server: str, tiles: float) -> dict[str, object]:
        return {"part": part, "concurrency": concurrency, "server": server, "tiles_per_s": tiles, "p95_ms": 10.0}

    summary = [
        row("(b)", 8, "kit", 1000.0),  # the CPUs could do more than the device: the forward bound holds
        row("(b)", 32, "kit", 300.0),  # the CPUs are the limit
        *(row("(c)", c, name, 200.0) for c in (8, 32) for name in ("kit", "litserve")),
    ]
    by_concurrency = {entry["concurrency"]: entry for entry in compare(summary, "kit", "litserve")}
    assert by_concurrency[8]["bound_is"] == "forward" and by_concurrency[8]["over_bound"] == round(200 / (8 / 0.028), 2)
    assert by_concurrency[32]["bound_is"] == "cpu" and by_concurrency[32]["over_bound"] == 0.67
    assert by_concurrency[32]["tiles_per_s_ratio"] == 1.0

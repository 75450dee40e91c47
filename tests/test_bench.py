"""The benchmarks run (short versions): the GPU benchmark's CPU mode and the HTTP load generator."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from bench.gpu_bench import flops_per_tile, main, peak_for
from bench.http_load import build_request, run_load
from kit.endpoints.samples import wire_record
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

"""The benchmarks run (short versions): the GPU benchmark's CPU mode and the HTTP load generator."""

from __future__ import annotations

import argparse
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
from bench.simulated_device import SimulatedDevice, forward_ms
from kit.endpoints.samples import wire_record
from kit.local import local_server, metric
from model_code.catalogue import H_OPTIMUS_TIMM
from model_code.settings import Settings
from tests.support.handler import invoke_json
from tests.support.serving import free_port, serve_in_thread


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


def test_pipelining_bound_is_the_lower_of_forward_and_decode_ceiling() -> None:
    # two groups of clients taking turns: 4-tile passes of 24 ms at c=8, 16 of 36 ms at 32, 32 of 52 ms at 64
    assert forward_bound(8) == pytest.approx(4 / 0.024) and forward_bound(32) == pytest.approx(16 / 0.036)
    assert forward_bound(64) == pytest.approx(32 / 0.052) and forward_bound(128) == forward_bound(64)

    def row(part: str, concurrency: int, server: str, tiles: float) -> dict[str, object]:
        return {"part": part, "concurrency": concurrency, "server": server, "tiles_per_s": tiles, "p95_ms": 10.0}

    summary = [row("(c)", c, name, 150.0) for c in (8, 32) for name in ("kit", "litserve")]
    by_concurrency = {entry["concurrency"]: entry for entry in compare(summary, "kit", "litserve", 300.0)}
    assert by_concurrency[8]["bound_is"] == "forward" and by_concurrency[8]["over_bound"] == 0.9  # 150 / 166.7
    assert by_concurrency[32]["bound_is"] == "decode" and by_concurrency[32]["over_bound"] == 0.5  # 150 / 300
    assert by_concurrency[32]["tiles_per_s_ratio"] == 1.0
    unmeasured = {entry["concurrency"]: entry for entry in compare(summary, "kit", "litserve", None)}
    assert unmeasured[32]["bound_is"] == "forward"  # --simulated-only: no decode ceiling


def test_the_simulated_device_waits_inside_the_pass_and_its_poison_slide_fails_it(artifact: Path) -> None:
    """bench.simulated_device's wait counts in the server's forward time; a pass holding a poison tile fails."""
    device = SimulatedDevice(forward_ms=(300, 0), poison_slide="poison")
    settings = Settings(model_dir=artifact, port=free_port(), max_batch_wait_ms=0)
    with serve_in_thread(settings, device.hooks()) as running:
        fine = httpx.post(f"{running.url}/invocations", json=wire_record("h1", "embedding"), timeout=60)
        poisoned = {**wire_record("h1", "embedding"), "slide_name": "poison"}
        failed = httpx.post(f"{running.url}/invocations", json=poisoned, timeout=60)
        forward_s = metric(running.url, "optimus_forward_seconds_sum", model="h1")
    assert fine.status_code == 200 and failed.status_code == 503
    assert "simulated device failure" in failed.text
    assert forward_s >= 0.3  # the good pass's time holds the simulated wait (a failed pass is not timed)


def test_a_simulated_pass_lasts_its_device_time_the_real_forward_inside_it() -> None:
    device = SimulatedDevice(forward_ms=(20, 1))
    assert device.wait_s(16, 0.0) == pytest.approx(0.036)  # 20 ms + 16 x 1 ms
    assert device.wait_s(16, 0.021) == pytest.approx(0.015)  # the real forward took 21 ms of it
    assert device.wait_s(16, 0.050) == 0.0  # a real forward longer than the device time is not extended
    assert SimulatedDevice().wait_s(16, 0.0) == 0.0  # no --forward-ms: no wait


def test_simulated_device_refuses_a_forward_time_that_is_not_two_numbers() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="must be two numbers of milliseconds"):
        forward_ms("20")


def test_decode_pool_benchmark_compares_both_pools(tmp_path: Path) -> None:
    from bench import decode_pool

    out = tmp_path / "decode.json"
    assert decode_pool.main(["--tiles", "12", "--threads", "2", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert set(figures) == {"kit_pipes_1", "process_pool_1", "kit_pipes_2", "process_pool_2"}
    assert all(row["tiles_per_s"] > 0 and row["server_cpu_ms_per_tile"] > 0 for row in figures.values())

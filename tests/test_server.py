"""The server over real HTTP: boto3 against the SageMaker routes, the REST API, errors, batching, faults."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import numpy as np
import orjson
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError as BotoClientError

from kit.endpoints.samples import synthetic_counts, wire_record
from kit.local import free_port
from model_code.batching import GIL_SWITCH_INTERVAL_S
from model_code.settings import Settings
from tests.support.handler import invoke_json
from tests.support.images import png_bytes, random_tile
from tests.support.polling import eventually
from tests.support.serving import HeldForwards, Running, serve_in_thread


def runtime(url: str):
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"max_attempts": 1}),
    )


REAL_TIME = ["h1_embed_input.json", "m_embed_input.json", "m_predict_input.json", "tissue_seg_input.json"]


@pytest.mark.parametrize("name", REAL_TIME)
def test_vendor_real_time_payloads_through_boto3(running: Running, vendor: Path, name: str) -> None:
    body = (vendor / "real-time" / name).read_bytes()
    expected = json.loads((vendor / "real-time" / f"{name}.out").read_text())
    answer = runtime(running.url).invoke_endpoint(EndpointName="local", ContentType="application/json", Body=body)
    assert answer["ContentType"] == "application/json"
    result = json.loads(answer["Body"].read())
    assert len(result["output"]) == len(expected["output"])
    assert set(expected) <= set(result)


@pytest.mark.parametrize("name", ["h1_embed_inputs.jsonl", "m_embed_inputs.jsonl"])
def test_vendor_batch_files_through_boto3_in_order(running: Running, vendor: Path, name: str) -> None:
    body = (vendor / "batch" / name).read_bytes()
    expected = [json.loads(line) for line in (vendor / "batch" / f"{name}.out").read_text().splitlines()]
    answer = runtime(running.url).invoke_endpoint(
        EndpointName="batch", ContentType="application/jsonlines", Accept="application/jsonlines", Body=body
    )
    lines = [json.loads(line) for line in answer["Body"].read().decode().splitlines()]
    assert [line["patch_idx"] for line in lines] == [line["patch_idx"] for line in expected]
    assert [len(line["output"]) for line in lines] == [len(line["output"]) for line in expected]
    assert [list(line) for line in lines] == [list(line) for line in expected]


def test_jsonlines_with_a_bad_record_answers_an_error_line_in_place(running: Running) -> None:
    records = [orjson.dumps(wire_record("h1", "embedding", patch_idx=i)) for i in range(5)]
    records[2] = b'{"model_name": "h1", "mode": "embedding", "image_data": "!!"}'
    response = httpx.post(
        f"{running.url}/invocations",
        content=b"\n".join(records),
        headers={"content-type": "application/jsonlines", "accept": "application/jsonlines"},
    )
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line.get("patch_idx") for line in lines] == [0, 1, None, 3, 4]
    assert lines[2]["field"] == "image_data" and lines[2]["record"] == 2


def test_boto3_sees_errors_as_sagemaker_model_errors(running: Running) -> None:
    bad = orjson.dumps({**wire_record("h1", "embedding"), "image_data": "%%%"})
    client = runtime(running.url)
    with pytest.raises(client.exceptions.ModelError) as caught:
        client.invoke_endpoint(EndpointName="local", ContentType="application/json", Body=bad)
    error = caught.value.response
    assert error["OriginalStatusCode"] == 400 and json.loads(error["OriginalMessage"])["field"] == "image_data"
    assert "Received client error (400) from primary" in error["Error"]["Message"]
    with pytest.raises(BotoClientError) as unsupported:
        client.invoke_endpoint(EndpointName="local", ContentType="text/csv", Body=b"a,b")
    assert unsupported.value.response["OriginalStatusCode"] == 415


def test_rest_routes(running: Running) -> None:
    tile = wire_record("m-optimus", "embedding")
    del tile["model_name"], tile["mode"]
    base = running.url
    embedding = httpx.post(f"{base}/api/embed/m-optimus", json=tile).json()
    assert len(embedding["output"]) == 1536
    predicted = httpx.post(f"{base}/api/predict/m-optimus", json={**tile, "bulk_rna": synthetic_counts()}).json()
    assert len(predicted["output"]) == 6002
    both = httpx.post(f"{base}/api/predict_with_embedding/m-optimus-stx", json=tile).json()
    assert len(both["output"]) == 6002 and len(both["embedding"]) == 1536
    h1 = httpx.post(f"{base}/api/embed/h1", json=[wire_record("h1", "embedding")] * 3).json()
    assert [len(a["output"]) for a in h1] == [1536] * 3
    assert httpx.get(f"{base}/api/metadata/h1").json()["embedding_dim"] == 1536
    assert len(httpx.post(f"{base}/api/metadata/m-optimus").json()["output_genes"]) == 6002
    contradiction = httpx.post(f"{base}/api/embed/h1", json=wire_record("tissue-seg", "prediction"))
    assert contradiction.status_code == 400 and contradiction.json()["field"] == "model_name"
    docs = httpx.get(f"{base}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = httpx.get(f"{base}/openapi.json").json()["paths"]
    assert {"/invocations", "/api/embed/{model}", "/api/metadata/{model}", "/ping", "/metrics"} <= set(paths)


@pytest.mark.parametrize(
    ("body", "headers", "status", "field"),
    [
        (b'{"model_name": "h1", "mode": "embedding", "image_data": "@@"}', {}, 400, "image_data"),
        (orjson.dumps({**wire_record("h1", "embedding"), "image_data": "aGVsbG8="}), {}, 400, "image_data"),
        (orjson.dumps(wire_record("h1", "embedding", png_bytes(random_tile(200)))), {}, 400, "image_data"),
        (orjson.dumps(wire_record("m-optimus", "prediction", bulk_rna=[1.0] * 7)), {}, 400, "bulk_rna"),
        (orjson.dumps({**wire_record("h1", "embedding"), "model_name": "h7"}), {}, 400, "model_name"),
        (orjson.dumps({**wire_record("h1", "embedding"), "mode": "dance"}), {}, 400, "mode"),
        (orjson.dumps(wire_record("h0", "embedding")), {}, 404, "model_name"),
        (b"{", {}, 400, "body"),
        (b"", {}, 400, "body"),
        (orjson.dumps(wire_record("h1", "embedding")), {"content-type": "text/csv"}, 415, "content_type"),
        (orjson.dumps(wire_record("h1", "embedding")), {"accept": "image/png"}, 406, "accept"),
    ],
)
def test_bad_requests_get_4xx_naming_the_field(
    running: Running, body: bytes, headers: dict[str, str], status: int, field: str
) -> None:
    response = httpx.post(
        f"{running.url}/invocations", content=body, headers={"content-type": "application/json", **headers}
    )
    assert response.status_code == status
    assert response.json()["field"] == field and response.json()["error"]


def test_body_over_the_limit_is_413_without_reading_it(running: Running) -> None:
    port = int(running.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 7000000\r\n\r\n" + b"[" * 1000
        )  # announces 7 MB, sends 1 kB: the answer must not wait for the rest
        reply = sock.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 413")
    assert '"field":"body"' in reply


def test_chunked_body_over_the_limit_is_413(running: Running) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b" " * (1024 * 1024)

    response = httpx.post(f"{running.url}/invocations", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def _histogram(metrics: str, name: str, model: str) -> dict[str, float]:
    pattern = rf'{name}_bucket{{le="([^"]+)",model="{model}"}} (\S+)'
    return {le: float(count) for le, count in re.findall(pattern, metrics)}


def test_concurrent_single_tile_requests_are_batched(running: Running) -> None:
    bodies = [
        orjson.dumps(wire_record("h1", "embedding", png_bytes(random_tile(224, i)), patch_idx=i)) for i in range(64)
    ]

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{running.url}/invocations", content=b, headers={"content-type": "application/json"})
                    for b in bodies
                )
            )

    before = _histogram(httpx.get(f"{running.url}/metrics").text, "optimus_batch_size", "h1")
    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 64
    assert [r.json()["patch_idx"] for r in responses] == list(range(64))
    after = _histogram(httpx.get(f"{running.url}/metrics").text, "optimus_batch_size", "h1")
    tiles_in_batches_of_one = after["1.0"] - before.get("1.0", 0)
    forwards = after["+Inf"] - before.get("+Inf", 0)
    assert forwards < 64 and tiles_in_batches_of_one < forwards, "some forward passes must carry several tiles"
    metrics = httpx.get(f"{running.url}/metrics").text
    assert 'optimus_requests_total{route="/invocations",status="200"}' in metrics
    assert "optimus_queue_wait_seconds_bucket" in metrics and "optimus_forward_seconds_bucket" in metrics


def test_forward_failure_is_503_and_the_server_keeps_serving(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    assert running.server.models is not None
    runner = running.server.models.runners["h1"]

    def broken(*_args: object) -> None:
        raise RuntimeError("CUDA out of memory (injected)")

    body = orjson.dumps(wire_record("h1", "embedding"))
    headers = {"content-type": "application/json"}
    monkeypatch.setattr(runner, "forward", broken)
    failed = httpx.post(f"{running.url}/invocations", content=body, headers=headers)
    assert failed.status_code == 503 and failed.json()["retryable"] is True
    assert "out of memory" in failed.json()["error"]
    other_model = httpx.post(
        f"{running.url}/invocations", content=orjson.dumps(wire_record("tissue-seg", "prediction")), headers=headers
    )
    assert other_model.status_code == 200
    monkeypatch.undo()
    recovered = httpx.post(f"{running.url}/invocations", content=body, headers=headers)
    assert recovered.status_code == 200 and len(recovered.json()["output"]) == 1536


def test_same_tile_over_http_matches_the_handler(running: Running, models) -> None:
    record = wire_record("h1", "embedding")
    over_http = httpx.post(f"{running.url}/invocations", json=record).json()
    np.testing.assert_array_equal(over_http["output"], invoke_json(models, record)["output"])


def test_ping_and_invocations_answer_503_while_the_models_load(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import uvicorn

    from model_code import inference
    from model_code.server import create_app

    release = threading.Event()
    real_model_fn = inference.load_models

    def slow_model_fn(model_dir: Path, hooks: object = None):
        assert release.wait(timeout=60)
        return real_model_fn(model_dir, hooks)  # type: ignore[arg-type]

    monkeypatch.setattr(inference, "load_models", slow_model_fn)
    port = free_port()
    app = create_app(Settings(model_dir=artifact, port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        loading = eventually(lambda: httpx.get(f"{url}/ping"), "the server answering /ping")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        early = httpx.post(f"{url}/invocations", json=wire_record("h1", "embedding"))
        assert early.status_code == 503 and "still loading" in early.json()["error"]
        release.set()
        eventually(lambda: httpx.get(f"{url}/ping").status_code == 200, "a healthy /ping once the models loaded")
        assert httpx.post(f"{url}/invocations", json=wire_record("h1", "embedding")).status_code == 200
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=30)


def test_a_slow_forward_blocks_neither_decoding_nor_other_answers(artifact: Path) -> None:
    """While a forward pass is held on the device, bad requests, metadata and /ping are answered."""
    import threading

    device = HeldForwards()
    settings = Settings(model_dir=artifact, port=free_port(), max_batch_wait_ms=0)
    with serve_in_thread(settings, device.hooks()) as slow:
        answers: list[httpx.Response] = []
        record = wire_record("h1", "embedding")
        tile = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{slow.url}/invocations", json=record, timeout=60))
        )
        tile.start()
        assert device.started.wait(30), "the tile never reached the device"
        bad = httpx.post(f"{slow.url}/invocations", json={**record, "image_data": "@"})
        assert bad.status_code == 400, bad.text
        assert httpx.get(f"{slow.url}/api/metadata/m-optimus").status_code == 200
        assert httpx.get(f"{slow.url}/ping").status_code == 200
        assert answers == [], "all answered while the tile's pass is still on the device"
        device.release.set()
        tile.join(timeout=30)
    assert [answer.status_code for answer in answers] == [200]


def test_tiles_decode_in_worker_processes(running: Running, vendor: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from model_code import decoding

    here: list[int] = []
    real_decode = decoding.decode_record

    def counting(raw: object, index: int, overrides: object) -> object:
        here.append(index)
        return real_decode(raw, index, overrides)  # type: ignore[arg-type]

    monkeypatch.setattr(decoding, "decode_record", counting)  # seen in this process only, not in the workers
    body = (vendor / "batch" / "h1_embed_inputs.jsonl").read_bytes()
    response = httpx.post(f"{running.url}/invocations", content=body, headers={"content-type": "application/jsonlines"})
    assert response.status_code == 200
    assert [len(json.loads(line)["output"]) for line in response.text.splitlines()] == [1536] * 20
    assert here == []  # the 20 records decoded in the worker processes
    single = httpx.post(f"{running.url}/invocations", json=wire_record("h1", "embedding"))
    assert single.status_code == 200 and len(single.json()["output"]) == 1536
    assert here == [0]  # a lone request's one record decodes in the serving process: no pipe to cross


def test_the_forward_thread_wins_the_gil_back_within_half_a_millisecond(running: Running) -> None:
    assert sys.getswitchinterval() == GIL_SWITCH_INTERVAL_S == 0.0005


def test_what_startup_loaded_is_out_of_the_collectors_reach_while_serving(artifact: Path) -> None:
    """A full collection walking torch, the models and the framework held the GIL ~200 ms every ~2 s."""
    settings = Settings(model_dir=artifact, port=free_port(), decode_workers=1)
    with serve_in_thread(settings):
        assert gc.get_freeze_count() > 100_000
    assert gc.get_freeze_count() == 0  # stopped: collected again

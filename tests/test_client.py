"""kit.client.EndpointClient through boto3 against the real local server: modes, tile types, retries."""

from __future__ import annotations

import numpy as np
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from kit.endpoints.client import EndpointClient, EndpointError, TilesFailed, _endpoint_error
from kit.endpoints.samples import sample_png, synthetic_counts
from kit.local import free_port, metric
from tests.support.images import png_bytes, random_tile
from tests.support.serving import Running


def client(running: Running, model: str, **options: object) -> EndpointClient:
    return EndpointClient(
        "optimus-local", model, region="us-east-1", endpoint_url=running.url, backoff_s=0.01, **options
    )  # type: ignore[arg-type]


def test_every_mode_and_metadata(running: Running) -> None:
    m = client(running, "m-optimus")
    assert len(m.metadata()["input_genes"]) == 19374
    tile = sample_png(224)
    answer = m.embed(tile, slide_name="s1", x=10, y=20, patch_idx=3, resolution=0.5, tissue_ratio=0.9)
    assert len(answer["output"]) == 1536
    assert (answer["slide_name"], answer["x"], answer["y"], answer["patch_idx"]) == ("s1", 10, 20, 3)
    assert (answer["width"], answer["height"]) == (224, 224)
    assert len(m.predict(tile, bulk_rna=synthetic_counts())["output"]) == 6002
    both = m.predict_with_embedding(tile)
    assert len(both["output"]) == 6002 and both["embedding"] == answer["output"]
    assert len(client(running, "tissue-seg").predict(sample_png(512))["output"]) == 512 * 512


def test_pil_numpy_and_png_bytes_give_the_same_embedding(running: Running) -> None:
    h1 = client(running, "h1")
    pixels = random_tile(224, 5)
    as_bytes = h1.embed(png_bytes(pixels))["output"]
    assert h1.embed(pixels)["output"] == as_bytes
    assert h1.embed(Image.fromarray(pixels))["output"] == as_bytes


def test_embed_many_keeps_order_and_reports_failed_tiles(running: Running) -> None:
    h1 = client(running, "h1")
    tiles = [png_bytes(random_tile(224, i)) for i in range(6)]
    answers = h1.embed_many(tiles, concurrency=4)
    assert [a["patch_idx"] for a in answers] == list(range(6))
    singles = [h1.embed(t)["output"] for t in tiles]
    for answer, single in zip(answers, singles, strict=True):
        np.testing.assert_allclose(answer["output"], single, rtol=1e-5, atol=1e-6)
    tiles[4] = png_bytes(random_tile(200))
    with pytest.raises(TilesFailed) as caught:
        h1.embed_many(tiles, concurrency=4)
    failed = caught.value
    assert list(failed.failures) == [4] and failed.failures[4].status == 400
    assert "200x200" in str(failed.failures[4]) and "tile 4" in str(failed)
    assert failed.results[4] is None and all(failed.results[i] is not None for i in (0, 1, 2, 3, 5))


def test_predict_many_pairs_bulk_rna_with_tiles(running: Running) -> None:
    m = client(running, "m-optimus")
    tiles = [sample_png(224)] * 3
    answers = m.predict_many(tiles, bulk_rna=[None, synthetic_counts(1), synthetic_counts(2)])
    assert len({tuple(a["output"]) for a in answers}) == 3
    with pytest.raises(ValueError, match="bulk_rna has 1 entries for 3 tiles"):
        m.predict_many(tiles, bulk_rna=[None])


def _requests(running: Running, status: int) -> float:
    return metric(
        running.url, "optimus_requests_total", route="/endpoints/{endpoint_name}/invocations", status=str(status)
    )


def test_503_is_retried_until_it_succeeds(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    assert running.server.models is not None
    runner = running.server.models.runners["h1"]
    real_forward = runner.forward
    calls = {"n": 0}

    def flaky(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("CUDA error: device busy (injected)")
        return real_forward(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "forward", flaky)
    before = _requests(running, 424)
    answer = client(running, "h1", max_attempts=4).embed(sample_png(224))
    assert len(answer["output"]) == 1536 and calls["n"] == 3
    assert _requests(running, 424) - before == 2


def test_503_that_persists_fails_after_max_attempts(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    assert running.server.models is not None

    def broken(*_args: object) -> None:
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(running.server.models.runners["h1"], "forward", broken)
    before = _requests(running, 424)
    with pytest.raises(EndpointError) as caught:
        client(running, "h1", max_attempts=3).embed(sample_png(224))
    assert caught.value.status == 503 and caught.value.retryable and "out of memory" in str(caught.value)
    assert _requests(running, 424) - before == 3


def test_client_errors_are_not_retried(running: Running) -> None:
    before = _requests(running, 424)
    with pytest.raises(EndpointError) as caught:
        client(running, "h1", max_attempts=5).embed(png_bytes(random_tile(100)))
    assert caught.value.status == 400 and not caught.value.retryable
    assert caught.value.body["field"] == "image_data"
    assert _requests(running, 424) - before == 1


def test_unreachable_endpoint_is_retried_then_reported() -> None:
    unreachable = EndpointClient(
        "x", "h1", region="us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=2, backoff_s=0.01
    )
    with pytest.raises(EndpointError, match="EndpointConnectionError") as caught:
        unreachable.embed(sample_png(224))
    assert caught.value.retryable and caught.value.status is None


def test_throttling_and_model_errors_are_classified() -> None:
    throttled = ClientError(
        {
            "Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        "InvokeEndpoint",
    )
    assert _endpoint_error(throttled).retryable
    model_error = ClientError(
        {
            "Error": {"Code": "ModelError", "Message": "Received client error (400)"},
            "OriginalStatusCode": 400,
            "OriginalMessage": '{"error": "record 0, field \'bulk_rna\': has 3 values", "field": "bulk_rna"}',
            "ResponseMetadata": {"HTTPStatusCode": 424},
        },
        "InvokeEndpoint",
    )
    error = _endpoint_error(model_error)
    assert (error.status, error.retryable, error.body["field"]) == (400, False, "bulk_rna")
    assert "has 3 values" in str(error)

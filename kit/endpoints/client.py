"""A thin client of an Optimus endpoint over boto3's sagemaker-runtime, speaking the vendor's protocol.

    client = EndpointClient("optimus-h1", "h1", region="eu-west-1")
    vector = client.embed(tile)["output"]                 # tile: PIL image, H x W x 3 uint8 array, or PNG bytes
    answers = client.embed_many(tiles, concurrency=8)     # in input order

Like the vendor's AWSClient, every request is one tile with `model_name` and `mode` filled in. Throttling,
503 and connection failures are retried with exponential backoff and full jitter; 4xx is not. A tile
that still fails is reported with its index (`TilesFailed`), never dropped. A server reached with
`endpoint_url` that asks for a bearer token gets `token`, else $OPTIMUS_TOKEN.
"""

from __future__ import annotations

import base64
import io
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import numpy as np
import orjson
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from PIL import Image

from model_code.catalogue import EMBEDDING, METADATA, PREDICTION, PREDICTION_WITH_EMBEDDING

Tile = Image.Image | np.ndarray | bytes
RETRYABLE_STATUS = {429, 500, 502, 503, 504}
TOKEN_ENV = "OPTIMUS_TOKEN"  # the bearer token for an on-premise server (endpoint_url), when none is given
RETRYABLE_CODES = {"ThrottlingException", "ServiceUnavailable", "InternalFailure", "InternalServerError"}


class EndpointError(Exception):
    """A request the endpoint refused or could not answer: HTTP status, reason, and whether to retry."""

    def __init__(self, message: str, status: int | None, retryable: bool, body: Any = None):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.body = body


class TilesFailed(Exception):
    """Some tiles of a *_many call failed after retries: `failures` by index, `results` with None there."""

    def __init__(self, failures: dict[int, EndpointError], results: list[dict[str, Any] | None]):
        first = min(failures)
        super().__init__(f"{len(failures)} of {len(results)} tiles failed; tile {first}: {failures[first]}")
        self.failures = failures
        self.results = results


def request_record(
    model_name: str,
    mode: str,
    image_data: str = "",
    width: int = 0,
    height: int = 0,
    *,
    bulk_rna: Sequence[float] | None = None,
    slide_name: str = "",
    x: int = 0,
    y: int = 0,
    tissue_ratio: float | None = None,
    patch_idx: int = 0,
    resolution: float | None = None,
) -> dict[str, Any]:
    """One request record in the vendor client's layout (image_data: base64 PNG; empty for metadata)."""
    return {
        "image_data": image_data,
        "bulk_rna": list(bulk_rna) if bulk_rna is not None else None,
        "slide_name": slide_name,
        "x": x,
        "y": y,
        "width": width,
        "height": height,
        "tissue_ratio": tissue_ratio,
        "patch_idx": patch_idx,
        "resolution": resolution,
        "model_name": model_name,
        "mode": mode,
    }


def encode_tile(tile: Tile) -> tuple[str, int, int]:
    """base64 PNG and the tile's width and height."""
    if isinstance(tile, bytes):
        with Image.open(io.BytesIO(tile)) as opened:
            return base64.b64encode(tile).decode(), opened.width, opened.height
    image = Image.fromarray(tile) if isinstance(tile, np.ndarray) else tile
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode(), image.width, image.height


class EndpointClient:
    def __init__(
        self,
        endpoint_name: str,
        model_name: str,
        region: str | None = None,
        session: boto3.Session | None = None,
        endpoint_url: str | None = None,
        *,
        max_attempts: int = 6,
        backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        timeout_s: float = 70.0,
        token: str | None = None,
    ):
        self.endpoint_name = endpoint_name
        self.model_name = model_name
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        session = session or boto3.Session(region_name=region)
        config = Config(
            retries={"max_attempts": 1},  # retries are ours: botocore's would also retry what must fail fast
            read_timeout=timeout_s,
            max_pool_connections=64,
        )
        token = token or (os.environ.get(TOKEN_ENV) if endpoint_url else None)
        if token and not endpoint_url:
            raise ValueError("a token is for a server reached with endpoint_url; on SageMaker, IAM signs requests")
        if endpoint_url and (token or session.get_credentials() is None):
            config = config.merge(Config(signature_version=UNSIGNED))  # a local server checks no signature
        self._runtime = session.client(
            "sagemaker-runtime", region_name=region, endpoint_url=endpoint_url, config=config
        )
        if token:
            authorization = f"Bearer {token}"

            def send_token(request: Any, **_: Any) -> None:
                request.headers["Authorization"] = authorization

            self._runtime.meta.events.register("request-created.sagemaker-runtime.InvokeEndpoint", send_token)

    def embed(self, tile: Tile, **fields: Any) -> dict[str, Any]:
        return self._invoke(self.record(tile, EMBEDDING, **fields))

    def predict(self, tile: Tile, bulk_rna: Sequence[float] | None = None, **fields: Any) -> dict[str, Any]:
        return self._invoke(self.record(tile, PREDICTION, bulk_rna=bulk_rna, **fields))

    def predict_with_embedding(
        self, tile: Tile, bulk_rna: Sequence[float] | None = None, **fields: Any
    ) -> dict[str, Any]:
        return self._invoke(self.record(tile, PREDICTION_WITH_EMBEDDING, bulk_rna=bulk_rna, **fields))

    def metadata(self) -> dict[str, Any]:
        """As the vendor's client asks: empty image and dummy tile fields."""
        return self._invoke(request_record(self.model_name, METADATA))

    def embed_many(self, tiles: Sequence[Tile], concurrency: int = 8, **fields: Any) -> list[dict[str, Any]]:
        return self._many(tiles, EMBEDDING, None, concurrency, fields)

    def predict_many(
        self,
        tiles: Sequence[Tile],
        bulk_rna: Sequence[Sequence[float] | None] | None = None,
        concurrency: int = 8,
        **fields: Any,
    ) -> list[dict[str, Any]]:
        return self._many(tiles, PREDICTION, bulk_rna, concurrency, fields)

    def record(self, tile: Tile, mode: str, bulk_rna: Sequence[float] | None = None, **fields: Any) -> dict[str, Any]:
        """The request record for one tile; `fields` are request_record's tile fields (slide_name, x, ...)."""
        image_data, width, height = encode_tile(tile)
        return request_record(self.model_name, mode, image_data, width, height, bulk_rna=bulk_rna, **fields)

    def _many(
        self,
        tiles: Sequence[Tile],
        mode: str,
        bulk_rna: Sequence[Sequence[float] | None] | None,
        concurrency: int,
        fields: dict[str, Any],
    ) -> list[dict[str, Any]]:
        if bulk_rna is not None and len(bulk_rna) != len(tiles):
            raise ValueError(f"bulk_rna has {len(bulk_rna)} entries for {len(tiles)} tiles")

        def one(index: int) -> dict[str, Any]:
            rna = bulk_rna[index] if bulk_rna is not None else None
            return self._invoke(self.record(tiles[index], mode, bulk_rna=rna, **{"patch_idx": index, **fields}))

        results: list[dict[str, Any] | None] = [None] * len(tiles)
        failures: dict[int, EndpointError] = {}
        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            futures = {index: pool.submit(one, index) for index in range(len(tiles))}
            for index, future in futures.items():
                try:
                    results[index] = future.result()
                except EndpointError as exc:
                    failures[index] = exc
        if failures:
            raise TilesFailed(failures, results)
        return [r for r in results if r is not None]

    def _invoke(self, record: dict[str, Any]) -> dict[str, Any]:
        body = orjson.dumps(record)
        for attempt in range(self.max_attempts):
            try:
                response = self._runtime.invoke_endpoint(
                    EndpointName=self.endpoint_name,
                    ContentType="application/json",
                    Accept="application/json",
                    Body=body,
                )
                return orjson.loads(response["Body"].read())
            except ClientError as exc:
                error = _endpoint_error(exc)
            except (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError) as exc:
                error = EndpointError(f"{type(exc).__name__}: {exc}", None, retryable=True)
            except BotoCoreError as exc:  # no credentials, bad region, ...: retrying cannot help
                error = EndpointError(f"{type(exc).__name__}: {exc}", None, retryable=False)
            if not error.retryable or attempt == self.max_attempts - 1:
                raise error
            time.sleep(random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2**attempt)))
        raise AssertionError("unreachable")


def _endpoint_error(exc: ClientError) -> EndpointError:
    """botocore's error -> status, the container's own message, retryable or not."""
    response: dict[str, Any] = exc.response
    code = response.get("Error", {}).get("Code", "")
    status = response.get("OriginalStatusCode") or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    original = response.get("OriginalMessage")
    body: Any = None
    if original:
        try:
            body = orjson.loads(original)
        except orjson.JSONDecodeError:
            body = original
    reason = body.get("error") if isinstance(body, dict) else (original or response.get("Error", {}).get("Message"))
    retryable = code in RETRYABLE_CODES or int(status or 0) in RETRYABLE_STATUS
    return EndpointError(f"{status} {code}: {reason}", int(status) if status else None, retryable, body)

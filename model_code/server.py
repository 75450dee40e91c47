"""The HTTP server: SageMaker's /ping and /invocations, the on-premise REST API, /metrics, /docs.

Requests are parsed and decoded (`inference.parse_request`, input_fn's body) in threads: a parse pool
splits each body and fans the records of many-record requests out to a decode pool. (Pillow releases
the GIL while it inflates a PNG; on 2 cores threads measured 30% faster than worker processes, which
pay for piping each body in and each 150 kB tile out.) Tiles are batched across requests per model
(model_code.batching) and run by `predict_fn` on one forward thread; `output_fn` serialises off the
event loop. The handler module is the only way in to the models.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_code import __version__, inference
from model_code.batching import Batcher
from model_code.catalogue import EMBEDDING, METADATA, PREDICTION, PREDICTION_WITH_EMBEDDING
from model_code.errors import ClientError, ForwardError
from model_code.inference import Batch, Models
from model_code.metrics import Metrics
from model_code.records import JSON, WireRecord, check_content_type
from model_code.settings import Settings
from model_code.slides.http import SlideService, is_slide

log = logging.getLogger("optimus.server")

REST_MODES = {"embed": EMBEDDING, "predict": PREDICTION, "predict_with_embedding": PREDICTION_WITH_EMBEDDING}
RECORD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": WireRecord.model_json_schema()},
            "application/jsonlines": {"schema": {"type": "string", "description": "one record per line"}},
        },
    }
}


class Server:
    """State of one serving process: models, decode pool, batcher, metrics."""

    def __init__(self, settings: Settings, on_fatal: Callable[[], None]):
        self.settings = settings
        self.on_fatal = on_fatal
        self.metrics = Metrics()
        self.models: Models | None = None
        self.load_error: str | None = None
        self.parse_pool: ThreadPoolExecutor | None = None  # splits bodies; fans many-record requests out to:
        self.decode_pool: ThreadPoolExecutor | None = None  # decodes tiles
        self.batcher: Batcher | None = None
        self.decoding = 0  # requests in the decode pool: tiles that may still join a batch
        self.slides = SlideService()

    async def start(self) -> None:
        """Start the decode pool and load the models, while /ping answers 503.

        A failure to load calls `on_fatal` (serve.py stops the server and exits 1), so SageMaker sees the
        container exit with the reason in its log rather than a server that never becomes healthy.
        """
        self.parse_pool = ThreadPoolExecutor(self.settings.decode_workers, thread_name_prefix="parse")
        self.decode_pool = ThreadPoolExecutor(self.settings.decode_workers, thread_name_prefix="decode")
        try:
            models = await asyncio.to_thread(inference.model_fn, self.settings.model_dir)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("could not load the models from %s: %s", self.settings.model_dir, self.load_error)
            self.on_fatal()
            return
        for runner in models.runners.values():
            runner.after_forward = self._after_forward
        self.batcher = Batcher(
            self._predict,
            self.settings.max_batch_size,
            self.settings.max_batch_wait_ms / 1000,
            on_wait=lambda model, seconds: self.metrics.queue_wait.labels(model).observe(seconds),
            expecting_more=lambda: self.decoding > 0,
        )
        self.models = models  # from here on /ping is 200
        log.info("serving %s from %s", ", ".join(models.runners), self.settings.model_dir)

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        for pool in (self.parse_pool, self.decode_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _map_records(self, decode: Callable[[Any], Any], items: list[Any]) -> Iterable[Any]:
        """One record decodes where it is; the records of a batch-transform request decode in parallel."""
        if len(items) < 2 or self.decode_pool is None:
            return map(decode, items)
        return self.decode_pool.map(decode, items)

    def _predict(self, records: list[Any]) -> list[Any]:
        assert self.models is not None
        result = inference.predict_fn(Batch(records, "list"), self.models)
        assert result.results is not None
        return result.results

    def _after_forward(self, model: str, tiles: int, seconds: float) -> None:
        simulated = self.settings.simulated_forward_ms
        if simulated is not None:  # benchmarks only: stand in for an accelerator's time
            extra = (simulated[0] + simulated[1] * tiles) / 1000
            time.sleep(extra)
            seconds += extra
        self.metrics.observe_forward(model, tiles, seconds)

    async def invoke(self, request: Request, overrides: dict[str, str] | None = None) -> Response:
        """An HTTP request: content type checked first, body read up to the limit, then answered."""
        content_type = request.headers.get("content-type") or JSON
        if is_slide(content_type):  # a whole slide in, its features file out (model_code.slides)
            return await self.slides.answer(request, self.models)
        check_content_type(content_type)
        body = await read_body(request, self.settings.max_body_bytes)
        return await self.answer(body, content_type, request.headers.get("accept"), overrides)

    async def answer(
        self, body: bytes, content_type: str, accept: str | None, overrides: dict[str, str] | None
    ) -> Response:
        """Decode in the worker pool, batch, predict, serialise: one request, one response."""
        if self.models is None or self.batcher is None or self.parse_pool is None:
            return JSONResponse({"error": "the models are still loading", "status": 503}, status_code=503)
        began = time.perf_counter()
        loop = asyncio.get_running_loop()
        self.decoding += 1
        try:
            batch = await loop.run_in_executor(
                self.parse_pool, inference.parse_request, body, content_type, overrides, self._map_records
            )
        finally:
            self.decoding -= 1
        self.metrics.decode.observe(time.perf_counter() - began)
        results = await self.batcher.run(batch.records)
        for entry in results:
            if isinstance(entry, ClientError):
                self.metrics.record_errors.labels(str(entry.status_code)).inc()
        finished = inference.with_results(batch, results)  # a lone bad record raises its ClientError here
        out, out_type = await loop.run_in_executor(self.parse_pool, inference.output_fn, finished, accept)
        return Response(out, media_type=out_type)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over `limit` (never read whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> ClientError:
    return ClientError(
        f"body of {size} bytes or more is over the limit of {limit} bytes (MAX_BODY_MB)", field="body", status=413
    )


class RequestMetrics:
    """ASGI middleware counting responses by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            self.metrics.requests.labels(getattr(route, "path", "unmatched"), str(status)).inc()


def model_error(endpoint: str, status: int, body: bytes) -> JSONResponse:
    """The SageMaker runtime's answer when the container answers `status`: ModelError, HTTP 424."""
    side = "client" if status < 500 else "server"
    original = body.decode()
    return JSONResponse(
        {
            "ErrorCode": f"{side.upper()}_ERROR_FROM_MODEL",
            "OriginalStatusCode": status,
            "OriginalMessage": original,
            "LogStreamArn": f"local:/aws/sagemaker/Endpoints/{endpoint}",
            "message": f'Received {side} error ({status}) from primary with message "{original}".',
        },
        status_code=424,
        headers={"x-amzn-ErrorType": "ModelError"},
    )


def create_app(settings: Settings, on_fatal: Callable[[], None] = lambda: None) -> FastAPI:
    server = Server(settings, on_fatal)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(server.start())
        try:
            yield
        finally:
            await loading
            await server.stop()

    app = FastAPI(
        title="Optimus SageMaker kit",
        version=__version__,
        description="Bioptimus histology models behind the vendor's wire protocol.",
        lifespan=lifespan,
    )
    app.state.server = server
    app.add_middleware(RequestMetrics, metrics=server.metrics)

    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status_code)

    @app.exception_handler(ForwardError)
    async def forward_error(_: Request, exc: ForwardError) -> JSONResponse:
        log.error("%s", exc)
        return JSONResponse(exc.to_dict(), status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}", "status": 500}, status_code=500)

    @app.get("/ping", tags=["sagemaker"])
    async def ping() -> JSONResponse:
        """200 once the models are loaded, 503 before."""
        if server.models is None:
            body = {"status": "failed" if server.load_error else "loading", "error": server.load_error}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "healthy", "models": list(server.models.runners)})

    @app.post("/invocations", tags=["sagemaker"], openapi_extra=RECORD_BODY)
    async def invocations(request: Request) -> Response:
        """SageMaker's InvokeEndpoint: dispatch on each record's `model_name` and `mode`."""
        return await server.invoke(request)

    @app.post("/endpoints/{endpoint_name}/invocations", tags=["sagemaker"], openapi_extra=RECORD_BODY)
    async def endpoint_invocations(endpoint_name: str, request: Request) -> Response:
        """The path boto3's sagemaker-runtime client uses against a local endpoint URL.

        Answers errors as the SageMaker runtime does: a ModelError (424) carrying the container's status
        and body, so clients see the same error locally as on AWS.
        """
        try:
            response = await server.invoke(request)
        except (ClientError, ForwardError) as exc:
            return model_error(endpoint_name, exc.status_code, inference.dumps(exc.to_dict()))
        if response.status_code >= 400:
            return model_error(endpoint_name, response.status_code, bytes(response.body))
        return response

    for route, mode in REST_MODES.items():

        async def rest(model: str, request: Request, mode: str = mode) -> Response:
            return await server.invoke(request, {"model_name": model, "mode": mode})

        app.post(
            f"/api/{route}/{{model}}",
            tags=["on-premise API"],
            summary=f"{mode} of one tile, a list, or JSON lines",
            openapi_extra=RECORD_BODY,
        )(rest)

    async def metadata(model: str) -> Response:
        """What the model takes and gives: tile size, embedding_dim, output shapes, gene sets."""
        return await server.answer(inference.dumps({"model_name": model, "mode": METADATA}), JSON, JSON, None)

    for method in ("GET", "POST"):
        app.add_api_route(
            "/api/metadata/{model}",
            metadata,
            methods=[method],
            tags=["on-premise API"],
            operation_id=f"metadata_{method}",
        )

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

    return app

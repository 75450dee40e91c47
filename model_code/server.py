"""The HTTP server: SageMaker's /ping and /invocations, the on-premise REST API, /metrics, /docs.

Requests are parsed (`inference.parse_request`, input_fn's body) in a pool of threads, which hand each
record to worker processes to decode (model_code.decoding), so that this process's GIL is left to HTTP,
batching and the forward thread (docs/performance.md: decoding threads starved the forward pass under load).
Tiles are batched across requests per model (model_code.batching) and run by `predict_fn` on one forward
thread; `output_fn` serialises off the event loop. The handler module is the only way in to the models.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_code import __version__, auth, docs, inference
from model_code.batching import Batcher, favour_forward, freeze_loaded_objects, thaw_loaded_objects
from model_code.catalogue import EMBEDDING, METADATA, PREDICTION, PREDICTION_WITH_EMBEDDING, canonical_name
from model_code.connections import disconnected, limited_body
from model_code.decoding import DecodePool
from model_code.errors import LOADING, ClientError, ForwardError, Result, unavailable
from model_code.inference import Models, ParsedRequest
from model_code.metrics import Metrics
from model_code.records import JSON, Record, WireRecord, check_content_type, negotiate
from model_code.runners import ForwardHooks
from model_code.settings import Settings
from model_code.slides.http import SlideService, is_slide

log = logging.getLogger("optimus.server")

DRAIN_BYTES = 128 * 1024 * 1024  # of a refused body, read and discarded so the client can read its 413
REST_MODES = {"embed": EMBEDDING, "predict": PREDICTION, "predict_with_embedding": PREDICTION_WITH_EMBEDDING}
WIRE_SCHEMA = docs.describe_wire(WireRecord.model_json_schema())
BODY = "one record, a JSON list of records, JSON lines, or a whole slide (options in the query, docs/slides.md)"
RECORD_BODY = docs.request_body(WIRE_SCHEMA, BODY) | {docs.WIRE_KEY: True}
REST_BODY = docs.request_body(docs.rest_schema(WIRE_SCHEMA), BODY)


class Server:
    """State of one serving process: models, decode pool, batcher, metrics."""

    def __init__(self, settings: Settings, on_fatal: Callable[[], None], hooks: ForwardHooks | None = None):
        self.settings = settings
        self.on_fatal = on_fatal
        self.injected = hooks or ForwardHooks()  # inside each pass, before the server's own (benchmarks, tests)
        self.metrics = Metrics()
        self.models: Models | None = None
        self.load_error: str | None = None
        self.parse_pool: ThreadPoolExecutor | None = None  # splits bodies; fans many-record requests out to:
        self.decode_pool: DecodePool | None = None  # decodes tiles, in processes
        self.batcher: Batcher | None = None
        self.decoding = 0  # requests in the decode pool: tiles that may still join a batch
        self.slides = SlideService(settings.max_slide_bytes, settings.slide_read_threads, settings.max_queued_slides)

    async def start(self) -> None:
        """Start the decode pool and load the models, while /ping answers 503.

        A failure to load calls `on_fatal` (serve.py stops the server and exits 1), so SageMaker sees the
        container exit with the reason in its log rather than a server that never becomes healthy.
        """
        self.parse_pool = ThreadPoolExecutor(self.settings.decode_workers, thread_name_prefix="parse")
        self.decode_pool = await asyncio.to_thread(DecodePool, self.settings.decode_workers)
        hooks = ForwardHooks(after=self._after_forward, failed=self._forward_failed)
        try:
            models = await asyncio.to_thread(inference.load_models, self.settings.model_dir, hooks)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("could not load the models from %s: %s", self.settings.model_dir, self.load_error)
            self.on_fatal()
            return
        favour_forward()
        freeze_loaded_objects()
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
            thaw_loaded_objects()
        if self.parse_pool is not None:
            self.parse_pool.shutdown(wait=True, cancel_futures=True)
        if self.decode_pool is not None:
            self.decode_pool.shutdown()

    def _map_records(self, decode: Callable[[Any], Any], items: list[Any]) -> Iterable[Any]:
        """Records decode in the worker processes, those of a batch-transform request in parallel; a lone
        request's one record decodes where it is (nothing competes for the GIL, and the pipe would add latency)."""
        if self.decode_pool is None or (len(items) < 2 and self.decoding < 2):
            return map(decode, items)
        return self.decode_pool.map(decode, items)

    def _predict(self, records: list[Record]) -> list[Result]:
        assert self.models is not None
        result = inference.predict_fn(ParsedRequest(list(records), "list"), self.models)
        assert result.results is not None
        return result.results

    def _after_forward(self, model: str, records: Sequence[Record], seconds: float) -> None:
        """The injected hook (its time is the pass's: a simulated device's wait), then the pass's metrics."""
        if self.injected.after is not None:
            began = time.perf_counter()
            self.injected.after(model, records, seconds)
            seconds += time.perf_counter() - began
        self.metrics.observe_forward(model, len(records), seconds)

    def _forward_failed(self, model: str, tiles: int) -> None:
        if self.injected.failed is not None:
            self.injected.failed(model, tiles)
        self.metrics.forward_failed(model, tiles)

    async def invoke(self, request: Request, overrides: dict[str, str] | None = None) -> Response:
        """An HTTP request: content type and Accept checked first, body read up to the limit, then answered."""
        content_type = request.headers.get("content-type") or JSON
        if is_slide(content_type):  # a whole slide in, its features file out (model_code.slides)
            return await self.slides.answer(request, self.models, overrides)
        check_content_type(content_type)
        accept = request.headers.get("accept")
        negotiate(accept, "object")  # a 406 before the body is read or any tile runs
        body = await read_body(request, self.settings.max_body_bytes)
        return await self.answer(body, content_type, accept, overrides, request)

    async def answer(
        self,
        body: bytes,
        content_type: str,
        accept: str | None,
        overrides: dict[str, str] | None,
        request: Request | None = None,
    ) -> Response:
        """Decode in the worker pool, batch, predict, serialise: one request, one response.

        While its tiles wait or run, a request whose client has gone away is withdrawn from the queues.
        """
        if self.models is None or self.batcher is None or self.parse_pool is None:
            return error_response(unavailable(LOADING), 503)
        models, batcher = self.models, self.batcher
        loop = asyncio.get_running_loop()
        parse = functools.partial(
            inference.parse_request, body, content_type, overrides, self._map_records, self.settings.limits, models
        )
        began = time.perf_counter()
        self.decoding += 1
        try:
            parsed = await loop.run_in_executor(self.parse_pool, parse)
        except ClientError as exc:
            if exc.record is not None:  # a request of one bad record
                self.metrics.record_errors.labels(str(exc.status_code)).inc()
            raise
        finally:
            self.decoding -= 1
            self.metrics.decode.observe(time.perf_counter() - began)
        results = [inference.answer_directly(record, models) for record in parsed.records]
        tiles = [record for record, result in zip(parsed.records, results, strict=True) if result is None]
        if tiles:
            answers = iter(await until_disconnected(batcher.run(tiles), request))
            results = [next(answers) if result is None else result for result in results]
        for entry in results:
            if isinstance(entry, ClientError | ForwardError):
                self.metrics.record_errors.labels(str(entry.status_code)).inc()
            if isinstance(entry, ForwardError):
                self.metrics.isolated_tiles.labels(entry.model).inc()
        finished = inference.with_results(parsed, results)  # type: ignore[arg-type]  # a lone failed record raises
        serialise = functools.partial(
            inference.serialise,
            finished,
            negotiate(accept, parsed.layout),
            self.settings.limits.max_response_bytes,
        )
        if len(results) == 1:  # one answer is serialised here: quicker than the hop to a thread and back
            out, out_type = serialise()
        else:
            out, out_type = await loop.run_in_executor(self.parse_pool, serialise)
        return Response(out, media_type=out_type)


async def until_disconnected(work: Any, request: Request | None) -> Any:
    """The result of `work`; if the client disconnects first, `work` is cancelled and ClientDisconnect raised."""
    if request is None:
        return await work
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        raise ClientDisconnect()
    return task.result()


async def read_body(request: Request, limit: int) -> bytes:
    """The body, decompressed when gzip-encoded; over `limit` (sent or decompressed), a 413 (MAX_BODY_MB),
    after what the client still sends is drained (up to DRAIN_BYTES, `connections.limited_body`)."""
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise ClientError(
            f"unsupported content encoding '{encoding}'; send gzip or no encoding", field="content_encoding", status=415
        )
    body = b"".join([chunk async for chunk in limited_body(request, limit, "MAX_BODY_MB", DRAIN_BYTES)])
    return body if encoding == "identity" else await asyncio.to_thread(gunzip, body, limit)  # off the event loop


GZIP_WINDOW = 1 << 16  # compressed bytes fed at a time: what zlib copies of the rest stays small


def gunzip(body: bytes, limit: int) -> bytes:
    """A gzip body decompressed, every member of it (RFC 1952: `cat a.gz b.gz` is one gzip body), refusing
    more than `limit` bytes out (a small bomb cannot grow large) and bytes after the last member but zeros
    (as gzip(1) allows). Fed a window at a time: the rest of the body is never copied once a member (many
    empty members were quadratic: 310,000 of them in 6 MB took 29 s)."""
    out, view, at = bytearray(), memoryview(body), 0
    while at < len(body):
        if body[at] == 0 and body.count(0, at) == len(body) - at:  # a member starts 1f 8b: this is padding
            break
        inflater = zlib.decompressobj(wbits=31)
        while not inflater.eof and at < len(body):
            window = view[at : at + GZIP_WINDOW]
            try:
                out += inflater.decompress(window, limit + 1 - len(out))
            except zlib.error as exc:
                where = " after its first member" if at else ""
                reason = f"is gzip but cannot be decompressed{where} ({exc})"
                raise ClientError(reason, field="content_encoding") from None
            if len(out) > limit:
                too_much = f"decompresses to over the limit of {limit} bytes (MAX_BODY_MB)"
                raise ClientError(too_much, field="body", status=413)
            at += len(window) - len(inflater.unused_data)
        if not inflater.eof:
            raise ClientError("is gzip but the compressed body is truncated", field="content_encoding")
    return bytes(out)


def error_response(body: dict[str, Any], status: int, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON error answer; serialised as every answer is, so any string it quotes can be written."""
    return Response(inference.dumps(body), status_code=status, media_type=JSON, headers=headers)


class RequestMetrics:
    """ASGI middleware counting responses by route template and status (499: the client went away)."""

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


def model_error(endpoint: str, status: int, body: bytes) -> Response:
    """The SageMaker runtime's answer when the container answers `status`: ModelError, HTTP 424."""
    side = "client" if status < 500 else "server"
    original = body.decode()
    return error_response(
        {
            "ErrorCode": f"{side.upper()}_ERROR_FROM_MODEL",
            "OriginalStatusCode": status,
            "OriginalMessage": original,
            "LogStreamArn": f"local:/aws/sagemaker/Endpoints/{endpoint}",
            "message": f'Received {side} error ({status}) from primary with message "{original}".',
        },
        424,
        headers={"x-amzn-ErrorType": "ModelError"},
    )


def create_app(
    settings: Settings, on_fatal: Callable[[], None] = lambda: None, hooks: ForwardHooks | None = None
) -> FastAPI:
    server = Server(settings, on_fatal, hooks)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(server.start())
        try:
            yield
        finally:
            await loading
            await server.stop()

    app = docs.create(
        title=docs.TITLE,
        version=__version__,
        description="Bioptimus histology models behind the vendor's wire protocol.",
        lifespan=lifespan,
    )
    app.state.server = server
    auth.protect(
        app, settings.auth, docs.DOCS_PATHS, settings.host
    )  # before RequestMetrics, which then counts its 401s too
    docs.document(app, lambda: list(server.models.runners) if server.models is not None else None)
    app.add_middleware(RequestMetrics, metrics=server.metrics)
    answer_errors(app)
    sagemaker_routes(app, server)
    rest_routes(app, server)

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def answer_errors(app: FastAPI) -> None:
    """Every error in one layout (`error`, `status`, `field`, `record`): ours, the framework's, the unexpected."""

    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError) -> Response:
        # After a 413 the rest of the body may still be on its way: the connection is not reused.
        return error_response(
            exc.to_dict(), exc.status_code, {"connection": "close"} if exc.status_code == 413 else None
        )

    @app.exception_handler(ForwardError)
    async def forward_error(_: Request, exc: ForwardError) -> Response:
        log.error("%s", exc)
        return error_response(exc.to_dict(), 503, {"Retry-After": "1"})

    @app.exception_handler(HTTPException)
    async def framework_error(request: Request, exc: HTTPException) -> Response:
        """The framework's own 404 / 405, in the layout of every other error."""
        field = "method" if exc.status_code == 405 else "path"
        reason = f"{exc.detail}: {request.method} {request.url.path}"
        return error_response(
            ClientError(reason, field=field, status=exc.status_code).to_dict(), exc.status_code, exc.headers
        )

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _: ClientDisconnect) -> Response:
        """Nobody is left to answer: one log line, no traceback, counted as 499 (nginx's code for it)."""
        log.info("client went away before its answer: %s %s", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error")
        return error_response({"error": f"internal error: {type(exc).__name__}: {exc}", "status": 500}, 500)


def sagemaker_routes(app: FastAPI, server: Server) -> None:
    """SageMaker's /ping and /invocations (and boto3's local-endpoint path), and the index page."""
    settings = server.settings

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        """The models, the version and links to /docs, /metrics, /ping: HTML for a browser, else JSON."""
        models = list(server.models.runners) if server.models is not None else None
        token = settings.auth.configured and not settings.auth.sagemaker
        return docs.index(request, models, __version__, server.load_error, token)

    @app.get("/ping", tags=["sagemaker"])
    async def ping() -> Response:
        """200 once the models are loaded, 503 before."""
        if server.models is None:
            body = {"status": "failed" if server.load_error else "loading", "error": server.load_error}
            return error_response(body, 503)
        return Response(inference.dumps({"status": "healthy", "models": list(server.models.runners)}), media_type=JSON)

    app.add_api_route("/ping", ping, methods=["HEAD"], include_in_schema=False)  # load balancers' health checks

    @app.post("/invocations", tags=["sagemaker"], openapi_extra=RECORD_BODY)
    async def invocations(request: Request) -> Response:
        """SageMaker's InvokeEndpoint: dispatch on each record's `model_name` and `mode`."""
        return await server.invoke(request)

    @app.post("/endpoints/{endpoint_name}/invocations", tags=["sagemaker"], openapi_extra=RECORD_BODY)
    async def endpoint_invocations(
        endpoint_name: Annotated[str, Path(openapi_examples={"local": {"value": "local"}})], request: Request
    ) -> Response:
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


def rest_routes(app: FastAPI, server: Server) -> None:
    """The on-premise API: /api/{embed,predict,predict_with_embedding}/{model} and /api/metadata/{model}."""

    def hosted(model: str) -> None:
        """A route's {model} that this server does not host: 404 naming the route's model and what it hosts."""
        if server.models is not None and (canonical_name(model) or model) not in server.models.runners:
            held = ", ".join(server.models.runners)
            raise ClientError(f"'{model}' is not hosted here (this server hosts: {held})", field="model", status=404)

    def rest_route(mode: str) -> Callable[[str, Request], Awaitable[Response]]:
        async def rest(model: str, request: Request) -> Response:  # mode bound here: no query parameter
            hosted(model)
            return await server.invoke(request, {"model_name": model, "mode": mode})

        return rest

    for route, mode in REST_MODES.items():
        app.post(
            f"/api/{route}/{{model}}",
            tags=["on-premise API"],
            summary=f"{mode} of one tile, a list, JSON lines, or a whole slide",
            openapi_extra=REST_BODY | {docs.MODE_KEY: mode},
        )(rest_route(mode))

    async def metadata(model: str) -> Response:
        """What the model takes and gives: tile size, embedding_dim, output shapes, gene sets."""
        hosted(model)
        return await server.answer(inference.dumps({"model_name": model, "mode": METADATA}), JSON, JSON, None)

    for method in ("GET", "POST"):
        app.add_api_route(
            "/api/metadata/{model}",
            metadata,
            methods=[method],
            tags=["on-premise API"],
            operation_id=f"metadata_{method}",
            openapi_extra=docs.responses(404, 503) | {docs.MODE_KEY: METADATA},
        )

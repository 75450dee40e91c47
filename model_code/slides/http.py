"""The server's slide route: a request whose body is a slide, or an archive of a slide's files.

Content types: `image/tiff`, `image/x-svs`, `application/octet-stream` (a slide file of any format OpenSlide
reads), `application/x-tar` (uncompressed) or `application/zip`: a slide made of several files (a DICOM
series, an `.mrxs` with its folder), or one slide file, with or without M-Optimus's `bulk_rna.json`
(`archives`). The body is streamed to a temporary file (never held in memory), up to MAX_SLIDE_MB (default 1024,
SageMaker async's limit); one slide runs at a time per server; the answer is the features file, deleted
once sent.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
from functools import partial
from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from model_code.connections import awaits_continue, disconnected, drain, limited_body
from model_code.errors import LOADING, ClientError, unavailable
from model_code.inference import Models
from model_code.records import media_type
from model_code.slides import archives
from model_code.slides.job import choose_runner, run_slide
from model_code.slides.options import slide_options
from model_code.slides.tissue import SlideCancelled
from model_code.slides.writers import MEDIA_TYPES, SUFFIXES

log = logging.getLogger("optimus.slides")

SLIDE_TYPES = frozenset(
    {"image/tiff", "image/x-tiff", "image/svs", "image/x-svs", "application/octet-stream", "application/dicom"}
    | {archives.TAR, *archives.ZIP_TYPES}
)
RETRY_AFTER_S = 60  # a full slide queue: about one slide's time
ROUTE_OPTIONS = {"model_name": "model", "mode": "mode"}  # the REST routes' overrides -> slide options


def is_slide(content_type: str | None) -> bool:
    return media_type(content_type) in SLIDE_TYPES


class SlideService:
    """Answers slide requests for one server: one slide at a time, each in a temporary directory."""

    def __init__(self, max_bytes: int, read_threads: int, max_pending: int) -> None:
        self.max_bytes = max_bytes  # MAX_SLIDE_MB
        self.read_threads = read_threads  # SLIDE_READ_THREADS
        self.running = asyncio.Semaphore(1)
        self.pending = 0
        self.max_pending = max_pending  # MAX_QUEUED_SLIDES: received or running at once; more get a 503

    async def _refuse(self, request: Request, reason: str, retry_after: int | None) -> Response:
        """A 503 (retried after `retry_after` seconds when given), sent once the body is drained."""
        await drain(request, self.max_bytes, awaits_continue(request))
        headers = {"connection": "close", **({"Retry-After": str(retry_after)} if retry_after else {})}
        return JSONResponse(unavailable(reason), status_code=503, headers=headers)

    async def answer(
        self, request: Request, models: Models | None, overrides: dict[str, str] | None = None
    ) -> Response:
        """`overrides`: the REST route's model_name and mode, which the options must agree with. A refusal
        before the body is read drains what the client still sends of it (up to MAX_SLIDE_MB, unless it awaits
        100 Continue), so that a client that sends everything before reading gets the reason, not a reset."""
        try:
            if models is None:
                return await self._refuse(request, LOADING, None)
            route = {ROUTE_OPTIONS[name]: value for name, value in (overrides or {}).items()}
            options = slide_options(request.headers, request.query_params.multi_items(), route)
            runner = choose_runner(models, options)  # a wrong model or mode is refused before the body is read
            encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
            if encoding != "identity":  # its tiles are JPEG already: read as sent, it would be "not a slide"
                raise ClientError(
                    f"a slide is sent as it is, not '{encoding}'-encoded", field="content_encoding", status=415
                )
            kind = media_type(request.headers.get("content-type"))
            if self.pending >= self.max_pending:
                busy = f"{self.pending} slides are already here (one runs at a time); retry later"
                return await self._refuse(request, busy, RETRY_AFTER_S)
        except ClientError:
            await drain(request, self.max_bytes, awaits_continue(request))
            raise
        self.pending += 1
        workdir = Path(tempfile.mkdtemp(prefix="optimus-slide-"))
        try:
            body = await _save_body(request, workdir / "body", self.max_bytes)
            if archives.is_archive(kind):
                slide, rna = await asyncio.to_thread(archives.unpack, body, kind, workdir, self.max_bytes, runner.spec)
                body.unlink()
            else:
                slide, rna = body, None
            out = workdir / f"features{SUFFIXES[options.format]}"
            gone = asyncio.ensure_future(disconnected(request))  # while it waits its turn, and while it runs
            stop = threading.Event()
            gone.add_done_callback(partial(_client_gone, stop))
            try:
                async with self.running:
                    if gone.done():  # nobody left to run it for
                        raise ClientDisconnect()
                    summary = await asyncio.to_thread(
                        run_slide, slide, out, options, models, rna, self.read_threads, stop
                    )
            except SlideCancelled:
                raise ClientDisconnect() from None
            finally:
                gone.cancel()
        except BaseException as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            log.warning("slide request failed: %s: %s", type(exc).__name__, exc)
            raise
        finally:
            self.pending -= 1
        headers = {
            "X-Optimus-Tiles": str(summary.tiles),
            "X-Optimus-Skipped-Tiles": str(summary.skipped),
            "X-Optimus-Seconds": f"{summary.seconds['total']:.3f}",
        }
        return FileResponse(
            out, media_type=MEDIA_TYPES[options.format], headers=headers,
            background=BackgroundTask(shutil.rmtree, workdir, ignore_errors=True),
        )  # fmt: skip


def _client_gone(stop: threading.Event, watcher: asyncio.Future[None]) -> None:
    """Stops the slide when its client's watcher saw it go (not when the watcher is cancelled)."""
    if not watcher.cancelled():
        stop.set()


async def _save_body(request: Request, path: Path, limit: int) -> Path:
    """Stream the body to `path`; over `limit` bytes, a 413 (MAX_SLIDE_MB), after what the client still sends
    is drained (up to `limit` more)."""
    size = 0
    with path.open("wb") as file:
        async for chunk in limited_body(request, limit, "MAX_SLIDE_MB", limit):
            size += len(chunk)
            file.write(chunk)
    if size == 0:
        raise ClientError("is empty; send the slide file", field="body")
    return path

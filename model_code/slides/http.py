"""The server's slide route: a request whose body is a slide (or a tar of a slide and its bulk RNA).

Content types: `image/tiff`, `image/x-svs`, `application/octet-stream` (any format OpenSlide reads), and
`application/x-tar` for M-Optimus with bulk RNA: an uncompressed tar holding the slide and
`bulk_rna.json` (a JSON list of the 19374 raw counts, -1 for a gene not measured, as in the tile API).
The body is streamed to a temporary file (never held in memory), up to MAX_SLIDE_MB (default 1024,
SageMaker async's limit); one slide runs at a time per server; the answer is the features file, deleted
once sent.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tarfile
import tempfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from model_code.catalogue import MODELS
from model_code.connections import disconnected
from model_code.errors import ClientError
from model_code.inference import Models
from model_code.records import bulk_rna_vector, media_type
from model_code.slides.job import choose_runner, run_slide
from model_code.slides.options import slide_options
from model_code.slides.tissue import SlideCancelled
from model_code.slides.writers import MEDIA_TYPES, SUFFIXES

log = logging.getLogger("optimus.slides")

TAR = "application/x-tar"
SLIDE_TYPES = frozenset({"image/tiff", "image/x-tiff", "image/svs", "image/x-svs", "application/octet-stream", TAR})
BULK_RNA_FILE = "bulk_rna.json"
MAX_TAR_MEMBERS = 16  # a slide, bulk_rna.json, and room for folders and the like
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

    async def answer(
        self, request: Request, models: Models | None, overrides: dict[str, str] | None = None
    ) -> Response:
        """`overrides`: the REST route's model_name and mode, which the options must agree with."""
        if models is None:
            return JSONResponse({"error": "the models are still loading", "status": 503}, status_code=503)
        route = {ROUTE_OPTIONS[name]: value for name, value in (overrides or {}).items()}
        options = slide_options(request.headers, request.query_params.multi_items(), route)
        runner = choose_runner(models, options)  # a wrong model or mode is refused before the body is read
        kind = media_type(request.headers.get("content-type"))
        if kind == TAR and runner.entry.name != "m-optimus":
            raise ClientError(f"model '{runner.entry.name}' takes no bulk RNA; send the slide alone", field="bulk_rna")
        if self.pending >= self.max_pending:
            return JSONResponse(
                {"error": f"{self.pending} slides are already here (one runs at a time); retry later", "status": 503},
                status_code=503,
                headers={"Retry-After": "60", "connection": "close"},
            )
        self.pending += 1
        workdir = Path(tempfile.mkdtemp(prefix="optimus-slide-"))
        try:
            body = await _save_body(request, workdir / "body", self.max_bytes)
            slide, rna = await asyncio.to_thread(_unpack, body, workdir) if kind == TAR else (body, None)
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
        headers = {"X-Optimus-Tiles": str(summary.tiles), "X-Optimus-Seconds": f"{summary.seconds['total']:.3f}"}
        return FileResponse(
            out, media_type=MEDIA_TYPES[options.format], headers=headers,
            background=BackgroundTask(shutil.rmtree, workdir, ignore_errors=True),
        )  # fmt: skip


def _client_gone(stop: threading.Event, watcher: asyncio.Future[None]) -> None:
    """Stops the slide when its client's watcher saw it go (not when the watcher is cancelled)."""
    if not watcher.cancelled():
        stop.set()


async def _save_body(request: Request, path: Path, limit: int) -> Path:
    """Stream the body to `path`, refused with 413 once it is over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    size = 0
    with path.open("wb") as file:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            file.write(chunk)
    if size == 0:
        raise ClientError("is empty; send the slide file", field="body")
    return path


def _too_large(size: int, limit: int) -> ClientError:
    return ClientError(f"slide of {size} bytes or more is over {limit} bytes (MAX_SLIDE_MB)", field="body", status=413)


def _unpack(body: Path, workdir: Path) -> tuple[Path, np.ndarray]:
    """A tar of one slide and bulk_rna.json -> the slide's path and the log1p counts."""
    try:
        with tarfile.open(body, "r:") as archive:
            files = _files(archive, body.stat().st_size)
            rna = next((m for m in files if Path(m.name).name == BULK_RNA_FILE), None)
            slides = [m for m in files if m is not rna]
            if rna is None or len(slides) != 1:
                names = [member.name for member in files]
                raise ClientError(f"a tar must hold one slide and {BULK_RNA_FILE}; it holds {names}", field="body")
            with archive.extractfile(slides[0]) as source, (workdir / "slide").open("wb") as target:  # type: ignore[union-attr]
                shutil.copyfileobj(source, target, 1 << 20)
            with archive.extractfile(rna) as source:  # type: ignore[union-attr]
                text = source.read(16 << 20)
    except (tarfile.TarError, OSError) as exc:
        raise ClientError(f"is not a readable tar archive ({exc})", field="body") from None
    return workdir / "slide", bulk_rna_counts(text)


def bulk_rna_counts(text: bytes) -> np.ndarray:
    """bulk_rna.json (a JSON list of the 19374 raw counts, -1 for a gene not measured) -> the log1p vector."""
    try:
        counts = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ClientError(f"{BULK_RNA_FILE} is not JSON ({exc})", field="bulk_rna") from None
    if not isinstance(counts, list):
        raise ClientError(f"{BULK_RNA_FILE} must be a JSON list of counts", field="bulk_rna")
    if not all(isinstance(count, int | float) and not isinstance(count, bool) for count in counts):
        raise ClientError(f"{BULK_RNA_FILE} must hold numbers only", field="bulk_rna")
    bulk = bulk_rna_vector(counts, "m-optimus", MODELS["m-optimus"].bulk_rna_genes)
    assert bulk is not None
    return bulk


def _files(archive: tarfile.TarFile, size: int) -> list[tarfile.TarInfo]:
    """The regular files of a tar (links, devices and folders ignored), refusing more than MAX_TAR_MEMBERS
    entries and sparse files (whose holes would unpack to more than the body: a disk bomb)."""
    files = []
    for count, member in enumerate(archive, start=1):
        if count > MAX_TAR_MEMBERS:
            raise ClientError(
                f"a tar must hold one slide and {BULK_RNA_FILE}; it holds over {MAX_TAR_MEMBERS} entries", field="body"
            )
        if member.issparse() or member.size > size:
            raise ClientError(
                f"tar member '{member.name}' is sparse or larger than the tar; tar without --sparse", field="body"
            )
        if member.isfile():
            files.append(member)
    return files

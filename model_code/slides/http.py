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
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask

from model_code.catalogue import MODELS
from model_code.errors import ClientError
from model_code.inference import Models
from model_code.records import bulk_rna_vector, media_type
from model_code.slides.job import choose_runner, run_slide
from model_code.slides.options import slide_options
from model_code.slides.writers import MEDIA_TYPES, SUFFIXES

log = logging.getLogger("optimus.slides")

TAR = "application/x-tar"
SLIDE_TYPES = frozenset({"image/tiff", "image/x-tiff", "image/svs", "image/x-svs", "application/octet-stream", TAR})
BULK_RNA_FILE = "bulk_rna.json"
DEFAULT_SLIDE_MB = 1024


def is_slide(content_type: str | None) -> bool:
    return media_type(content_type) in SLIDE_TYPES


class SlideService:
    """Answers slide requests for one server: one slide at a time, each in a temporary directory."""

    def __init__(self) -> None:
        self.max_bytes = int(float(os.environ.get("MAX_SLIDE_MB") or DEFAULT_SLIDE_MB) * 1024 * 1024)
        self.running = asyncio.Semaphore(1)

    async def answer(self, request: Request, models: Models | None) -> Response:
        if models is None:
            return JSONResponse({"error": "the models are still loading", "status": 503}, status_code=503)
        options = slide_options(request.headers, request.query_params)
        choose_runner(models, options)  # a wrong model or mode is refused before the body is read
        workdir = Path(tempfile.mkdtemp(prefix="optimus-slide-"))
        try:
            body = await _save_body(request, workdir / "body", self.max_bytes)
            kind = media_type(request.headers.get("content-type"))
            slide, rna = await asyncio.to_thread(_unpack, body, workdir) if kind == TAR else (body, None)
            out = workdir / f"features{SUFFIXES[options.format]}"
            async with self.running:
                summary = await asyncio.to_thread(run_slide, slide, out, options, models, rna)
        except BaseException as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            log.warning("slide request failed: %s: %s", type(exc).__name__, exc)
            raise
        headers = {"X-Optimus-Tiles": str(summary.tiles), "X-Optimus-Seconds": f"{summary.seconds['total']:.3f}"}
        return FileResponse(
            out, media_type=MEDIA_TYPES[options.format], headers=headers,
            background=BackgroundTask(shutil.rmtree, workdir, ignore_errors=True),
        )  # fmt: skip


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
            files = [member for member in archive.getmembers() if member.isfile()]
            names = [member.name for member in files]
            rna = next((m for m in files if Path(m.name).name == BULK_RNA_FILE), None)
            slides = [m for m in files if m is not rna]
            if rna is None or len(slides) != 1:
                raise ClientError(f"a tar must hold one slide and {BULK_RNA_FILE}; it holds {names}", field="body")
            with archive.extractfile(slides[0]) as source, (workdir / "slide").open("wb") as target:  # type: ignore[union-attr]
                shutil.copyfileobj(source, target, 1 << 20)
            with archive.extractfile(rna) as source:  # type: ignore[union-attr]
                counts = orjson.loads(source.read(16 << 20))
    except (tarfile.TarError, OSError) as exc:
        raise ClientError(f"is not a readable tar archive ({exc})", field="body") from None
    except orjson.JSONDecodeError as exc:
        raise ClientError(f"{BULK_RNA_FILE} is not JSON ({exc})", field="bulk_rna") from None
    if not isinstance(counts, list):
        raise ClientError(f"{BULK_RNA_FILE} must be a JSON list of counts", field="bulk_rna")
    try:
        bulk = bulk_rna_vector(counts, "m-optimus", MODELS["m-optimus"].bulk_rna_genes)
    except ClientError:
        raise
    except (TypeError, ValueError):
        raise ClientError(f"{BULK_RNA_FILE} must hold numbers only", field="bulk_rna") from None
    assert bulk is not None
    return workdir / "slide", bulk

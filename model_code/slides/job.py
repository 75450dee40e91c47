"""One slide through the models: open, find tissue, lay the grid, run the tiles, write the file.

Reading and decoding run in a thread pool, at most `prefetch` batches ahead of the forward pass, so the
accelerator works while the CPUs read, and memory holds a few batches of tiles whatever the slide's size.
The models are reached only through `Models`' runners, the same ones the tile API uses.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_code import __version__
from model_code.catalogue import EMBEDDING, MODELS, PREDICTION, PREDICTION_WITH_EMBEDDING, canonical_name
from model_code.errors import ClientError
from model_code.inference import Models
from model_code.manifest import MANIFEST
from model_code.runners import Runner
from model_code.slides import tissue
from model_code.slides.archives import check_takes_bulk_rna
from model_code.slides.options import SlideOptions
from model_code.slides.provenance import RECIPE, provenance, recipe
from model_code.slides.reader import Slide, SlideReadError
from model_code.slides.writers import open_writer

log = logging.getLogger("optimus.slides")

TISSUE_SEG = "tissue-seg"
GENE_SETS = ("input_genes", "output_genes")  # a model's gene sets, as its metadata names them


@dataclass
class Summary:
    """What a slide gave: tiles with features, the grid's size, tiles left out (their pixels cannot be
    decoded) and why the first was, seconds per stage."""

    tiles: int = 0
    grid_tiles: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: int = 0
    skipped_reason: str = ""

    @property
    def note(self) -> str:
        """'' or what was left out, for a status line: `2 tiles skipped (cannot be decoded: ...)`."""
        return skipped_note(self.skipped, self.skipped_reason)

    @property
    def tiles_per_s(self) -> float:
        forward = self.seconds.get("tiles", 0.0)
        return self.tiles / forward if forward > 0 else 0.0


def choose_runner(models: Models, options: SlideOptions) -> Runner:
    """The runner the options name, or the endpoint's one model besides tissue-seg; checks the mode."""
    names = [name for name in models.runners if name != TISSUE_SEG]
    name = options.model or (names[0] if len(names) == 1 else None)
    if name is None:
        raise ClientError(f"this endpoint hosts {', '.join(names) or 'no encoder'}; say which", field="model")
    runner = models.runners.get(canonical_name(name) or name)
    if runner is None or runner.entry.name == TISSUE_SEG:
        raise ClientError(
            f"model '{name}' is not hosted here (slide models: {', '.join(names)})", field="model", status=404
        )
    if options.mode not in runner.spec.modes:
        raise ClientError(f"model '{runner.entry.name}' has no mode '{options.mode}'", field="mode")
    if TISSUE_SEG not in models.runners:
        raise ClientError("this endpoint hosts no tissue-seg model, which slides need", field="model", status=404)
    return runner


def run_slide(
    path: Path,
    out: Path,
    options: SlideOptions,
    models: Models,
    bulk_rna: np.ndarray | None = None,
    workers: int = 2,
    stop: threading.Event | None = None,
) -> Summary:
    """Write `out` (HDF5 or Zarr zip, as the options say) for the slide at `path`; ClientError for bad input,
    tissue.SlideCancelled once `stop` is set (its client went away)."""
    runner = choose_runner(models, options)
    if bulk_rna is not None:
        check_takes_bulk_rna(runner.spec)
    summary = Summary()
    began = time.perf_counter()
    slide = Slide(path, options.slide_mpp)
    stop = stop or threading.Event()
    try:
        mpp = options.mpp or runner.entry.resolution
        grid = tissue.grid(slide.geometry, mpp, options.tile_size or runner.entry.tile_size)
        with ThreadPoolExecutor(workers, thread_name_prefix="slide-read") as pool:
            prefetch = 2 * workers
            skip = options.on_bad_tile == "skip"
            mask, mask_mpp, unreadable = tissue.tissue_mask(
                slide, models.runners[TISSUE_SEG], pool, prefetch, stop, skip
            )
            summary.seconds["tissue"] = time.perf_counter() - began
            ratios = tissue.tissue_ratios(mask, mask_mpp, slide.geometry, grid)
            kept, kept_ratios = tissue.select(grid, ratios, options.min_tissue)
            summary.grid_tiles, summary.tiles = len(grid.coords), len(kept.coords)
            keys = _keys(options.mode)
            widths = {name: runner.entry.outputs[key] for name, key in keys.items()}
            genes = {role: runner.extra_metadata[role] for role in GENE_SETS if role in runner.extra_metadata}
            writer = open_writer(
                options.format, out, kept.coords, kept_ratios, widths, options.dtype, mask, options.layout, genes
            )
            started = time.perf_counter()
            size = runner.entry.tile_size

            def read(xy: tuple[int, int]) -> np.ndarray:
                return slide.read(*xy, kept.extent, size)

            done, failed = 0, {}
            for chunk in tissue.chunks(read, kept.coords, runner.max_batch, pool, prefetch, stop, skip):
                failed.update(chunk.failed)
                if 2 * len(failed) > len(kept.coords):
                    raise SlideReadError(_most_failed(failed, kept.coords))
                if len(chunk.pixels):
                    outputs = runner(tissue.records(chunk.pixels, runner.entry.name, options.mode, bulk_rna))
                    writer.write(done, {name: np.stack([o[key] for o in outputs]) for name, key in keys.items()})
                    done += len(chunk.pixels)
            if unreadable and not done:  # nothing of the slide could be read
                raise SlideReadError(f"{unreadable}; is the file damaged?")
            summary.tiles, summary.skipped = done, len(failed)
            summary.skipped_reason = _first(failed, kept.coords)
            summary.seconds["tiles"] = time.perf_counter() - started
            summary.seconds["total"] = time.perf_counter() - began
            attributes = _attributes(options, runner, models, slide, mpp, grid, summary, bulk_rna is not None)
            writer.close(attributes, np.fromiter(failed, np.int64, len(failed)))
    except tissue.SlideCancelled:
        log.warning(
            "slide %s stopped after %.1f s (%d tiles kept): its client went away",
            options.slide_name or path.name, time.perf_counter() - began, summary.tiles,
        )  # fmt: skip
        raise
    finally:
        slide.close()
    log.info(
        "slide %s: %d of %d tiles kept (min_tissue %.2f), %.1f tiles/s; seconds: %s",
        options.slide_name or path.name, summary.tiles, summary.grid_tiles, options.min_tissue,
        summary.tiles_per_s, json.dumps({k: round(v, 2) for k, v in summary.seconds.items()}),
    )  # fmt: skip
    if summary.skipped:
        log.warning("slide %s: %s", options.slide_name or path.name, summary.note)
    return summary


def skipped_note(skipped: int, reason: str) -> str:
    """What a slide's output left out, in words ('' when nothing)."""
    return (
        f"{skipped} tile{'s' if skipped != 1 else ''} skipped (cannot be decoded; first: {reason})" if skipped else ""
    )


def _first(failed: dict[int, str], coords: np.ndarray) -> str:
    """The first failed tile: its level-0 position and why."""
    if not failed:
        return ""
    index = min(failed)
    return f"tile at ({coords[index][0]}, {coords[index][1]}): {failed[index]}"


def _most_failed(failed: dict[int, str], coords: np.ndarray) -> str:
    return (
        f"{len(failed)} of the slide's {len(coords)} tiles (over half) cannot be decoded; first: "
        f"{_first(failed, coords)}; is the file damaged?"
    )


def _keys(mode: str) -> dict[str, str]:
    """Output dataset name -> the runner's output name."""
    if mode == EMBEDDING:
        return {"features": EMBEDDING}
    if mode == PREDICTION:
        return {"features": PREDICTION}
    return {"features": PREDICTION, "embeddings": EMBEDDING}


def _attributes(
    options: SlideOptions,
    runner: Runner,
    models: Models,
    slide: Slide,
    mpp: float,
    grid: tissue.Grid,
    summary: Summary,
    with_rna: bool,
) -> dict[str, Any]:
    entry = runner.entry
    geometry = slide.geometry
    return {
        "model": entry.name,
        "model_version": model_version(models.model_dir, entry.files),
        "pooling": entry.pooling if MODELS[entry.name].family == "encoder" else None,
        "mode": options.mode,
        "output": PREDICTION if options.mode in (PREDICTION, PREDICTION_WITH_EMBEDDING) else EMBEDDING,
        "demo_model": entry.demo,
        "tile_size": grid.size,
        "model_input_size": entry.tile_size,
        "mpp": mpp,
        "patch_size_level0": grid.extent,
        "min_tissue": options.min_tissue,
        "tissue_seg_mpp": models.runners[TISSUE_SEG].entry.resolution,
        "slide_name": options.slide_name,
        "slide_width": geometry.width,
        "slide_height": geometry.height,
        "slide_mpp": geometry.mpp,
        "slide_mpp_source": geometry.mpp_source,
        "slide_vendor": slide.vendor,
        "bulk_rna": with_rna,
        "tiles": summary.tiles,
        "grid_tiles": summary.grid_tiles,
        "skipped_tiles": summary.skipped,
        "skipped_reason": summary.skipped_reason or None,
        "seconds": json.dumps({k: round(v, 3) for k, v in summary.seconds.items()}),
        "layout": options.layout,
        RECIPE: json.dumps(recipe(options, entry.name, with_rna), sort_keys=True),
        "kit_version": __version__,
        **provenance(),
    }


def model_version(model_dir: Path, files: dict[str, str]) -> str | None:
    """The sha256 (first 16 hex digits) the manifest records for the model's weights or program."""
    try:
        digests = json.loads((model_dir / MANIFEST).read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        return None
    main = files.get("weights") or files.get("program")
    return f"sha256:{digests[main][:16]}" if main in digests else None

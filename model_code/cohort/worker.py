"""The run loop: the host's share of the slides, each copied ahead to local disk, run through the slide
pipeline (`run_slide`, as the endpoint runs it), published atomically under the checkpoints, its outcome
recorded. SIGTERM (spot gives 120 s) stops at the next batch of tiles and leaves no half-made output."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_code.cohort.config import JobConfig, JobFailed, read_config
from model_code.cohort.contract import COHORT_CHANNEL, COHORT_FILE, DONE, FAILED, MODEL_CHANNEL, SLIDES_CHANNEL
from model_code.cohort.copier import CopyAhead, Stopped
from model_code.cohort.resume import finished_tiles
from model_code.cohort.split import split
from model_code.cohort.status import StatusLog
from model_code.cohort.units import Unit, list_units, read_cohort
from model_code.errors import ClientError
from model_code.inference import Models, model_fn
from model_code.runners import Runner
from model_code.slides.archives import bulk_rna_file
from model_code.slides.job import choose_runner, model_version, run_slide
from model_code.slides.options import SlideOptions, slide_options
from model_code.slides.provenance import recipe
from model_code.slides.slide_files import slide_file
from model_code.slides.tissue import SlideCancelled

log = logging.getLogger("optimus.cohort")

PARTIAL = ".partial"  # an output being published: `.NAME.partial`, renamed to NAME once whole


@dataclass
class Task:
    unit: Unit
    options: SlideOptions
    out: Path


class Worker:
    def __init__(self, ml_root: Path, scratch: Path, read_threads: int, stop: threading.Event):
        self.ml_root, self.read_threads, self.stop = ml_root, read_threads, stop
        self.scratch = scratch / "optimus-cohort"  # the worker's own: emptied at start and end

    def run(self) -> int:
        """0 once every slide of the host has an outcome; 143 when stopped first."""
        config = read_config(self.ml_root)
        models, runner = self._load(config)
        share = self._share(config)
        status = StatusLog.open(config.checkpoints, config.host, [unit.name for unit in share])
        _remove_partials(config.checkpoints)
        tasks = [task for unit in share if (task := self._task(config, runner, models, unit, status))]
        gigabytes = sum(task.unit.size for task in tasks) / 1e9
        log.info(
            "host %s of %d: %d slides, %d to run (%.2f GB), %d done before",
            config.host, len(config.hosts), len(share), len(tasks), gigabytes, len(share) - len(tasks),
        )  # fmt: skip
        status.progress()
        shutil.rmtree(self.scratch, ignore_errors=True)
        copier = CopyAhead(config.channel(SLIDES_CHANNEL), self.scratch, self.stop)
        try:
            for i, task in enumerate(tasks):
                if self.stop.is_set():
                    break
                following = tasks[i + 1].unit if i + 1 < len(tasks) else None
                self._one(config, runner, models, task, following, copier, status)
        finally:
            copier.close()
        if self.stop.is_set():
            left = sum(1 for task in tasks if task.unit.name not in status.outcomes)
            log.warning("stopped (SIGTERM) with %d slides of this host left; a restart resumes them", left)
            return 143
        return 0

    def _load(self, config: JobConfig) -> tuple[Models, Runner]:
        if config.gpu_required and not torch.cuda.is_available():
            raise JobFailed(
                f"instance type {config.instance_type} has a GPU but torch sees none (CUDA driver or build mismatch)"
            )
        try:
            models = model_fn(config.channel(MODEL_CHANNEL))
        except Exception as exc:
            raise JobFailed(f"the model artifact (channel '{MODEL_CHANNEL}') was refused: {exc}") from None
        try:
            return models, choose_runner(models, config.options)
        except ClientError as exc:
            raise JobFailed(f"hyperparameter '{exc.field}': {exc.reason}") from None

    def _share(self, config: JobConfig) -> list[Unit]:
        """The host's slides: cohort.jsonl's or the channel's, split by bytes (all it sees when sharded)."""
        slides = config.channel(SLIDES_CHANNEL)
        cohort = config.channel(COHORT_CHANNEL) / COHORT_FILE
        units = read_cohort(cohort, slides) if cohort.is_file() else list_units(slides)
        if not units:
            raise JobFailed(
                f"no slides in the channel '{SLIDES_CHANNEL}'"
                + (f" ({COHORT_FILE} is empty)" if cohort.is_file() else "")
            )
        return units if config.sharded else split(units, config.hosts)[config.host]

    def _task(self, config: JobConfig, runner: Runner, models: Models, unit: Unit, status: StatusLog) -> Task | None:
        """The slide's task, or None when its output is already there, made the same way (recorded if its
        outcome was not); a slide whose own options are refused is recorded as failed."""
        overrides = {"slide_mpp": unit.slide_mpp, "slide_name": unit.slide_id or unit.name}
        merged = {**config.options.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        try:
            options = slide_options({}, [(k, str(v)) for k, v in merged.items() if v is not None])
        except ClientError as exc:
            status.record(unit.name, FAILED, str(exc), 0, 0.0)
            return None
        out = config.checkpoints / unit.output(options.format)
        wanted = recipe(options, runner.entry.name, unit.bulk_rna is not None)
        tiles = finished_tiles(out, wanted, model_version(models.model_dir, runner.entry.files))
        if tiles is None:
            return Task(unit, options, out)
        if status.outcomes.get(unit.name) != DONE:
            status.record(unit.name, DONE, None, tiles, 0.0)
        return None

    def _one(
        self, config: JobConfig, runner: Runner, models: Models, task: Task, following: Unit | None, copier: CopyAhead,
        status: StatusLog,
    ) -> None:  # fmt: skip
        unit, began = task.unit, time.perf_counter()
        made = self.scratch / "out" / task.out.name
        made.parent.mkdir(parents=True, exist_ok=True)
        try:
            if not unit.files:
                raise ClientError(f"'{unit.name}' is not in the channel '{SLIDES_CHANNEL}'", field="slide")
            local = copier.fetch(unit)
            if following is not None:
                copier.ahead(following)
            rna = self._bulk_rna(config, unit, runner)
            summary = run_slide(slide_file(local), made, task.options, models, rna, self.read_threads, self.stop)
            _publish(made, task.out)
        except (SlideCancelled, Stopped):
            return
        except ClientError as exc:
            status.record(unit.name, FAILED, str(exc), 0, time.perf_counter() - began)
        except Exception as exc:  # one slide's unforeseen failure must not stop the cohort
            log.exception("slide %s failed", unit.name)
            status.record(unit.name, FAILED, f"{type(exc).__name__}: {exc}", 0, time.perf_counter() - began)
        else:
            status.record(unit.name, DONE, None, summary.tiles, time.perf_counter() - began)
        finally:
            copier.release(unit)
            shutil.rmtree(made.parent, ignore_errors=True)

    def _bulk_rna(self, config: JobConfig, unit: Unit, runner: Runner) -> np.ndarray | None:
        if unit.bulk_rna is None:
            return None
        try:
            return bulk_rna_file(config.channel(COHORT_CHANNEL) / unit.bulk_rna, runner.spec)
        except OSError as exc:
            raise ClientError(
                f"cannot read '{unit.bulk_rna}' in the channel '{COHORT_CHANNEL}': {exc.strerror}", field="bulk_rna"
            ) from None


def _publish(made: Path, out: Path) -> None:
    """`made` (local disk) copied to `out` under a temporary name, then renamed: whole, or not there."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}{PARTIAL}")
    shutil.copyfile(made, partial)
    with partial.open("rb") as file:
        os.fsync(file.fileno())
    os.replace(partial, out)


def _remove_partials(checkpoints: Path) -> None:
    """Outputs a stopped job was publishing (restored from S3 with the checkpoints)."""
    for partial in checkpoints.rglob(f".*{PARTIAL}"):
        partial.unlink(missing_ok=True)


def run_job(ml_root: Path, scratch: Path, read_threads: int, stop: threading.Event) -> int:
    """The job's exit status; a JobFailed is written to output/failure (the job's FailureReason)."""
    try:
        return Worker(ml_root, scratch, read_threads, stop).run()
    except JobFailed as exc:
        log.error("the job failed: %s", exc)
        failure = ml_root / "output" / "failure"
        failure.parent.mkdir(parents=True, exist_ok=True)
        failure.write_text(str(exc) + "\n")
        return 1

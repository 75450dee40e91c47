"""The cohort worker run as SageMaker runs a training job: a generated /opt/ml tree (the three config files as
SageMaker writes them, the channels, the checkpoints), `python -m model_code.cohort --ml-root DIR` in a process of
its own, over a cohort of generated slides (one nested in a folder, one truncated, one without mpp, one DICOM
series of several files)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from wsidicomizer import WsiDicomizer
from wsidicomizer.wsidicomizer import SourceIdentifier

from kit.cohorts.local_job import write_job
from kit.slides.synthetic import make_slide
from model_code.cohort.contract import METRIC_DEFINITIONS, PROGRESS_PREFIX
from model_code.cohort.split import split
from model_code.cohort.units import Unit, list_units
from tests.support.paths import REPO
from tests.support.polling import eventually

H1 = {"model": "h1", "dtype": "float32"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """a.svs, sub/b.svs (40x), truncated.svs, no-mpp.svs, series/ (a DICOM series: one file per level), notes.txt."""
    root = tmp_path_factory.mktemp("cohort")
    slides = root / "slides"
    make_slide(slides / "a.svs", 0.5)
    make_slide(slides / "sub" / "b.svs", 0.25, origin_px=(300, 200))
    make_slide(slides / "no-mpp.svs", None)
    data = (slides / "a.svs").read_bytes()
    (slides / "truncated.svs").write_bytes(data[: len(data) * 2 // 3])
    source = make_slide(root / "dicom-source.svs", 0.5, origin_px=(330, 150))
    WsiDicomizer.convert(
        source, slides / "series", preferred_source=SourceIdentifier.TIFFSLIDE, include_label=False,
        include_overview=False,
    )  # fmt: skip
    (slides / "notes.txt").write_text("not a slide")
    return slides


def run_worker(root: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The worker in its own process, as the image's `train` runs it."""
    return subprocess.run(
        [sys.executable, "-m", "model_code.cohort", "--ml-root", str(root)],
        env=_env(env), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **(extra or {})}


def outcomes(root: Path, host: str = "algo-1") -> list[dict[str, object]]:
    path = root / "checkpoints" / "status" / f"{host}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_slide_is_a_file_or_a_multi_file_unit(cohort: Path) -> None:
    units = {unit.name: unit for unit in list_units(cohort)}
    assert sorted(units) == ["a.svs", "no-mpp.svs", "series", "sub/b.svs", "truncated.svs"]
    assert len(units["series"].files) >= 2 and all(name.startswith("series/") for name in units["series"].files)
    assert units["series"].size == sum(p.stat().st_size for p in (cohort / "series").iterdir())
    assert units["sub/b.svs"].output("h5") == "sub/b.h5" and units["series"].output("zarr") == "series.zarr.zip"


def test_the_split_is_balanced_by_bytes_not_by_count() -> None:
    units = [Unit("big.svs", ("big.svs",), 3000)] + [Unit(f"s{i}.svs", (f"s{i}.svs",), 500) for i in range(6)]
    shares = split(units, ["algo-1", "algo-2"])
    assert [u.name for u in shares["algo-1"]] == ["big.svs"]
    assert len(shares["algo-2"]) == 6
    assert split(list(reversed(units)), ["algo-1", "algo-2"])["algo-1"][0].name == "big.svs"  # order-free


def test_two_hosts_split_the_cohort_and_write_features_files(artifact: Path, cohort: Path, tmp_path: Path) -> None:
    hosts = ["algo-1", "algo-2"]
    roots = {host: write_job(tmp_path / host, host, hosts, H1, artifact, cohort) for host in hosts}
    runs = {host: run_worker(root) for host, root in roots.items()}
    for host, run in runs.items():
        assert run.returncode == 0, run.stderr
        assert not (roots[host] / "output" / "failure").exists()
    seen = {host: [row["slide"] for row in outcomes(root, host)] for host, root in roots.items()}
    assert sorted(seen["algo-1"] + seen["algo-2"]) == ["a.svs", "no-mpp.svs", "series", "sub/b.svs", "truncated.svs"]
    assert seen["algo-1"] and seen["algo-2"], "both hosts have work"
    rows = {row["slide"]: (host, row) for host, root in roots.items() for row in outcomes(root, host)}
    reasons = {slide: row["reason"] for slide, (_, row) in rows.items() if row["status"] == "failed"}
    assert sorted(reasons) == ["no-mpp.svs", "truncated.svs"]
    assert "slide_mpp" in str(reasons["no-mpp.svs"]) and "microns per pixel" in str(reasons["no-mpp.svs"])
    for slide, output in (("a.svs", "a.h5"), ("sub/b.svs", "sub/b.h5"), ("series", "series.h5")):
        host, row = rows[slide]
        assert row["status"] == "done" and row["reason"] is None and row["seconds"] > 0  # type: ignore[operator]
        with h5py.File(roots[host] / "checkpoints" / output, "r") as features:
            assert features["features"].shape == (row["tiles"], 1536) and features["features"].dtype == np.float32
            assert features["coords"].shape == (row["tiles"], 2)
            assert np.isfinite(features["features"][:]).all() and features.attrs["model"] == "h1"
            assert features.attrs["slide_name"] == slide
        assert int(row["tiles"]) > 0  # type: ignore[call-overload]
    assert not list((tmp_path / "algo-1" / "checkpoints").rglob("*.partial"))
    assert not list((tmp_path / "algo-1" / "scratch").rglob("*.*")), "local copies are deleted"
    progress = [line for line in runs["algo-1"].stdout.splitlines() if line.startswith(PROGRESS_PREFIX)]
    assert all(re.search(metric["Regex"], progress[-1]) for metric in METRIC_DEFINITIONS)


def test_sigterm_stops_mid_slide_and_a_restart_redoes_nothing_finished(artifact: Path, tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    for i in range(4):  # 40x slides of a few seconds each on a CPU
        make_slide(slides / f"s{i}.svs", 0.25, (1344, 1120), (160 + 30 * i, 180))
    root = write_job(tmp_path / "ml", "algo-1", ["algo-1"], H1, artifact, slides)
    status = root / "checkpoints" / "status" / "algo-1.jsonl"
    worker = subprocess.Popen(
        [sys.executable, "-m", "model_code.cohort", "--ml-root", str(root)], env=_env(None),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    eventually(
        lambda: worker.poll() is not None or '"done"' in status.read_text(), "a slide done (or the worker gone)", 300
    )
    assert worker.poll() is None, "the worker ended before it was stopped"
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 143, stderr
    first = {row["slide"]: row for row in outcomes(root)}
    assert 1 <= len(first) < 4, "stopped before the end"
    made = {p.relative_to(root / "checkpoints").as_posix(): p.stat().st_mtime_ns for p in root.glob("checkpoints/*.h5")}
    assert sorted(made) == sorted(name.replace(".svs", ".h5") for name in first), "only finished slides have outputs"
    assert not list(root.rglob("*.partial")) and not list((root / "scratch").rglob("*.*"))

    again = run_worker(root)
    assert again.returncode == 0, again.stderr
    rows = outcomes(root)
    assert sorted(row["slide"] for row in rows) == [f"s{i}.svs" for i in range(4)], "each slide done once"
    assert all(row["status"] == "done" for row in rows)
    for name, mtime in made.items():
        assert (root / "checkpoints" / name).stat().st_mtime_ns == mtime, f"{name} was made again"


def test_a_restart_with_other_options_makes_the_outputs_again(artifact: Path, cohort: Path, tmp_path: Path) -> None:
    root = write_job(tmp_path / "ml", "algo-1", ["algo-1"], {**H1, "min_tissue": "0.5"}, artifact, cohort)
    assert run_worker(root).returncode == 0
    before = (root / "checkpoints" / "a.h5").stat().st_mtime_ns
    write_job(root, "algo-1", ["algo-1"], {**H1, "min_tissue": "0.25"}, artifact, cohort)
    assert run_worker(root).returncode == 0
    with h5py.File(root / "checkpoints" / "a.h5", "r") as features:
        assert features.attrs["min_tissue"] == 0.25
    assert (root / "checkpoints" / "a.h5").stat().st_mtime_ns != before
    assert [row["status"] for row in outcomes(root) if row["slide"] == "a.svs"] == ["done", "done"]


def test_cohort_jsonl_names_the_slides_their_ids_and_mpp(artifact: Path, cohort: Path, tmp_path: Path) -> None:
    listing = tmp_path / "cohort-channel"
    listing.mkdir()
    rows = [
        {"slide": "no-mpp.svs", "slide_id": "patient-7", "slide_mpp": 0.5, "bulk_rna": None},
        {"slide": "sub/b.svs", "slide_id": None, "slide_mpp": None, "bulk_rna": None},
        {"slide": "gone.svs", "slide_id": None, "slide_mpp": None, "bulk_rna": None},
    ]
    (listing / "cohort.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    root = write_job(tmp_path / "ml", "algo-1", ["algo-1"], H1, artifact, cohort, cohort=listing)
    assert run_worker(root).returncode == 0
    status = {row["slide"]: row for row in outcomes(root)}
    assert sorted(status) == ["gone.svs", "no-mpp.svs", "sub/b.svs"]
    assert status["no-mpp.svs"]["status"] == "done" and status["sub/b.svs"]["status"] == "done"
    assert status["gone.svs"]["status"] == "failed" and "is not in the channel" in str(status["gone.svs"]["reason"])
    with h5py.File(root / "checkpoints" / "patient-7.h5", "r") as features:
        assert features.attrs["slide_mpp_source"] == "slide_mpp option" and features.attrs["slide_name"] == "patient-7"


def test_train_runs_a_sharded_channel_whole_on_each_host(artifact: Path, cohort: Path, tmp_path: Path) -> None:
    shard = tmp_path / "shard"
    make_slide(shard / "only.svs", 0.5)
    root = write_job(
        tmp_path / "ml", "algo-2", ["algo-1", "algo-2"], H1, artifact, shard, distribution="ShardedByS3Key"
    )
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    train = [str(REPO / "container" / "train"), "--ml-root", str(root)]  # the image's `train`, as SageMaker runs it
    run = subprocess.run(train, env=_env({"PATH": path}), capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    assert [row["slide"] for row in outcomes(root, "algo-2")] == ["only.svs"]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered artifact", "the model artifact (channel 'model') was refused"),
        ("no slides", "no slides in the channel 'slides'"),
        ("bad hyperparameter", "hyperparameter 'mpp'"),
        ("unknown hyperparameter", "hyperparameter 'tile'"),
        ("model not hosted", "hyperparameter 'model'"),
        ("GPU absent", "has a GPU but torch sees none"),
    ],
)
def test_what_stops_every_slide_fails_the_job(
    artifact: Path, cohort: Path, tmp_path: Path, case: str, reason: str
) -> None:
    model, slides, hyper, instance = tmp_path / "model", cohort, dict(H1), "ml.c5.2xlarge"
    subprocess.run(["cp", "-r", str(artifact), str(model)], check=True)
    if case == "tampered artifact":
        weights = next(p for p in model.rglob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    elif case == "no slides":
        slides = tmp_path / "empty"
        slides.mkdir()
    elif case == "bad hyperparameter":
        hyper["mpp"] = "fine"
    elif case == "unknown hyperparameter":
        hyper["tile"] = "224"
    elif case == "model not hosted":
        hyper["model"] = "h0"
    else:
        instance = "ml.g5.xlarge"
    root = write_job(tmp_path / "ml", "algo-1", ["algo-1"], hyper, model, slides, instance_type=instance)
    run = run_worker(root, {"CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 1
    assert reason in (root / "output" / "failure").read_text()
    assert "Traceback" not in run.stderr

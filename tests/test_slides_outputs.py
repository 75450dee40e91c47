"""`kit slides run` outputs as the operator meets them: names that keep the slide's path, no silent overwrite or
skip, a resume that reuses only what was made the same way, --overwrite, whole names in the table, and
TRIDENT's job tree. Real server, real HTTP, generated slides."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest

from kit.__main__ import main
from kit.slides.synthetic import make_slide
from tests.support.serving import Running

LONG = "TCGA-A1-A0SB-01Z-00-DX1.B34C68B9-8F01-4FDA-9F5D-4A53C4B32A1D"  # 61 characters, as TCGA names slides


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """a.svs, sub/a.svs (same name, another folder) and a slide with a long TCGA-style name."""
    root = tmp_path_factory.mktemp("cohort")
    make_slide(root / "a.svs", 0.5)
    (root / "sub").mkdir()
    shutil.copy(root / "a.svs", root / "sub" / "a.svs")
    shutil.copy(root / "a.svs", root / "sub" / f"{LONG}.svs")
    return root


def slides_run(running: Running, *args: str) -> list[str]:
    return ["slides", "run", *args, "--endpoint-url", running.url, "--model", "h1"]


@pytest.fixture
def made_once(
    running: Running, cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[list[str], Path]:
    """`kit slides run a.svs` done once into tmp_path/features (its report read): the command, and a.h5."""
    out = tmp_path / "features"
    argv = slides_run(running, str(cohort / "a.svs"), "--out", str(out))
    assert main(argv) == 0
    capsys.readouterr()
    return argv, out / "a.h5"


def test_slides_keep_their_path_and_whole_names(
    running: Running, cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "features"
    assert main(slides_run(running, str(cohort), "--out", str(out))) == 0
    report = capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.h5")) == ["a.h5", f"sub/{LONG}.h5", "sub/a.h5"]
    assert "3 slides: 3 done, 0 skipped, 0 failed" in report
    assert f"\nsub/{LONG}.svs " in report  # its row, the name not cut at 32 characters
    header = next(line for line in report.splitlines() if line.startswith("slide"))
    row = next(line for line in report.splitlines() if line.startswith(f"sub/{LONG}.svs "))
    assert header.index("status") == row.index("done"), "the columns line up under the long name"


def test_two_slides_with_one_output_are_refused_before_anything_runs(
    running: Running, cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "features"
    argv = slides_run(running, str(cohort / "a.svs"), str(cohort / "sub" / "a.svs"), "--out", str(out))
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "one output name" in error
    assert str(cohort / "a.svs") in error and str(cohort / "sub" / "a.svs") in error
    assert not out.exists(), "nothing ran"


def test_resume_reuses_what_was_made_the_same_way_and_overwrite_redoes_it(
    made_once: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv, output = made_once
    made = output.stat().st_mtime_ns
    assert main(argv) == 0
    report = capsys.readouterr().out
    assert "1 slides: 0 done, 1 skipped, 0 failed" in report and "made the same way" in report
    assert output.stat().st_mtime_ns == made
    assert main([*argv, "--overwrite"]) == 0
    assert "1 slides: 1 done, 0 skipped, 0 failed" in capsys.readouterr().out
    assert output.stat().st_mtime_ns != made


def test_resume_with_other_options_is_refused_naming_what_differs(
    made_once: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv, output = made_once
    assert main([*argv, "--option", "min_tissue=0.25", "--layout", "stamp"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "made another way" in error and "--overwrite" in error
    assert "min_tissue 0.5 there, 0.25 asked" in error and "layout trident there, stamp asked" in error
    assert main([*argv, "--option", "min_tissue=0.25", "--layout", "stamp", "--overwrite"]) == 0
    with h5py.File(output, "r") as written:
        assert json.loads(written.attrs["recipe"])["min_tissue"] == 0.25 and "feats" in written


def test_an_output_without_a_recipe_is_not_taken_for_one_made_the_same_way(
    running: Running, cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "features"
    out.mkdir()
    with h5py.File(out / "a.h5", "w") as old:  # as kits before the recipe wrote them
        old.attrs.update({"model": "h1", "tiles": 3, "kit_version": "0.0.9"})
    (out / "sub").mkdir()
    (out / "sub" / "a.h5").write_bytes(b"half a file")
    assert main(slides_run(running, str(cohort), "--out", str(out))) == 2
    error = capsys.readouterr().err
    assert "no recipe recorded (kit 0.0.9)" in error and "sub/a.h5 (not a features file" in error


def test_trident_tree_puts_files_where_trident_looks(
    running: Running, cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "job"
    assert main(slides_run(running, str(cohort / "a.svs"), "--out", str(out), "--trident-tree")) == 0
    assert (out / "20x_224px_0px_overlap" / "features_hoptimus1" / "a.h5").is_file()
    capsys.readouterr()
    assert (
        main(slides_run(running, str(cohort / "a.svs"), "--out", str(out), "--trident-tree", "--layout", "stamp")) == 2
    )
    assert "--trident-tree lays out TRIDENT's h5 files" in capsys.readouterr().err


def test_a_bad_slide_option_is_named_before_anything_runs(
    running: Running, cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = slides_run(running, str(cohort / "a.svs"), "--out", str(tmp_path / "f"), "--option", "min_tissue=2")
    assert main(argv) == 2
    assert "slide option min_tissue:" in capsys.readouterr().err and not (tmp_path / "f").exists()


def test_zarr_outputs_are_directories_the_vendor_sdk_opens_and_resume_like_h5(
    running: Running, cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The SDK's readers call `zarr.open(str(path))` on a `.zarr` directory (a zip is not opened that way)."""
    import zarr

    argv = slides_run(running, str(cohort / "a.svs"), "--out", str(tmp_path), "--format", "zarr")
    assert main(argv) == 0
    output = tmp_path / "a.zarr"
    group = zarr.open(str(output), mode="r")
    assert output.is_dir() and group["outputs"].shape == (group.attrs["num_tiles"], 1536)
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob("*.unpacking"))
    made = (output / ".zattrs").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0 and "0 done, 1 skipped" in capsys.readouterr().out
    assert main([*argv, "--overwrite"]) == 0 and "1 done, 0 skipped" in capsys.readouterr().out
    assert (output / ".zattrs").stat().st_mtime_ns != made and sorted(tmp_path.iterdir()) == [output]

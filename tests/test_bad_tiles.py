"""Slides with damaged tiles, over real HTTP: every other tile's features come back, the tiles left out are
named (`skipped_coords`, `skipped_tiles`, the log, `kit slides run`'s table), `on_bad_tile=fail` keeps the
all-or-nothing answer, and a slide where most tiles fail is an error with the count.

The damage: one level-0 JPEG tile of a generated SVS whose first marker after SOI is made invalid (0xFF01),
which libjpeg (OpenSlide) and the direct tile reader both refuse. Was: the whole slide answered 400."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from zarr.storage import ZipStore

from kit.slides.synthetic import make_slide, slide_image, write_svs
from model_code.slides.layouts import read_output
from model_code.slides.reader import Slide
from tests.support.serving import Running
from tests.support.slides import TILE, assert_same_features, damaged, post_slide, tile_index

MODEL_TILE = 224


def overlapping(coords: np.ndarray, index: int, width: int) -> np.ndarray:
    """Which model tiles (224 px at level 0 here) overlap JPEG tile `index`."""
    row, col = divmod(index, -(-width // TILE))
    x, y = coords[:, 0], coords[:, 1]
    return (
        (x < (col + 1) * TILE) & (x + MODEL_TILE > col * TILE) & (y < (row + 1) * TILE) & (y + MODEL_TILE > row * TILE)
    )


def h5(answer_content: bytes) -> h5py.File:
    return h5py.File(io.BytesIO(answer_content), "r")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_slide(tmp_path_factory.mktemp("bad-tiles") / "half.svs", 0.5)


@pytest.fixture(scope="module")
def reference(running: Running, good: Path) -> tuple[np.ndarray, np.ndarray]:
    """The undamaged slide's coords and features."""
    answer = post_slide(running, good.read_bytes(), "model=h1;dtype=float32")
    assert answer.status_code == 200, answer.text
    with h5(answer.content) as out:
        return out["coords"][:], out["features"][:]


def checked_box_tiles(slide: Path) -> set[int]:
    """The JPEG tiles the direct reader compares with OpenSlide when the slide is opened (its centre)."""
    with tifffile.TiffFile(slide) as tiff:
        height, width = tiff.pages.first.shape[:2]
    columns, rows = width // TILE, height // TILE
    x, y = columns // 2 * TILE - TILE // 2, rows // 2 * TILE - TILE // 2
    return {tile_index(x + dx, y + dy, width) for dx in (0, TILE - 1) for dy in (0, TILE - 1)}


@pytest.mark.parametrize("where", ["direct tile reader", "openslide"])
def test_a_damaged_tile_costs_only_the_tiles_over_it(
    running: Running,
    good: Path,
    reference: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    coords, features = reference
    width = tifffile.TiffFile(good).pages.first.shape[1]
    checked = checked_box_tiles(good)
    # A tile under kept model tiles: outside the opening check (read directly), or inside it (the check fails,
    # so level 0 goes through OpenSlide, whose handle the error leaves failing every later call).
    candidates = sorted({tile_index(int(x), int(y), width) for x, y in coords})
    index = next(i for i in candidates if (i in checked) == (where == "openslide"))
    bad = damaged(good, tmp_path / "damaged.svs", [index])
    opened = Slide(bad)
    assert (opened._tiles is None) == (where == "openslide"), "the damage is not where the case needs it"
    opened.close()
    lost = overlapping(coords, index, width)
    assert 0 < lost.sum() < len(coords) // 2
    with caplog.at_level(logging.WARNING, logger="optimus.slides"):
        answer = post_slide(running, bad.read_bytes(), "model=h1;dtype=float32")
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-optimus-skipped-tiles"] == str(lost.sum())
    with h5(answer.content) as out:
        np.testing.assert_array_equal(out["skipped_coords"][:], coords[lost])
        np.testing.assert_array_equal(out["coords"][:], coords[~lost])
        assert out.attrs["skipped_tiles"] == lost.sum() and out.attrs["tiles"] == (~lost).sum()
        assert "cannot be decoded" in out.attrs["skipped_reason"]
        assert out["features"].shape == (int((~lost).sum()), 1536) and len(out["tissue_ratios"]) == (~lost).sum()
        assert_same_features(out["features"][:], features[~lost])
    assert f"{lost.sum()} tile{'s' if lost.sum() > 1 else ''} skipped (cannot be decoded" in caplog.text


def test_on_bad_tile_fail_keeps_the_all_or_nothing_answer(
    running: Running, good: Path, reference: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    coords, _ = reference
    width = tifffile.TiffFile(good).pages.first.shape[1]
    bad = damaged(good, tmp_path / "damaged.svs", [tile_index(int(coords[0][0]), int(coords[0][1]), width)])
    answer = post_slide(running, bad.read_bytes(), "model=h1;on_bad_tile=fail")
    assert answer.status_code == 400 and answer.json()["field"] == "body", answer.text
    assert "cannot be decoded" in answer.json()["reason"]
    assert post_slide(running, bad.read_bytes(), "model=h1;on_bad_tile=sometimes").json()["field"] == "on_bad_tile"


def test_a_slide_where_most_tiles_fail_is_an_error_with_the_count(
    running: Running, good: Path, reference: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    coords, _ = reference
    with tifffile.TiffFile(good) as tiff:
        count = len(tiff.pages.first.dataoffsets)
    bad = damaged(good, tmp_path / "damaged.svs", [i for i in range(count) if i % 5])  # 4 tiles in 5
    answer = post_slide(running, bad.read_bytes(), "model=h1")
    assert answer.status_code == 400 and answer.json()["field"] == "body", answer.text
    assert f"of the slide's {len(coords)} tiles (over half) cannot be decoded" in answer.json()["reason"]


def test_zarr_output_names_the_skipped_tiles_too(
    running: Running, good: Path, reference: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    coords, _ = reference
    width = tifffile.TiffFile(good).pages.first.shape[1]
    index = tile_index(int(coords[-1][0]), int(coords[-1][1]), width)
    lost = overlapping(coords, index, width)
    bad = damaged(good, tmp_path / "damaged.svs", [index])
    answer = post_slide(running, bad.read_bytes(), "model=h1;format=zarr")
    assert answer.status_code == 200, answer.text
    (tmp_path / "out.zarr.zip").write_bytes(answer.content)
    group = zarr.open_group(ZipStore(tmp_path / "out.zarr.zip", mode="r"), mode="r")
    in_sdk_terms = np.round(coords[lost] / group.attrs["patch_size_level0"]) * 224  # as its coords: pixels at mpp
    np.testing.assert_array_equal(group["skipped_coords"][:], in_sdk_terms)
    assert group["outputs"].shape[0] == group["coords"].shape[0] == (~lost).sum() == group.attrs["tiles"]
    np.testing.assert_array_equal(read_output(tmp_path / "out.zarr.zip").arrays["skipped_coords"], coords[lost])


def test_a_region_tissue_seg_cannot_read_is_taken_as_tissue(running: Running, tmp_path: Path) -> None:
    """A slide without a pyramid: tissue-seg reads level 0 too, so the damaged tile hits both passes; the model
    tiles over it are tried and named as skipped rather than lost without a word."""
    plain = write_svs(tmp_path / "flat.svs", slide_image(0.5, (896, 672), (370, 180)), 0.5, pyramid=False)
    first = post_slide(running, plain.read_bytes(), "model=h1;min_tissue=0.25")
    with h5(first.content) as out:
        coords = out["coords"][:]
    width = tifffile.TiffFile(plain).pages.first.shape[1]
    index = tile_index(int(coords[len(coords) // 3][0]), int(coords[len(coords) // 3][1]), width)
    answer = post_slide(running, damaged(plain, tmp_path / "bad.svs", [index]).read_bytes(), "model=h1;min_tissue=0.25")
    assert answer.status_code == 200, answer.text
    with h5(answer.content) as out:
        skipped = {tuple(xy) for xy in out["skipped_coords"][:]}
        assert skipped >= {tuple(xy) for xy in coords[overlapping(coords, index, width)]}
        assert not skipped & {tuple(xy) for xy in out["coords"][:]}

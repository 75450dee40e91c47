"""Feature files as the next tools read them: each reader's logic (TRIDENT v0.3.0, CLAM, STAMP v2.5; DESIGN.md,
"Feature files that the next tools read") re-expressed in tests/support/readers.py, run on files the real
server wrote for a generated 40x slide (0.25 um/px, where level-0 pixels and micrometres differ by a factor 4)."""

from __future__ import annotations

import io
import json
import math
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from kit.slides.synthetic import make_slide
from model_code.slides import provenance
from model_code.slides.layouts import job_dir, output_name
from model_code.slides.options import SlideOptions
from tests.support.paths import REPO
from tests.support.readers import (
    stamp_feature_type,
    stamp_get_coords,
    stride,
    trident_patching_attributes,
    trident_slide_encoder_batch,
)
from tests.support.serving import Running
from tests.support.slides import post_slide


@pytest.fixture(scope="module")
def slide_40x(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_slide(tmp_path_factory.mktemp("slides") / "forty.svs", 0.25)


@pytest.fixture(scope="module")
def outputs(running: Running, slide_40x: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The 40x slide in each layout (and the vendor's Zarr), as files."""
    root = tmp_path_factory.mktemp("outputs")
    made = {}
    for name, attributes in {
        "trident": "model=h1;slide_name=forty",
        "stamp": "model=h1;layout=stamp;slide_name=forty",
        "zarr": "model=h1;format=zarr;slide_name=forty",
    }.items():
        answer = post_slide(running, slide_40x.read_bytes(), attributes)
        assert answer.status_code == 200, answer.text
        made[name] = root / ("forty.zarr.zip" if name == "zarr" else f"{name}/forty.h5")
        made[name].parent.mkdir(parents=True, exist_ok=True)
        made[name].write_bytes(answer.content)
    return made


# --- TRIDENT v0.3.0, as its code reads a patch-features file ---------------------------------------------


def test_trident_reads_the_coords_attributes_on_the_dataset(outputs: dict[str, Path], slide_40x: Path) -> None:
    batch = trident_slide_encoder_batch(outputs["trident"])
    attrs = batch["attributes"]
    assert trident_patching_attributes(attrs) == (224, 40, 20)
    # 224 px at 0.5 um/px on a 0.25 um/px slide span 448 level-0 pixels, as TRIDENT computes it
    assert attrs["patch_size_level0"] == 224 * 40 // 20 == 448 and isinstance(attrs["patch_size_level0"], np.integer)
    assert (attrs["level0_width"], attrs["level0_height"]) == (3584, 2688)  # 896 x 672 um at 0.25 um/px
    assert attrs["overlap"] == 0 and attrs["name"] == "forty"
    coords = batch["coords"]
    assert coords.dtype == np.int64 and (coords % 448 == 0).all() and len(coords) > 10
    mean = batch["features"].mean(axis=1)  # TRIDENT's mean-* slide encoders
    assert mean.shape == (1, 1536) and np.isfinite(mean).all()
    with h5py.File(outputs["trident"], "r") as f:
        assert f["features"].attrs["encoder"] == "hoptimus1" and "feats" not in f
        assert f.attrs["model"] == "h1" and f.attrs["layout"] == "trident"  # the kit's own, on the root


def test_clams_h5_reader_takes_the_trident_layout(outputs: dict[str, Path]) -> None:
    """CLAM's Generic_MIL_Dataset with use_h5: `features` and `coords` from h5_files/{slide_id}.h5."""
    with h5py.File(outputs["trident"], "r") as hdf5_file:
        features, coords = hdf5_file["features"][:], hdf5_file["coords"][:]
    assert features.shape == (len(coords), 1536) and coords.shape[1] == 2


def test_trident_job_tree_is_where_its_slide_encoders_look() -> None:
    """Processor: coords_dir `{mag}x_{patch}px_{overlap}px_overlap`, patch features in
    `features_{slide encoder name after 'mean-'}`, one `{wsi.name}.h5` each."""

    def trident_patch_features_path(slide_encoder: str, mag: int, patch: int, wsi_name: str) -> str:
        coords_dir = f"{mag}x_{patch}px_0px_overlap"
        return f"{coords_dir}/features_{slide_encoder.split('mean-')[1]}/{wsi_name}.h5"

    tree = job_dir(0.5, 224, "h0")
    assert output_name("sub/slide-7.svs", "h5", tree) == trident_patch_features_path(
        "mean-hoptimus0", 20, 224, "slide-7"
    )
    assert output_name("sub/slide-7.svs", "h5") == "sub/slide-7.h5"
    assert output_name("a.b.svs", "zarr") == "a.b.zarr.zip" and output_name("dicom-series", "h5") == "dicom-series.h5"
    assert job_dir(0.25, 256, "h1") == "40x_256px_0px_overlap/features_hoptimus1"


# --- STAMP v2.5, as stamp.modeling.data.get_coords reads coordinates -------------------------------------


def test_stamp_reads_micrometres_and_the_tile_size_in_micrometres(outputs: dict[str, Path]) -> None:
    with h5py.File(outputs["stamp"], "r") as f, h5py.File(outputs["trident"], "r") as pixels:
        branch, coords_um, tile_size_um, tile_size_px = stamp_get_coords(f)
        feats = f["feats"][()]  # what STAMP's bag loader and encoders read
        assert str(f.attrs["extractor"]) == "h-optimus-1" and stamp_feature_type(f) == "tile"
        assert "tile_size" not in f.attrs and "features" not in f
        level0 = pixels["coords"][:]
        np.testing.assert_array_equal(feats, pixels["features"][()])
    assert branch == "newer"
    assert tile_size_um == 112.0 and tile_size_px == 224 and tile_size_um / tile_size_px == 0.5  # CoordsInfo.mpp
    # micrometres from the slide's origin: level-0 pixels x 0.25 um/px, not the pixels themselves
    np.testing.assert_allclose(coords_um, level0 * 0.25)
    assert not np.allclose(coords_um, level0) and stride(coords_um) == 112.0
    assert feats.dtype == np.float16 and feats.shape == (len(coords_um), 1536)


def test_stamps_historic_format_trap_is_not_set() -> None:
    """A root `tile_size` of 224 without `unit` is read as STAMP's historic format (coordinates x 256/224); a
    root `tile_size` with unit um is read as micrometres. The kit's stamp files carry neither."""
    trap = io.BytesIO()
    with h5py.File(trap, "w") as f:
        f["coords"] = np.array([[0, 0], [1680, 0]], dtype=np.float32)
        f.attrs["tile_size"] = 224
    with h5py.File(trap, "r") as f:
        branch, coords_um, tile_size_um, _ = stamp_get_coords(f)
    assert branch == "historic" and coords_um[1, 0] == 1920.0 and tile_size_um == 256.0


def test_stamp_files_never_carry_a_root_tile_size(outputs: dict[str, Path], tmp_path: Path) -> None:
    from kit.slides.convert import convert_file

    convert_file(outputs["trident"], "stamp", tmp_path / "converted.h5")
    for path in (outputs["stamp"], tmp_path / "converted.h5"):
        with h5py.File(path, "r") as f:
            assert "tile_size" not in f.attrs and f.attrs["unit"] == "um" and stamp_get_coords(f)[0] == "newer"


def test_stamp_layout_in_zarr_is_refused_naming_layout(running: Running, slide_40x: Path) -> None:
    answer = post_slide(running, slide_40x.read_bytes(), "model=h1;format=zarr;layout=stamp")
    assert answer.status_code == 400 and answer.json()["field"] == "layout", answer.text


def test_zarr_is_in_the_vendor_sdks_terms_and_reads_back_as_level_0(outputs: dict[str, Path]) -> None:
    """As the SDK 1.3.1 writes it (tests/vendor_sdk_check.py compares with its own file): coords in pixels at
    the tiles' 0.5 um/px, int32; tile_size and stride as [w, h]; the slide's size at level 0 and at mpp."""
    import zarr
    from zarr.storage import ZipStore

    from model_code.slides.layouts import read_output

    group = zarr.open_group(ZipStore(outputs["zarr"], mode="r"), mode="r")
    assert {"outputs", "coords", "tissue_ratios"} <= set(group.array_keys())
    assert "feats" not in group and "features" not in group
    with h5py.File(outputs["trident"], "r") as trident:
        level0 = trident["coords"][()]
    coords = group["coords"][()]
    assert coords.dtype == np.int32 and np.array_equal(coords, level0 // 2)  # a 0.25 um/px slide
    attrs = group.attrs
    assert (attrs["tile_size"], attrs["stride"], attrs["num_tiles"]) == ([224, 224], [224, 224], len(coords))
    assert attrs["slide_dimensions_at_mpp"] == [w // 2 for w in attrs["slide_dimensions"]]
    back = read_output(outputs["zarr"])
    assert np.array_equal(back.arrays["coords"], level0) and back.attributes["tile_size"] == 224
    assert "stride" not in back.attributes


# --- provenance ------------------------------------------------------------------------------------------


def test_every_file_says_how_it_was_made(outputs: dict[str, Path]) -> None:
    from model_code.slides.layouts import read_attributes

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    wanted = provenance.recipe(SlideOptions(model="h1"))
    for name, path in outputs.items():
        attrs = read_attributes(path)
        assert attrs["model"] == "h1" and attrs["model_version"].startswith("sha256:"), name
        assert attrs["kit_version"] and attrs["source_revision"] == provenance.source_revision(), name
        assert attrs["source_commit"].startswith(head.strip()), name  # these tests run from a checkout
        made = json.loads(attrs["recipe"])
        assert made["mpp"] == 0.5 and made["tile_size"] == 224 and made["min_tissue"] == 0.5, name
        expected = {**wanted, "layout": made["layout"], "format": made["format"]}
        assert provenance.differences(attrs, expected) == [], name


def test_differences_name_what_changed() -> None:
    made = {"recipe": json.dumps(provenance.recipe(SlideOptions(model="h1", slide_mpp=0.3))), "model_version": "a"}
    asked = provenance.recipe(SlideOptions(model="h1", mpp=1.0))
    assert provenance.differences({**made, "slide_mpp_source": "metadata"}, asked) == ["mpp 0.5 there, 1.0 asked"]
    assert provenance.differences({**made, "slide_mpp_source": "slide_mpp option"}, asked) == [
        "mpp 0.5 there, 1.0 asked",
        "slide_mpp 0.3 there, None asked",
    ]
    assert provenance.differences({"kit_version": "0.0.9"}, asked) == ["no recipe recorded (kit 0.0.9)"]
    same = json.loads(made["recipe"])
    assert provenance.differences({**made, "slide_mpp_source": "metadata"}, same, "b") == ["weights a there, b here"]


def test_source_revision_changes_with_the_code_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert provenance.source_commit.__wrapped__() is not None  # type: ignore[attr-defined]
    copy = tmp_path / "model_code"
    subprocess.run(["cp", "-r", str(provenance.PACKAGE), str(copy)], check=True)
    revisions = []
    for change in ("", "", "# a comment\n"):
        (copy / "slides" / "job.py").write_text((provenance.PACKAGE / "slides" / "job.py").read_text() + change)
        (copy / "notes.txt").write_text(f"not code {len(revisions)}")
        monkeypatch.setattr(provenance, "PACKAGE", copy)
        provenance.source_revision.cache_clear()
        revisions.append(provenance.source_revision())
        provenance.source_revision.cache_clear()
    assert revisions[0] == revisions[1] != revisions[2]
    assert provenance.source_commit.__wrapped__() is None  # type: ignore[attr-defined]


def test_magnifications_follow_trident() -> None:
    from model_code.slides.layouts import level0_magnification, magnification

    assert [level0_magnification(m) for m in (0.12, 0.25, 0.2527, 0.5, 1.0)] == [80, 40, 40, 20, 10]
    assert magnification(0.5) == 20 and magnification(0.25) == 40 and math.isclose(magnification(0.6), 16.667)

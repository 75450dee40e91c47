"""The whole-slide path over real HTTP: generated Aperio SVS slides (JPEG tiles, real H&E texture) in,
HDF5 / Zarr features out, checked against the tile API's answers for the same tiles."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import h5py
import httpx
import numpy as np
import openslide
import pytest
import zarr
from PIL import Image
from zarr.storage import ZipStore

from kit.endpoints.samples import synthetic_counts
from kit.slides.synthetic import make_slide, write_svs
from tests.support.serving import Running
from tests.support.slides import ATTRIBUTES, assert_same_features, post_slide, tile_api


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("slides")
    made = {
        "0.5": make_slide(root / "half.svs", 0.5),
        "0.25": make_slide(root / "quarter.svs", 0.25),
        "no-mpp": make_slide(root / "no-mpp.svs", None),
        "glass": write_svs(root / "glass.svs", np.full((1344, 1792, 3), 243, dtype=np.uint8), 0.5),
    }
    data = made["0.5"].read_bytes()
    (root / "truncated.svs").write_bytes(data[: len(data) * 2 // 3])
    made["truncated"] = root / "truncated.svs"
    return made


def features(running: Running, slide: Path, attributes: str = "model=h1;dtype=float32", **query: str) -> h5py.File:
    answer = post_slide(running, slide.read_bytes(), attributes, **query)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/x-hdf5"
    return h5py.File(io.BytesIO(answer.content), "r")


def read_level0(slide: Path, x: int, y: int, side: int) -> np.ndarray:
    """The tile as any OpenSlide user reads it, resized (bicubic) to 224 when it is larger."""
    with openslide.OpenSlide(slide) as reader:
        region = reader.read_region((x, y), 0, (side, side)).convert("RGB")
    return np.asarray(region.resize((224, 224), Image.Resampling.BICUBIC) if side != 224 else region)


def test_slide_at_half_micron_gives_the_tile_apis_features(running: Running, slides: dict[str, Path]) -> None:
    with features(running, slides["0.5"]) as out:
        coords, ratios, feats = out["coords"][:], out["tissue_ratios"][:], out["features"][:]
        attrs = dict(out.attrs)
    assert feats.shape == (len(coords), 1536) and feats.dtype == np.float32
    assert attrs["grid_tiles"] == 48 and 20 <= len(coords) < 48, "the slide is about two thirds tissue"
    assert (coords % 224 == 0).all() and (ratios >= 0.5).all() and (ratios <= 1).all()
    assert attrs["model"] == "h1" and attrs["mpp"] == 0.5 and attrs["slide_mpp"] == 0.5 and attrs["tile_size"] == 224
    assert attrs["slide_width"] == 1792 and attrs["pooling"] == "cls" and attrs["kit_version"]
    picks = [0, len(coords) // 2, len(coords) - 1]
    expected = tile_api(running, [read_level0(slides["0.5"], *coords[i], 224) for i in picks])
    assert_same_features(feats[picks], expected)


def test_quarter_micron_slide_is_read_at_half_micron(running: Running, slides: dict[str, Path]) -> None:
    with features(running, slides["0.5"]) as half, features(running, slides["0.25"]) as quarter:
        assert quarter.attrs["slide_mpp"] == 0.25 and quarter.attrs["patch_size_level0"] == 448
        np.testing.assert_array_equal(quarter["coords"][:], half["coords"][:] * 2)  # same tissue, level-0 pixels
        coords, feats = quarter["coords"][:], quarter["features"][:]
    picks = [0, len(coords) - 1]
    expected = tile_api(running, [read_level0(slides["0.25"], *coords[i], 448) for i in picks])
    assert_same_features(feats[picks], expected)


def test_tile_size_cuts_larger_tiles_resized_to_the_models_input(running: Running, slides: dict[str, Path]) -> None:
    with features(running, slides["0.5"], tile_size="448", min_tissue="0") as out:
        assert out.attrs["grid_tiles"] == 12 and out["features"].shape == (12, 1536)  # 4 x 3 tiles of 448 px
        assert (out["coords"][:] % 448 == 0).all() and out.attrs["model_input_size"] == 224
        coords, feats = out["coords"][:], out["features"][:]
    expected = tile_api(running, [read_level0(slides["0.5"], *coords[i], 448) for i in (5, 6)])
    assert_same_features(feats[5:7], expected)


def test_slide_without_a_pyramid_is_read_in_bounded_pieces(
    running: Running, slides: dict[str, Path], tmp_path: Path
) -> None:
    with openslide.OpenSlide(slides["0.25"]) as reader:
        image = np.asarray(reader.read_region((0, 0), 0, reader.dimensions).convert("RGB"))
    flat = write_svs(tmp_path / "flat.svs", image, 0.25, pyramid=False)
    with features(running, flat) as out, features(running, slides["0.25"]) as pyramidal:
        np.testing.assert_array_equal(out["coords"][:], pyramidal["coords"][:])
        assert out.attrs["slide_width"] == 3584


def test_slide_without_mpp_is_refused_naming_the_option(running: Running, slides: dict[str, Path]) -> None:
    answer = post_slide(running, slides["no-mpp"].read_bytes(), "model=h1")
    assert answer.status_code == 400 and answer.json()["field"] == "slide_mpp"
    assert "slide_mpp=" in answer.json()["reason"]
    with features(running, slides["no-mpp"], slide_mpp="0.5") as out, features(running, slides["0.5"]) as ref:
        np.testing.assert_array_equal(out["coords"][:], ref["coords"][:])
        assert out.attrs["slide_mpp_source"] == "slide_mpp option"


def test_glass_without_tissue_gives_an_empty_result(running: Running, slides: dict[str, Path]) -> None:
    with features(running, slides["glass"]) as out:
        assert out["features"].shape == (0, 1536) and out["coords"].shape == (0, 2)
        assert out.attrs["tiles"] == 0 and out.attrs["grid_tiles"] == 48


@pytest.mark.parametrize("name", ["truncated", "not a slide"])
def test_corrupt_slides_are_4xx_and_the_server_carries_on(running: Running, slides: dict[str, Path], name: str) -> None:
    body = slides["truncated"].read_bytes() if name == "truncated" else b"GIF89a not a slide at all" * 100
    answer = post_slide(running, body, "model=h1", "application/octet-stream")
    assert answer.status_code == 400 and answer.json()["field"] == "body", answer.text
    assert tile_api(running, [np.full((224, 224, 3), 200, np.uint8)]).shape == (1, 1536)


def test_boto3_path_answers_slide_errors_as_the_sagemaker_runtime(running: Running, slides: dict[str, Path]) -> None:
    headers = {"content-type": "image/tiff", ATTRIBUTES: "model=h1"}
    url = f"{running.url}/endpoints/optimus-h1/invocations"
    answer = httpx.post(url, content=slides["no-mpp"].read_bytes(), headers=headers, timeout=60)
    assert answer.status_code == 424 and answer.json()["OriginalStatusCode"] == 400
    assert "slide_mpp" in answer.json()["OriginalMessage"]


@pytest.mark.parametrize(
    ("attributes", "status", "field"),
    [
        ("dtype=float32", 400, "model"),  # this endpoint hosts h1 and m-optimus: say which
        ("model=h0", 404, "model"),
        ("model=h1;mode=prediction", 400, "mode"),
        ("model=h1;colour=blue", 400, "colour"),
        ("model=h1;min_tissue=2", 400, "min_tissue"),
        ("model h1", 400, ATTRIBUTES),
    ],
)
def test_bad_options_are_named(running: Running, attributes: str, status: int, field: str) -> None:
    answer = post_slide(running, b"never read", attributes)
    assert (answer.status_code, answer.json()["field"]) == (status, field), answer.text


def test_a_utf8_slide_name_in_the_attributes_is_refused_and_taken_in_the_query(
    running: Running, slides: dict[str, Path]
) -> None:
    """SageMaker carries visible ASCII in custom attributes; UTF-8 there arrives as latin-1 and was stored garbled
    ('æ¼¢å\xad\x97' for '漢字'). The query string carries it (percent-encoded UTF-8)."""
    headers = {"content-type": b"image/tiff", ATTRIBUTES.encode(): "model=h1;slide_name=漢字".encode()}  # raw bytes
    refused = httpx.post(f"{running.url}/invocations", content=b"never read", headers=headers)
    assert (refused.status_code, refused.json()["field"]) == (400, ATTRIBUTES) and "ASCII" in refused.text
    answer = post_slide(running, slides["0.5"].read_bytes(), "model=h1;\tmin_tissue=0.5", slide_name="漢字")
    with h5py.File(io.BytesIO(answer.content), "r") as out:  # a tab is header whitespace, not refused
        assert out.attrs["slide_name"] == "漢字"


def test_an_encoded_slide_is_415_naming_the_encoding(running: Running, slides: dict[str, Path]) -> None:
    headers = {"content-type": "image/tiff", "content-encoding": "gzip", ATTRIBUTES: "model=h1"}
    answer = httpx.post(f"{running.url}/invocations", content=gzip.compress(b"svs"), headers=headers)
    assert (answer.status_code, answer.json()["field"]) == (415, "content_encoding"), answer.text


def test_zarr_zip_as_the_vendor_sdk_writes(running: Running, slides: dict[str, Path], tmp_path: Path) -> None:
    answer = post_slide(running, slides["0.5"].read_bytes(), "model=h1;format=zarr")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    (tmp_path / "out.zarr.zip").write_bytes(answer.content)
    assert zipfile.is_zipfile(tmp_path / "out.zarr.zip")
    group = zarr.open_group(ZipStore(tmp_path / "out.zarr.zip", mode="r"), mode="r")
    outputs = group["outputs"][:]
    assert outputs.dtype == np.float16 and outputs.shape == (group["coords"].shape[0], 1536)
    assert group["tissue_ratios"].shape == (outputs.shape[0],) and group.attrs["model"] == "h1"


def _tar(slide: Path, counts: object) -> bytes:
    import orjson

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(slide, arcname="slide.svs")
        rna = orjson.dumps(counts)
        info = tarfile.TarInfo("bulk_rna.json")
        info.size = len(rna)
        archive.addfile(info, io.BytesIO(rna))
    return buffer.getvalue()


def test_m_optimus_zarr_names_its_genes_and_converts(running: Running, slides: dict[str, Path], tmp_path: Path) -> None:
    """As the vendor SDK's Zarr does: `input_gene_names` and `output_gene_names` (its pseudobulk reads them), the
    model's metadata's; converted to h5 they travel as UTF-8 bytes."""
    from kit.slides.convert import convert_file

    answer = post_slide(running, slides["0.5"].read_bytes(), "model=m-optimus;mode=prediction;format=zarr")
    assert answer.status_code == 200, answer.text
    (tmp_path / "m.zarr.zip").write_bytes(answer.content)
    metadata = httpx.get(f"{running.url}/api/metadata/m-optimus").json()
    group = zarr.open_group(ZipStore(tmp_path / "m.zarr.zip", mode="r"), mode="r")
    assert group["output_gene_names"][:].tolist() == metadata["output_genes"]
    assert group["input_gene_names"][:].tolist() == metadata["input_genes"]
    convert_file(tmp_path / "m.zarr.zip", "trident", tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r") as out:
        assert [g.decode() for g in out["output_gene_names"][:]] == metadata["output_genes"]


def test_m_optimus_with_bulk_rna_in_a_tar(running: Running, slides: dict[str, Path]) -> None:
    attributes = "model=m-optimus;mode=prediction_with_embedding"
    answer = post_slide(running, _tar(slides["0.5"], synthetic_counts()), attributes, "application/x-tar")
    assert answer.status_code == 200, answer.text
    with h5py.File(io.BytesIO(answer.content), "r") as out:
        assert out["features"].shape[1] == 6002 and out["embeddings"].shape[1] == 1536
        assert out.attrs["bulk_rna"] and out.attrs["output"] == "prediction"
        with_rna = out["features"][:]
    without = post_slide(running, slides["0.5"].read_bytes(), "model=m-optimus;mode=prediction")
    with h5py.File(io.BytesIO(without.content), "r") as out:
        assert not np.array_equal(out["features"][:], with_rna), "the bulk RNA must reach the model"
    short = post_slide(running, _tar(slides["0.5"], [1.0, 2.0]), attributes, "application/x-tar")
    assert short.status_code == 400 and short.json()["field"] == "bulk_rna"


def test_kit_slides_run_writes_resumes_and_reports_failures(
    running: Running, slides: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kit.__main__ import main

    out = tmp_path / "features"
    argv = ["slides", "run", str(slides["0.5"]), str(slides["no-mpp"]), "--endpoint-url", running.url]
    argv += ["--model", "h1", "--out", str(out), "--option", "min_tissue=0.25"]
    assert main(argv) == 1  # one slide failed
    report = capsys.readouterr().out
    assert "2 slides: 1 done, 0 skipped, 1 failed" in report and "slide_mpp" in report
    with h5py.File(out / "half.h5", "r") as written:
        assert written.attrs["slide_name"] == "half" and written.attrs["min_tissue"] == 0.25
        assert written["features"].dtype == np.float16 and written["features"].shape[0] == written.attrs["tiles"]
    assert sorted(p.name for p in out.iterdir()) == ["half.h5"]  # nothing left of the failed slide
    assert main([*argv, "--option", "slide_mpp=0.5"]) == 0  # slide_mpp was not used by half.svs: reused
    assert "2 slides: 1 done, 1 skipped, 0 failed" in capsys.readouterr().out and (out / "no-mpp.h5").exists()


def test_picture_shows_outline_grid_and_feature_map(running: Running, slides: dict[str, Path], tmp_path: Path) -> None:
    from kit.slides.picture import GRID, OUTLINE, features_picture

    answer = post_slide(running, slides["0.5"].read_bytes(), "model=h1")
    (tmp_path / "half.h5").write_bytes(answer.content)
    picture = np.asarray(Image.open(features_picture(slides["0.5"], tmp_path / "half.h5", tmp_path / "half.png")))
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert OUTLINE in colours and GRID in colours and len(colours) > 1000  # thumbnail, mask outline, tiles, PCA map

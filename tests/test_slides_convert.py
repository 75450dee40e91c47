"""`kit slides convert`: kit outputs into another layout without a model, over a directory and an S3 prefix
(moto), each result read as its tool reads it (tests/support/readers.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from kit.__main__ import main
from kit.slides.synthetic import make_slide
from model_code.slides.layouts import read_output
from tests.support.aws import mocked_aws
from tests.support.readers import stamp_get_coords, trident_slide_encoder_batch
from tests.support.serving import Running
from tests.support.slides import post_slide

REGION = "eu-west-1"


@pytest.fixture(scope="module")
def kit_outputs(running: Running, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of kit outputs: a 40x slide in the trident layout, the same in sub/ as the vendor's Zarr."""
    root = tmp_path_factory.mktemp("kit-outputs")
    slide = make_slide(root / "forty.svs", 0.25)
    for name, attributes in {"forty.h5": "model=h1", "sub/forty-zarr.zarr.zip": "model=h1;format=zarr"}.items():
        answer = post_slide(running, slide.read_bytes(), attributes)
        assert answer.status_code == 200, answer.text
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(answer.content)
    slide.unlink()
    return root


def test_convert_a_directory_to_stamp_and_back(
    kit_outputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["slides", "convert", str(kit_outputs), "--to", "stamp", "--out", str(tmp_path / "stamp")]) == 0
    assert "2 files: 2 converted to stamp, 0 failed" in capsys.readouterr().out
    original = read_output(kit_outputs / "forty.h5")
    for name in ("forty.h5", "sub/forty-zarr.h5"):
        with h5py.File(tmp_path / "stamp" / name, "r") as f:
            branch, coords_um, tile_size_um, _ = stamp_get_coords(f)
            assert (branch, tile_size_um, str(f.attrs["extractor"])) == ("newer", 112.0, "h-optimus-1")
            np.testing.assert_allclose(coords_um, original.arrays["coords"] * 0.25)
            assert f["feats"].dtype == np.float16 and f.attrs["layout"] == "stamp"
    assert main(["slides", "convert", str(tmp_path / "stamp"), "--to", "trident", "--out", str(tmp_path / "back")]) == 0
    back = read_output(tmp_path / "back" / "forty.h5")
    assert set(back.arrays) == set(original.arrays)
    for name, array in original.arrays.items():
        np.testing.assert_array_equal(back.arrays[name], array, err_msg=name)
    changed = {k for k in original.attributes if back.attributes.get(k) != original.attributes[k]}
    assert changed == set(), "the kit's attributes come back as they were"
    assert trident_slide_encoder_batch(tmp_path / "back" / "forty.h5")["attributes"]["patch_size_level0"] == 448


def test_convert_to_clam_writes_h5_files_and_the_pt_tensors_its_training_loads(
    kit_outputs: Path, tmp_path: Path
) -> None:
    assert main(["slides", "convert", str(kit_outputs), "--to", "clam", "--out", str(tmp_path)]) == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*")) == [
        "h5_files/forty-zarr.h5", "h5_files/forty.h5", "pt_files/forty-zarr.pt", "pt_files/forty.pt",
    ]  # fmt: skip
    features = torch.load(tmp_path / "pt_files" / "forty.pt", weights_only=True)  # Generic_MIL_Dataset, use_h5 off
    with h5py.File(tmp_path / "h5_files" / "forty.h5", "r") as hdf5_file:  # use_h5 on
        stored, coords = hdf5_file["features"][:], hdf5_file["coords"][:]
    assert features.dtype == torch.float32 and features.shape == (len(coords), 1536)  # CLAM's models are float32
    assert stored.dtype == np.float32  # use_h5 hands them to the model as stored: float16 would fail there
    np.testing.assert_array_equal(features.numpy(), stored)


def test_clam_refuses_two_slides_with_one_name_before_writing(
    kit_outputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    shutil.copytree(kit_outputs, source)
    shutil.copy(source / "forty.h5", source / "sub" / "forty.h5")
    assert main(["slides", "convert", str(source), "--to", "clam", "--out", str(tmp_path / "clam")]) == 2
    error = capsys.readouterr().err
    assert "h5_files/forty.h5 (forty.h5, sub/forty.h5)" in error and not (tmp_path / "clam").exists()
    assert main(["slides", "convert", str(source), "--to", "trident", "--out", str(source)]) == 2
    assert "overwrite its own sources" in capsys.readouterr().err


def test_a_zarr_directory_converts_as_its_zip(
    kit_outputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kit slides run` lays Zarr outputs out as directories (the vendor SDK's); they convert like the zip."""
    from model_code.slides.layouts import install

    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(kit_outputs / "sub" / "forty-zarr.zarr.zip", tmp_path / "answer")
    install(tmp_path / "answer", source / "forty.zarr")
    assert main(["slides", "convert", str(source), "--to", "trident", "--out", str(tmp_path / "out")]) == 0
    assert "1 files: 1 converted to trident, 0 failed" in capsys.readouterr().out
    zipped = read_output(kit_outputs / "sub" / "forty-zarr.zarr.zip")
    converted = read_output(tmp_path / "out" / "forty.h5")
    for name, array in zipped.arrays.items():
        np.testing.assert_array_equal(converted.arrays[name], array, err_msg=name)


def test_files_that_are_not_kit_outputs_fail_alone(
    kit_outputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(kit_outputs / "forty.h5", source / "forty.h5")
    with h5py.File(source / "someone-elses.h5", "w") as other:
        other["features"] = np.zeros((2, 4))
    assert main(["slides", "convert", str(source), "--to", "stamp", "--out", str(tmp_path / "out")]) == 1
    said = capsys.readouterr()
    assert "someone-elses.h5: failed: no kit attributes" in said.err + said.out
    assert "2 files: 1 converted to stamp, 1 failed" in said.out and (tmp_path / "out" / "forty.h5").is_file()


def test_convert_an_s3_prefix(
    kit_outputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with mocked_aws(monkeypatch, REGION) as aws:
        s3 = aws.client("s3")
        s3.create_bucket(Bucket="lab", CreateBucketConfiguration={"LocationConstraint": REGION})
        for path in kit_outputs.rglob("*.*"):
            s3.upload_file(str(path), "lab", f"features/{path.relative_to(kit_outputs).as_posix()}")
        s3.put_object(Bucket="lab", Key="features-old/forty.h5", Body=b"not under the prefix")
        argv = [
            "slides",
            "convert",
            "s3://lab/features",
            "--to",
            "stamp",
            "--out",
            "s3://lab/stamp/",
            "--region",
            REGION,
        ]
        assert main(argv) == 0, capsys.readouterr().err
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="lab", Prefix="stamp/")["Contents"])
        assert keys == ["stamp/forty.h5", "stamp/sub/forty-zarr.h5"]
        s3.download_file("lab", "stamp/sub/forty-zarr.h5", str(tmp_path / "got.h5"))
        argv = [
            "slides",
            "convert",
            "s3://lab/stamp",
            "--to",
            "trident",
            "--out",
            str(tmp_path / "local"),
            "--region",
            REGION,
        ]
        assert main(argv) == 0
    with h5py.File(tmp_path / "got.h5", "r") as f:
        assert stamp_get_coords(f)[2] == 112.0 and "feats" in f
    assert (tmp_path / "local" / "sub" / "forty-zarr.h5").is_file()


def test_skipped_tiles_travel_with_a_conversion(kit_outputs: Path, tmp_path: Path) -> None:
    """A file with tiles left out (damaged JPEG) keeps its skipped_coords, in level-0 pixels, in every layout."""
    from kit.slides.convert import convert_file

    source = tmp_path / "damaged.h5"
    shutil.copy(kit_outputs / "forty.h5", source)
    with h5py.File(source, "a") as f:
        del f["skipped_coords"]
        f.create_dataset("skipped_coords", data=np.array([[448, 896]], dtype=np.int64))
        f.attrs["skipped_tiles"] = 1
    convert_file(source, "stamp", tmp_path / "stamp.h5")
    with h5py.File(tmp_path / "stamp.h5", "r") as f:
        assert f["skipped_coords"][:].tolist() == [[448, 896]] and f.attrs["skipped_tiles"] == 1

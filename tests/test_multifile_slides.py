"""Slides of several files, sent as one tar or zip body, over real HTTP; and which file OpenSlide opens in a
folder holding one slide. The DICOM series and the damaged files are OpenSlide's own fixtures
(tests/fixtures/openslide, from openslide-python's source distribution): files no one here wrote."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import h5py
import orjson
import pytest

from kit.endpoints.samples import synthetic_counts
from kit.slides.synthetic import make_slide
from model_code.catalogue import MODELS
from model_code.errors import ClientError
from model_code.slides import archives
from model_code.slides.slide_files import slide_file
from tests.support.serving import Running
from tests.support.slides import DICOM, OPENSLIDE, post_slide

RNA = orjson.dumps(synthetic_counts())


def tar_of(files: dict[str, bytes] | list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items() if isinstance(files, dict) else files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_of(files: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def series(folder: str = "boxes") -> dict[str, bytes]:
    return {f"{folder}/{path.name}": path.read_bytes() for path in DICOM}


def test_a_tar_of_a_dicom_series_is_opened_as_that_slide(running: Running) -> None:
    """Was: "model 'h1' takes no bulk RNA" (any tar was taken for slide + bulk RNA)."""
    answer = post_slide(running, tar_of(series()), "model=h1", "application/x-tar")
    assert answer.status_code == 200, answer.text
    with h5py.File(io.BytesIO(answer.content)) as out:
        assert out.attrs["slide_vendor"] == "dicom" and (out.attrs["slide_width"], out.attrs["slide_height"]) == (
            16,
            16,
        )
        assert out.attrs["slide_mpp"] == pytest.approx(0.499) and not out.attrs["bulk_rna"]


def test_a_zip_of_a_dicom_series_with_bulk_rna_reaches_m_optimus(running: Running) -> None:
    body = zip_of({**series("case-7/series"), "case-7/bulk_rna.json": RNA}, zipfile.ZIP_DEFLATED)
    answer = post_slide(running, body, "model=m-optimus;mode=prediction", "application/zip")
    assert answer.status_code == 200, answer.text
    with h5py.File(io.BytesIO(answer.content)) as out:
        assert out.attrs["slide_vendor"] == "dicom" and out.attrs["bulk_rna"]


def test_a_single_slide_file_in_an_archive_gives_the_same_features_as_sent_alone(
    running: Running, tmp_path: Path
) -> None:
    slide = make_slide(tmp_path / "half.svs", 0.5).read_bytes()
    alone = post_slide(running, slide, "model=h1;dtype=float32")
    zipped = post_slide(running, zip_of({"half.svs": slide}), "model=h1;dtype=float32", "application/zip")
    assert alone.status_code == zipped.status_code == 200, zipped.text
    with h5py.File(io.BytesIO(alone.content)) as one, h5py.File(io.BytesIO(zipped.content)) as other:
        assert (one["coords"][:] == other["coords"][:]).all() and one["features"].shape == other["features"].shape


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"a/boxes_0.dcm": DICOM[0].read_bytes(), "b/boxes_1.dcm": DICOM[1].read_bytes()}, "several folders"),
        ({"x.svs": (OPENSLIDE / "small.svs").read_bytes(), "y.svs": (OPENSLIDE / "small.svs").read_bytes()}, "several"),
        ({"notes.txt": b"hello", "more.txt": b"world"}, "no file OpenSlide reads"),
        ({"unopenable.tiff": (OPENSLIDE / "unopenable.tiff").read_bytes()}, "corrupt or truncated"),
        ({"unreadable.svs": (OPENSLIDE / "unreadable.svs").read_bytes()}, "cannot be decoded"),
        ({}, "no file OpenSlide reads"),
    ],
    ids=["dicom-in-two-folders", "two-slides", "no-slide", "unopenable", "unreadable", "empty"],
)
def test_archives_without_exactly_one_readable_slide_are_400_naming_why(
    running: Running, files: dict[str, bytes], reason: str
) -> None:
    for body, kind in ((tar_of(files), "application/x-tar"), (zip_of(files), "application/zip")):
        answer = post_slide(running, body, "model=h1", kind)
        assert (answer.status_code, answer.json()["field"]) == (400, "body"), answer.text
        assert reason in answer.json()["reason"], answer.text


def test_two_members_of_one_name_and_many_entries_are_refused(running: Running) -> None:
    twice = tar_of([("boxes/boxes_0.dcm", b"a"), ("./boxes//boxes_0.dcm", b"b")])
    answer = post_slide(running, twice, "model=h1", "application/x-tar")
    assert answer.status_code == 400 and "two members named 'boxes/boxes_0.dcm'" in answer.json()["reason"]
    many = zip_of({f"f{i}": b"" for i in range(archives.MAX_MEMBERS + 1)})
    answer = post_slide(running, many, "model=h1", "application/zip")
    assert answer.status_code == 400 and f"over {archives.MAX_MEMBERS} entries" in answer.json()["reason"]


def test_a_zip_that_unpacks_past_the_slide_limit_is_413_before_it_is_written(tmp_path: Path) -> None:
    body = tmp_path / "bomb.zip"
    body.write_bytes(zip_of({"slide.svs": bytes(8 << 20)}, zipfile.ZIP_DEFLATED))  # 8 MB of zeros in 8 kB
    assert body.stat().st_size < 100_000
    (tmp_path / "work").mkdir()
    with pytest.raises(ClientError) as refused:
        archives.unpack(body, "application/zip", tmp_path / "work", limit=1 << 20, spec=MODELS["h1"])
    assert refused.value.status_code == 413 and not list((tmp_path / "work").rglob("slide.svs"))


def test_slide_file_finds_what_openslide_opens(tmp_path: Path) -> None:
    mirax = tmp_path / "mirax"
    for name in ("CMU-1.mrxs", "CMU-1/Slidedat.ini", "CMU-1/Data0000.dat", "CMU-1/Index.dat"):
        (mirax / name).parent.mkdir(parents=True, exist_ok=True)
        (mirax / name).write_bytes(b"")
    assert slide_file(mirax) == mirax / "CMU-1.mrxs"
    dicom = tmp_path / "dicom" / "series"
    dicom.mkdir(parents=True)
    for path in DICOM:
        (dicom / path.stem).write_bytes(path.read_bytes())  # DICOM files often have no suffix
    (dicom.parent / "bulk_rna.json").write_bytes(RNA)
    assert slide_file(tmp_path / "dicom", frozenset({"bulk_rna.json"})) == dicom / "boxes_0"
    (mirax / "other.mrxs").write_bytes(b"")
    with pytest.raises(ClientError, match="several slides"):
        slide_file(mirax)

"""The whole-slide path as a hostile client meets it: absurd options, bombs, odd tars, crowds, hang-ups.

Real HTTP against the real server (demo h1 + m-optimus + tissue-seg). Every bad input must come back as a
4xx naming the field, fast, with no temporary file left behind and the tile API still answering.
"""

from __future__ import annotations

import inspect
import io
import math
import socket
import struct
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import h5py
import httpx
import numpy as np
import orjson
import pytest

from kit.artifacts.builder import package
from kit.endpoints.samples import synthetic_counts, wire_record
from kit.slides.synthetic import make_slide, write_svs
from model_code.settings import Settings
from model_code.slides import job
from model_code.slides.archives import MAX_MEMBERS
from model_code.slides.reader import MAX_READ_SIDE, Slide
from tests.support.polling import eventually
from tests.support.serving import Running, free_port, serve_in_thread
from tests.support.slides import ATTRIBUTES, hold_tissue_pass, post_slide, refused, tile_api

TAR = "application/x-tar"


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 1792 x 1344 px slide at 0.5 um/px (0.9 x 0.7 mm), about two thirds tissue."""
    return make_slide(tmp_path_factory.mktemp("redteam") / "half.svs", 0.5).read_bytes()


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The server's temporary directory for this test; after it, no slide's files may be left there."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield tmp_path
    # the answer's folder goes once its last byte is sent, just after the client has it
    eventually(lambda: not list(tmp_path.glob("optimus-slide-*")), "a slide's temporary files removed", timeout_s=5)


def claimed_tiff(width: int, height: int, pixels_per_cm: int, tile: int = 16384) -> bytes:
    """A generic tiled RGB TIFF whose tiles are all missing: 30 kB that claim any size and resolution."""
    count = math.ceil(width / tile) * math.ceil(height / tile)
    entries: list[tuple[int, int, int, int | bytes]] = [  # tag, type (3 SHORT, 4 LONG, 5 RATIONAL), count, value
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 3, struct.pack("<3H", 8, 8, 8)),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (277, 3, 1, 3),
        (282, 5, 1, struct.pack("<2I", pixels_per_cm, 1)),
        (283, 5, 1, struct.pack("<2I", pixels_per_cm, 1)),
        (284, 3, 1, 1),
        (296, 3, 1, 3),
        (322, 4, 1, tile),
        (323, 4, 1, tile),
        (324, 4, count, bytes(4 * count)),
        (325, 4, count, bytes(4 * count)),
    ]
    data_at = 8 + 2 + 12 * len(entries) + 4
    ifd, data = struct.pack("<H", len(entries)), b""
    for tag, kind, n, value in entries:
        if isinstance(value, bytes):
            ifd += struct.pack("<HHII", tag, kind, n, data_at + len(data))
            data += value
        else:
            ifd += struct.pack("<HHI", tag, kind, n) + struct.pack("<I" if kind == 4 else "<H2x", value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data


def tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, data: bytes | None = None, **fields: object) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


RNA = orjson.dumps(synthetic_counts())
M_OPTIMUS = "model=m-optimus;mode=prediction"


# --- options ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "field"),
    [
        ("model=h1;mpp=0.0001", "mpp"),  # was: a grid of 10^11 tiles, the server killed for memory
        ("model=h1;slide_mpp=0.000001", "slide_mpp"),  # was: one region of 10^12 pixels
        ("model=h1;mpp=nan", "mpp"),
        ("model=h1;mpp=inf", "mpp"),
        ("model=h1;mpp=-0.5", "mpp"),
        ("model=h1;min_tissue=nan", "min_tissue"),
        ("model=h1;tile_size=1e9", "tile_size"),
        ("model=h1;tile_size=4096;mpp=4", "tile_size"),  # tiles of 16 mm
        ("model=h1;slide_mpp=64", "slide_mpp"),  # makes the 1792 px slide 115 mm long
        ("model=h1;model=m-optimus", "model"),  # given twice: which one?
        ("model=" + "h" * 100, "model"),
    ],
)
def test_absurd_options_are_refused_naming_them(
    running: Running, slide: bytes, scratch: Path, attributes: str, field: str
) -> None:
    refused(post_slide(running, slide, attributes), field)


def test_option_given_twice_in_the_query_is_refused(running: Running, slide: bytes, scratch: Path) -> None:
    answer = httpx.post(
        f"{running.url}/invocations?mpp=0.5&mpp=1",
        content=slide,
        headers={"content-type": "image/tiff", ATTRIBUTES: "model=h1"},
    )
    assert "twice" in refused(answer, "mpp")
    assert post_slide(running, slide, "model=h1;mpp=1", mpp="0.5").status_code == 200  # the query still wins


@pytest.mark.parametrize("name", ["a\x00b", "line\nbreak", "bell\x07"])
def test_slide_name_with_control_characters_is_a_400_not_a_500(
    running: Running, slide: bytes, scratch: Path, name: str
) -> None:
    refused(post_slide(running, slide, "model=h1", slide_name=name), "slide_name")


# --- bodies: bombs, truncations, sizes -------------------------------------------------------------------------


def test_tiff_claiming_gigantic_dimensions_is_refused_at_once(running: Running, scratch: Path) -> None:
    huge = claimed_tiff(1_000_000, 1_000_000, 40_000)  # 250 x 250 mm at 0.25 um/px, in 30 kB
    assert len(huge) < 40_000
    assert "250 mm" in refused(post_slide(running, huge, "model=h1"), "body")
    tiny_mpp = claimed_tiff(20_000, 20_000, 10**9)  # 0.00001 um/px: tissue-seg would read it in one region
    assert "slide_mpp=" in refused(post_slide(running, tiny_mpp, "model=h1"), "slide_mpp")
    assert tile_api(running, [np.full((224, 224, 3), 200, np.uint8)]).shape == (1, 1536)


@pytest.mark.parametrize("body", [b"", b"II*\x00", b"\x00" * 4096], ids=["empty", "tiff-magic-only", "zeros"])
def test_empty_and_truncated_bodies_are_400(running: Running, scratch: Path, body: bytes) -> None:
    refused(post_slide(running, body, "model=h1", "application/octet-stream"), "body")


def test_body_over_max_slide_mb_is_413(
    running: Running, slide: bytes, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(running.server.slides, "max_bytes", len(slide) // 2)
    assert "MAX_SLIDE_MB" in refused(post_slide(running, slide, "model=h1"), "body", 413)


def test_reads_without_a_near_level_stay_in_bounded_pieces(tmp_path: Path) -> None:
    """An odd output size used to stop the splitting: 7 px of a 4096 px region was one 4096 px read."""
    flat = write_svs(tmp_path / "flat.svs", np.full((4096, 4096, 3), 180, np.uint8), 0.25, pyramid=False)
    slide = Slide(flat)
    sides: list[tuple[int, int]] = []
    plain = slide._pixels

    def recording(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        sides.append((w, h))
        return plain(level, x, y, w, h)

    with mock.patch.object(slide, "_pixels", recording):
        tile = slide.read(0, 0, 4096, 7)
    slide.close()
    assert tile.shape == (7, 7, 3) and (tile == 180).all()
    assert max(max(side) for side in sides) <= MAX_READ_SIDE and sum(w * h for w, h in sides) > 0.99 * 4096**2


# --- tars ------------------------------------------------------------------------------------------------------


def test_sparse_tar_member_is_refused_not_unpacked(running: Running, scratch: Path) -> None:
    """A 10 kB tar whose sparse member unpacks to 64 MB of zeros (or a terabyte: the size is the sender's)."""
    sparse = member("slide.svs", b"")
    sparse[0].pax_headers = {"GNU.sparse.size": str(64 << 20), "GNU.sparse.map": "0,0", "GNU.sparse.name": "slide.svs"}
    body = tar(sparse, member("bulk_rna.json", RNA))
    assert len(body) < 200_000
    assert "sparse" in refused(post_slide(running, body, M_OPTIMUS, TAR), "body")


def test_tar_with_many_members_is_refused_briefly(running: Running, scratch: Path) -> None:
    body = tar(*(member(f"f{i}", b"") for i in range(MAX_MEMBERS + 1)))
    answer = post_slide(running, body, M_OPTIMUS, TAR)
    assert f"over {MAX_MEMBERS} entries" in refused(answer, "body") and len(answer.content) < 1000


@pytest.mark.parametrize(
    "members",
    [
        [member("bulk_rna.json", type=tarfile.SYMTYPE, linkname="/etc/passwd")],
        [member("bulk_rna.json", type=tarfile.LNKTYPE, linkname="slide.svs")],
        [member("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)],
    ],
    ids=["symlink", "hardlink", "device"],
)
def test_tar_links_and_devices_are_not_followed(running: Running, slide: bytes, scratch: Path, members: list) -> None:
    answer = post_slide(running, tar(member("slide.svs", slide), *members), M_OPTIMUS, TAR)
    assert answer.status_code == 200, answer.text  # the slide alone: no bulk RNA was read through the link
    with h5py.File(io.BytesIO(answer.content)) as out:
        assert not out.attrs["bulk_rna"]


def test_tar_names_never_become_paths(running: Running, slide: bytes, scratch: Path) -> None:
    body = tar(member("../../../escaped.svs", slide), member("/abs/bulk_rna.json", RNA))
    assert post_slide(running, body, M_OPTIMUS, TAR).status_code == 200
    inside = list(scratch.glob("optimus-slide-*"))  # the request's own folder, until its cleanup
    escaped = [p for p in scratch.parent.parent.rglob("escaped.svs") if not any(p.is_relative_to(f) for f in inside)]
    assert escaped == [] and not Path("/abs").exists()


@pytest.mark.parametrize(
    ("rna", "reason"),
    [
        (orjson.dumps([[1]] * 19374), "numbers only"),  # was: "has 19374 values; ... takes 19374 counts"
        (orjson.dumps([True] * 19374), "numbers only"),
        (orjson.dumps(["7"] * 19374), "numbers only"),
        (b"[1, 2", "not JSON"),
        (orjson.dumps([1.0] * 3), "has 3 values"),
    ],
    ids=["nested", "booleans", "strings", "not-json", "short"],
)
def test_bad_bulk_rna_is_named(running: Running, slide: bytes, scratch: Path, rna: bytes, reason: str) -> None:
    body = tar(member("slide.svs", slide), member("bulk_rna.json", rna))
    assert reason in refused(post_slide(running, body, M_OPTIMUS, TAR), "bulk_rna")


@pytest.mark.parametrize("rna", [RNA, orjson.dumps([1.0] * 3)], ids=["m-optimus-counts", "short"])
def test_bulk_rna_for_a_model_without_it_is_refused(running: Running, slide: bytes, scratch: Path, rna: bytes) -> None:
    """The model asked for decides, by its spec (was, for the short list: "model 'm-optimus' takes 19374 counts")."""
    body = tar(member("slide.svs", slide), member("bulk_rna.json", rna))
    reason = refused(post_slide(running, body, "model=h1", TAR), "bulk_rna")
    assert reason == "model 'h1' takes no bulk RNA; send the slide alone"


# --- routes ----------------------------------------------------------------------------------------------------


def test_rest_routes_choose_the_slides_model_and_mode(running: Running, slide: bytes, scratch: Path) -> None:
    headers = {"content-type": "image/tiff"}
    embed = httpx.post(f"{running.url}/api/embed/h1", content=slide, headers=headers, timeout=60)
    assert embed.status_code == 200, embed.text  # was: 400, "this endpoint hosts h1, m-optimus; say which"
    predict = httpx.post(f"{running.url}/api/predict/m-optimus", content=slide, headers=headers, timeout=60)
    assert predict.status_code == 200, predict.text
    with h5py.File(io.BytesIO(embed.content)) as out:
        assert out.attrs["model"] == "h1" and out["features"].shape[1] == 1536
    with h5py.File(io.BytesIO(predict.content)) as out:
        assert out.attrs["model"] == "m-optimus" and out.attrs["mode"] == "prediction"
    contradicted = httpx.post(
        f"{running.url}/api/embed/h1", content=slide, headers={**headers, ATTRIBUTES: "model=m-optimus"}, timeout=60
    )
    assert refused(contradicted, "model") == "'m-optimus' contradicts 'h1' in the route"  # was: m-optimus's features
    tile = httpx.post(f"{running.url}/api/embed/h1", json=wire_record("m-optimus", "embedding"), timeout=60)
    assert refused(tile, "model_name") == "'m-optimus' contradicts 'h1' in the route"  # one check for both paths


def test_endpoint_without_tissue_seg_refuses_slides(tmp_path: Path, slide: bytes) -> None:
    artifact = package(["h1"], tmp_path / "artifact", demo=True)
    with serve_in_thread(Settings(model_dir=artifact, port=free_port(), decode_workers=1)) as alone:
        assert "tissue-seg" in refused(post_slide(alone, slide, ""), "model", 404)
        refused(post_slide(alone, slide, "model=m-optimus"), "model", 404)


# --- crowds and hang-ups ---------------------------------------------------------------------------------------


@pytest.fixture
def held(running: Running, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, mock.Mock]]:
    """Slides stop once their tissue is being found, until the event is set; the mock counts slides run."""
    release = hold_tissue_pass(monkeypatch)
    ran = mock.Mock(wraps=job.run_slide)
    monkeypatch.setattr("model_code.slides.http.run_slide", ran)
    monkeypatch.setattr(running.server.slides, "max_pending", 2)
    yield release, ran
    release.set()


def send_in_thread(running: Running, slide: bytes, answers: list[httpx.Response]) -> threading.Thread:
    thread = threading.Thread(target=lambda: answers.append(post_slide(running, slide, "model=h1")))
    thread.start()
    return thread


def quitter(running: Running, slide: bytes, sent: int) -> socket.socket:
    """A raw connection that posts the slide (declaring all of it, sending its first `sent` bytes) and hangs
    up when its `with` block ends, without reading an answer."""
    connection = socket.create_connection(("127.0.0.1", int(running.url.rsplit(":", 1)[1])))
    head = f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/tiff\r\n{ATTRIBUTES}: model=h1\r\n"
    connection.sendall(f"{head}Content-Length: {len(slide)}\r\n\r\n".encode() + slide[:sent])
    return connection


def test_slides_queue_up_to_a_bound_then_503_and_tiles_keep_flowing(
    running: Running, slide: bytes, scratch: Path, held: tuple[threading.Event, mock.Mock]
) -> None:
    release, ran = held
    answers: list[httpx.Response] = []
    first = send_in_thread(running, slide, answers)
    eventually(lambda: ran.call_count == 1, "the first slide to start")
    second = send_in_thread(running, slide, answers)
    eventually(lambda: running.server.slides.pending == 2, "the second slide to wait")
    assert tile_api(running, [np.full((224, 224, 3), 200, np.uint8)]).shape == (1, 1536)  # while a slide runs
    busy = post_slide(running, slide, "model=h1")
    assert busy.status_code == 503 and busy.headers["retry-after"]
    # refused, not queued until a place was free: both slides still here, the first still in its tissue pass
    assert (running.server.slides.pending, ran.call_count, release.is_set()) == (2, 1, False)
    release.set()
    first.join(60)
    second.join(60)
    assert [answer.status_code for answer in answers] == [200, 200] and ran.call_count == 2
    assert running.server.slides.pending == 0


def test_a_slide_whose_client_left_while_it_waited_is_not_run(
    running: Running, slide: bytes, scratch: Path, held: tuple[threading.Event, mock.Mock]
) -> None:
    release, ran = held
    answers: list[httpx.Response] = []
    first = send_in_thread(running, slide, answers)
    eventually(lambda: ran.call_count == 1, "the first slide to start")
    with quitter(running, slide, len(slide)):
        eventually(lambda: running.server.slides.pending == 2, "the second slide to wait")
    release.set()
    first.join(60)
    eventually(lambda: running.server.slides.pending == 0, "the second slide to be dropped")
    assert [answer.status_code for answer in answers] == [200] and ran.call_count == 1


def test_a_slide_whose_client_left_mid_run_stops_and_frees_the_queue(
    running: Running,
    slide: bytes,
    scratch: Path,
    held: tuple[threading.Event, mock.Mock],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As when SageMaker's 60 s InvokeEndpoint timeout hangs up: the slide stops at its next chunk (here: before
    any forward pass), its files go, and the next slide runs; was: it ran to the end with nobody to answer."""
    release, ran = held
    forwards = mock.Mock(wraps=job.tissue.records)
    monkeypatch.setattr(job.tissue, "records", forwards)
    with quitter(running, slide, len(slide)):
        eventually(lambda: ran.call_count == 1, "the slide to start")
    stop = inspect.signature(job.run_slide).bind(*ran.call_args.args, **ran.call_args.kwargs).arguments["stop"]
    assert stop.wait(30), "the server never saw the hang-up"  # while the slide is still finding its tissue
    release.set()
    eventually(lambda: running.server.slides.pending == 0, "the slide to stop")
    assert forwards.call_count == 0 and not list(scratch.glob("optimus-slide-*"))
    answer = post_slide(running, slide, "model=h1")
    assert answer.status_code == 200 and ran.call_count == 2 and forwards.call_count > 0


def test_client_gone_mid_upload_leaves_no_files(running: Running, slide: bytes, scratch: Path) -> None:
    with quitter(running, slide, len(slide) // 2):
        eventually(lambda: list(scratch.glob("optimus-slide-*/body")), "the upload to start")
    eventually(lambda: running.server.slides.pending == 0, "the upload to be dropped")

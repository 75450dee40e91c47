"""Every refusal reaches the client, over real HTTP: `kit slides run`'s transport shows the server's status
and JSON error when the server answers before the body (Expect: 100-continue), when it answers while the
body is still being sent, and retries a 503 after its Retry-After; clients that send the whole body first
(urllib) read the refusal too (the server drains the body). Was: `URLError: Connection reset by peer`."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import h5py
import numpy as np
import pytest

from kit.local import free_port
from kit.slides.run import Outcome, named_slides, plan_outputs, run_slides, table
from kit.slides.synthetic import make_slide
from kit.slides.transport import HttpTransport, SlideFailed, slide_body
from model_code.settings import Settings
from tests.support.polling import eventually
from tests.support.serving import Running, serve_in_thread
from tests.support.slides import DICOM, damaged, hold_tissue_pass, tile_index

LIMIT = 1 << 20  # MAX_SLIDE_MB of the small server


def run(paths: list[Path], url: str, out: Path) -> list[Outcome]:
    """`kit slides run PATHS --endpoint-url URL --model h1 --out OUT`, as its command runs it."""
    return run_slides(plan_outputs(named_slides(paths), out, "h5"), HttpTransport(url, 60), "model=h1")


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slide of 16 MB (0.9 x 0.7 mm at 0.5 um/px, then bytes OpenSlide never reads): more than the socket
    buffers take while the server does not read."""
    slide = make_slide(tmp_path_factory.mktemp("refusals") / "big.svs", 0.5)
    with slide.open("ab") as file:
        file.write(bytes(16 * LIMIT - slide.stat().st_size))
    return slide


@pytest.fixture(scope="module")
def small_limit(artifact: Path) -> Iterator[Running]:
    with serve_in_thread(Settings(model_dir=artifact, port=free_port(), max_slide_bytes=LIMIT)) as running:
        yield running


def test_an_early_400_reaches_the_kit_before_the_body_is_sent(running: Running, big: Path, tmp_path: Path) -> None:
    with pytest.raises(SlideFailed) as failed:
        HttpTransport(running.url, 60).send(big, "model=h1;bogus=1", tmp_path / "out.h5")
    assert "HTTP 400" in str(failed.value) and "field 'bogus': unknown option" in str(failed.value)


def test_a_client_that_sends_everything_first_reads_the_refusal(running: Running, big: Path) -> None:
    """urllib sends the whole body before it reads: the server drains it, then answers (was: a reset)."""
    request = urllib.request.Request(
        f"{running.url}/invocations",
        data=big.read_bytes(),
        headers={"Content-Type": "application/octet-stream", "X-Amzn-SageMaker-Custom-Attributes": "model=h1;bogus=1"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 400 and b"unknown option" in refused.value.read()


@pytest.mark.parametrize("expect_wait_s", [3.0, 0.0], ids=["100-continue", "body-sent-anyway"])
def test_a_slide_over_max_slide_mb_is_a_413_the_kit_reads(
    small_limit: Running, big: Path, tmp_path: Path, expect_wait_s: float
) -> None:
    """With 100-continue the body is never sent; without waiting for it, the server drains up to its limit and
    hangs up while the body is still on its way, and the answer is read after the failed send."""
    transport = HttpTransport(small_limit.url, 60, expect_wait_s=expect_wait_s)
    with pytest.raises(SlideFailed) as failed:
        transport.send(big, "model=h1", tmp_path / "out.h5")
    assert "HTTP 413" in str(failed.value) and "MAX_SLIDE_MB" in str(failed.value), str(failed.value)


@pytest.fixture
def one_at_a_time(running: Running, monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """One slide holds the server's only queue place (it waits in its tissue pass) until the event is set."""
    release = hold_tissue_pass(monkeypatch)
    monkeypatch.setattr(running.server.slides, "max_pending", 1)
    yield release
    release.set()


def holding(running: Running, send: Callable[[], object]) -> threading.Thread:
    """`send` in a thread, once its slide holds the queue."""
    holder = threading.Thread(target=send)
    holder.start()
    eventually(lambda: running.server.slides.pending == 1, "the first slide to hold the queue")
    return holder


def test_a_full_queue_is_retried_after_its_retry_after(
    running: Running, tmp_path: Path, one_at_a_time: threading.Event
) -> None:
    slide = make_slide(tmp_path / "half.svs", 0.5)
    first: list[Outcome] = []
    holder = holding(running, lambda: first.extend(run([slide], running.url, tmp_path / "a")))
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # instead of waiting, the held slide is let go
        waits.append(seconds)
        one_at_a_time.set()
        holder.join(60)

    HttpTransport(running.url, 60, retries=2, sleep=sleep).send(slide, "model=h1", tmp_path / "second.h5")
    assert waits == [60.0] and [o.status for o in first] == ["done"]
    with h5py.File(tmp_path / "second.h5") as out:
        assert out.attrs["tiles"] > 0


def test_retries_of_a_503_are_bounded(running: Running, tmp_path: Path, one_at_a_time: threading.Event) -> None:
    slide = make_slide(tmp_path / "half.svs", 0.5)
    holder = holding(running, lambda: HttpTransport(running.url, 60).send(slide, "model=h1", tmp_path / "a.h5"))
    waits: list[float] = []
    with pytest.raises(SlideFailed, match=r"HTTP 503: .*retry later"):
        HttpTransport(running.url, 60, retries=2, sleep=waits.append).send(slide, "model=h1", tmp_path / "b.h5")
    assert waits == [60.0, 60.0]
    one_at_a_time.set()
    holder.join(60)


def test_kit_sends_a_dicom_folder_as_a_streamed_tar(running: Running, tmp_path: Path) -> None:
    folder = tmp_path / "cohort" / "case-1"
    folder.mkdir(parents=True)
    for path in DICOM:
        (folder / path.name).write_bytes(path.read_bytes())
    body = slide_body(folder)
    assert body.content_type == "application/x-tar" and body.length == sum(len(c) for c in body.chunks())
    sent = mock.Mock(wraps=slide_body)
    with mock.patch("kit.slides.transport.slide_body", sent):
        (outcome,) = run([tmp_path / "cohort"], running.url, tmp_path / "out")
    assert outcome.status == "done", outcome.reason
    assert sent.call_args.args == (folder,)
    with h5py.File(tmp_path / "out" / "case-1.h5") as out:
        assert out.attrs["slide_vendor"] == "dicom"


def test_the_table_names_skipped_tiles(running: Running, tmp_path: Path) -> None:
    good = make_slide(tmp_path / "good.svs", 0.5)
    first = run([good], running.url, tmp_path / "a")
    with h5py.File(tmp_path / "a" / "good.h5") as out:
        x, y = (int(v) for v in out["coords"][0])
    width = 1792
    bad = damaged(good, tmp_path / "damaged.svs", [tile_index(x, y, width)])
    outcomes = run([bad], running.url, tmp_path / "b")
    report = table(first + outcomes)
    assert outcomes[0].status == "done" and "tiles skipped: tile at" in report and "cannot be decoded" in report
    assert np.isfinite(outcomes[0].tiles_per_s)

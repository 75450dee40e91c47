"""Reliability over real HTTP: limits, stalled and vanished clients, poison tiles, negotiation, error layout."""

from __future__ import annotations

import contextlib
import gzip
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest
import requests

from bench.simulated_device import SimulatedDevice
from kit.endpoints.samples import wire_record
from kit.local import free_port, metric, wait_healthy
from model_code.settings import Limits, Settings, SettingsError
from tests.support.paths import REPO
from tests.support.polling import eventually
from tests.support.serving import HeldForwards, Running, serve_in_thread

JSON = {"content-type": "application/json"}
SLIDE = {"content-type": "application/octet-stream", "x-amzn-sagemaker-custom-attributes": "model=h1"}


@pytest.fixture(scope="module")
def guarded(artifact: Path) -> Iterator[Running]:
    """A server with small limits, a short read timeout and a poison slide whose tiles fail their forward."""
    settings = Settings(
        model_dir=artifact,
        port=free_port(),
        max_batch_wait_ms=20,
        limits=Limits(max_records=40, max_response_bytes=3 * 1024 * 1024),
        read_timeout_s=0.5,
    )
    with serve_in_thread(settings, SimulatedDevice(poison_slide="poison").hooks()) as running:
        yield running


def tile(slide: str, patch_idx: int) -> dict[str, object]:
    return {**wire_record("h1", "embedding", patch_idx=patch_idx), "slide_name": slide}


def test_a_poison_tile_fails_alone_and_its_batch_neighbours_are_answered(guarded: Running) -> None:
    records = [tile("s", i) for i in range(9)]
    records[4]["slide_name"] = "poison"
    failures = metric(guarded.url, "optimus_forward_failures_total", model="h1")
    answers = httpx.post(f"{guarded.url}/invocations", json=records, timeout=60).json()
    assert [len(a.get("output", [])) for a in answers] == [1536] * 4 + [0] + [1536] * 4
    assert [a.get("patch_idx") for a in answers] == [0, 1, 2, 3, None, 5, 6, 7, 8]
    assert answers[4]["status"] == 503 and answers[4]["retryable"] is True and "simulated" in answers[4]["error"]
    assert metric(guarded.url, "optimus_isolated_tiles_total", model="h1") >= 1
    assert metric(guarded.url, "optimus_forward_failures_total", model="h1") - failures >= 4  # 9 -> 4 -> 2 -> 1 (+1)
    alone = httpx.post(f"{guarded.url}/invocations", json=records[4])
    assert alone.status_code == 503 and alone.headers["retry-after"] == "1"


def test_concurrent_requests_batched_with_a_poison_tile_are_answered(guarded: Running) -> None:
    def body(i: int) -> bytes:
        return orjson.dumps(tile("poison" if i == 5 else "s", i))

    results: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        results[i] = httpx.post(f"{guarded.url}/invocations", content=body(i), headers=JSON, timeout=60)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {i: r.status_code for i, r in results.items()} == {i: 503 if i == 5 else 200 for i in range(12)}
    assert all(results[i].json()["patch_idx"] == i for i in range(12) if i != 5)


def test_too_many_records_and_too_large_answers_are_413_with_the_reason(guarded: Running) -> None:
    many = "\n".join(json.dumps({"model_name": "h1", "mode": "metadata"}) for _ in range(41))
    refused = httpx.post(f"{guarded.url}/invocations", content=many, headers={"content-type": "application/jsonlines"})
    assert refused.status_code == 413 and "MAX_RECORDS" in refused.json()["error"]
    seg = [wire_record("tissue-seg", "prediction")] * 4  # at least 4 x 1 MB of answer: refused before decoding
    assert httpx.post(f"{guarded.url}/invocations", json=seg).status_code == 413
    metadata = [{"model_name": "m-optimus", "mode": "metadata"}] * 10  # 460 kB each once written
    big = httpx.post(f"{guarded.url}/invocations", json=metadata)
    assert big.status_code == 413 and "MAX_RESPONSE_MB" in big.json()["error"]
    assert httpx.post(f"{guarded.url}/invocations", json=metadata[:5]).status_code == 200


def test_a_stalled_connection_is_dropped_after_the_read_timeout(guarded: Running) -> None:
    port = int(guarded.url.rsplit(":", 1)[1])
    for opening in (
        b"",
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nConte",
        b"POST /invocations HTTP/1.1\r\n"
        b'Host: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model',
    ):
        # not dropped within 10 x READ_TIMEOUT_S: recv raises TimeoutError
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(opening)
            assert sock.recv(65536) == b""  # closed by the server, not answered
    assert httpx.get(f"{guarded.url}/ping").status_code == 200


def test_headers_without_end_are_431_not_memory(guarded: Running) -> None:
    """uvicorn's parser keeps every header line it is sent (1.2 GB of them grew a server by 1.4 GB): past
    MAX_HEAD_BYTES the request is refused and the connection closed; headers under it are served."""
    from model_code.connections import MAX_HEAD_BYTES

    port = int(guarded.url.rsplit(":", 1)[1])
    flood = b"POST /invocations HTTP/1.1\r\nHost: x\r\n" + b"X-Flood: " + b"a" * MAX_HEAD_BYTES + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(flood)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["field"] == "headers"
    big = {"x-big": "a" * (MAX_HEAD_BYTES // 2)}
    assert httpx.post(f"{guarded.url}/invocations", json=tile("s", 0), headers=big).status_code == 200


def test_headers_in_pieces_and_chunked_trailers_are_bounded_too(guarded: Running) -> None:
    """The chunk that ends the head counts (70 kB in 10 kB pieces was served); trailers after a chunked body are
    kept by the parser as headers are (273 MB of them grew a server by 4 GB): the connection is closed."""

    port = int(guarded.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        piece = (b"X-Pad: " + b"a" * 1000 + b"\r\n") * 10  # 10 kB
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        for _ in range(6):
            sock.sendall(piece)
            time.sleep(0.05)  # each its own read
        sock.sendall(piece + b"\r\n")  # 70 kB, the last piece ending the head (was: served)
        assert sock.recv(65536).startswith(b"HTTP/1.1 431 ")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(64):  # 4 MB of trailer lines
                sock.sendall(b"X-T: v\r\n" * 8192)
                time.sleep(0.005)
    assert httpx.get(f"{guarded.url}/ping").status_code == 200


def test_blank_lines_between_requests_do_not_hold_a_connection(guarded: Running) -> None:
    """The parser skips CRLFs between requests, which stopped uvicorn's keep-alive timer: one CRLF after an
    answer, or a CRLF every few seconds on a new connection, held a socket for ever."""
    port = int(guarded.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"\r\n")
        assert sock.recv(65536) == b""  # closed by the server within READ_TIMEOUT_S (0.5 s), not held
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        began = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while time.monotonic() - began < 4:
                sock.sendall(b"\r\n")
                time.sleep(0.2)
        assert time.monotonic() - began < 2 and sock.recv(1) == b""


def test_headers_sent_a_byte_at_a_time_do_not_stretch_the_read_timeout(guarded: Running) -> None:
    """A header line every 0.2 s (under READ_TIMEOUT_S 0.5 between bytes) held a socket for as long as it went on."""
    port = int(guarded.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
        began = time.monotonic()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while time.monotonic() - began < 4:
                sock.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.2)
    assert time.monotonic() - began < 2, "dropped within a few read timeouts of the head's first byte"


def read_a_large_answer(artifact: Path, receive_buffer: int, wait_s: float, pause_s: float) -> tuple[int, int]:
    """12 tissue-seg answers (12 MB: more than the kernel's buffers take, 4 MB sending here, so the server's own
    buffer holds the rest) from a server with READ_TIMEOUT_S 0.5, read after `wait_s`, `pause_s` between
    reads: (bytes of body declared, bytes of body received)."""
    body = orjson.dumps([wire_record("tissue-seg", "prediction")] * 12)
    with serve_in_thread(Settings(model_dir=artifact, port=free_port(), read_timeout_s=0.5)) as running:
        port = int(running.url.rsplit(":", 1)[1])
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.connect(("127.0.0.1", port))
            head = f"POST /invocations HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}"
            sock.sendall(f"{head}\r\nContent-Type: application/json\r\n\r\n".encode() + body)
            time.sleep(wait_s)
            received = b""
            with contextlib.suppress(ConnectionResetError):
                sock.settimeout(10)
                while chunk := sock.recv(1 << 16):
                    received += chunk
                    time.sleep(pause_s)
        assert httpx.get(f"{running.url}/ping").status_code == 200
    declared = int(received.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    return declared, len(received.split(b"\r\n\r\n", 1)[1])


def test_a_client_that_reads_its_answer_slowly_gets_all_of_it(artifact: Path) -> None:
    """Progress counts the kernel's send queue too: a reader taking 1.3 MB/s empties the kernel's megabytes
    for longer than READ_TIMEOUT_S while the server's own buffer stands still (was: dropped)."""
    declared, received = read_a_large_answer(artifact, 65536, 0, 0.05)
    assert declared > 10e6 and received == declared


def test_a_client_that_never_reads_its_answer_is_dropped_with_it(artifact: Path) -> None:
    """Without this a client that sends a small request for a large answer and reads nothing kept the answer in
    the server's memory for as long as it held the connection (4 such clients: 1.4 GB)."""
    declared, received = read_a_large_answer(artifact, 4096, 5, 0)  # the forward, then 0.5 s with nothing read
    assert declared > 10e6 and received < declared, "the server gave up"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("content_type", "setting"), [(JSON, "MAX_BODY_MB"), (SLIDE, "MAX_SLIDE_MB")], ids=["tiles", "slide"]
)
def test_over_limit_bodies_get_a_readable_413_from_clients_that_send_everything_first(
    running: Running, monkeypatch: pytest.MonkeyPatch, content_type: dict[str, str], setting: str, chunked: bool
) -> None:
    """A body declared over its limit, or found so while it streams, is drained before the 413 (urllib and
    requests send everything before they read). Was, for a chunked slide: a reset (only tiles were drained).
    The chunked slide leaves more past its limit than the socket buffers hold, and is drained up to its limit."""
    if setting == "MAX_SLIDE_MB":
        monkeypatch.setattr(running.server.slides, "max_bytes", 40 * 1024 * 1024)
    limit = running.server.slides.max_bytes if setting == "MAX_SLIDE_MB" else running.server.settings.max_body_bytes
    size = 2 * limit - 1024 if chunked else limit + 1024 * 1024
    big = b'{"image_data": "' + b"x" * size + b'"}'
    for send in (urllib_post, requests_post):
        status, refusal = send(f"{running.url}/invocations", iter([big]) if chunked else big, content_type)
        assert (status, refusal["field"]) == (413, "body") and setting in refusal["error"], refusal


def urllib_post(url: str, data: bytes | Iterator[bytes], headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, data=data, headers=headers)  # Connection: close
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    return caught.value.code, json.loads(caught.value.read())


def requests_post(url: str, data: bytes | Iterator[bytes], headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    answered = requests.post(url, data=data, headers=headers, timeout=30)
    return answered.status_code, answered.json()


def test_gzip_bodies_are_decoded_bounded_and_other_encodings_are_415(running: Running) -> None:
    record = orjson.dumps(wire_record("h1", "embedding", patch_idx=7))
    zipped = httpx.post(
        f"{running.url}/invocations", content=gzip.compress(record), headers={**JSON, "content-encoding": "gzip"}
    )
    assert zipped.status_code == 200 and zipped.json()["patch_idx"] == 7
    bomb = gzip.compress(b" " * (7 * 1024 * 1024))  # 7 kB that inflate past the 6 MB limit
    inflated = httpx.post(f"{running.url}/invocations", content=bomb, headers={**JSON, "content-encoding": "gzip"})
    assert inflated.status_code == 413 and inflated.json()["field"] == "body"
    broken = httpx.post(
        f"{running.url}/invocations", content=b"\x1f\x8bxx", headers={**JSON, "content-encoding": "gzip"}
    )
    assert broken.status_code == 400 and broken.json()["field"] == "content_encoding"
    brotli = httpx.post(f"{running.url}/invocations", content=record, headers={**JSON, "content-encoding": "br"})
    assert brotli.status_code == 415 and brotli.json()["field"] == "content_encoding"


def test_every_gzip_member_is_read_and_bytes_after_the_last_are_refused(running: Running) -> None:
    """`cat a.gz b.gz` is one gzip body (RFC 1952), as streaming writers make them: no record after the first
    member may be lost."""
    lines = [orjson.dumps(wire_record("h1", "embedding", patch_idx=i)) + b"\n" for i in range(5)]
    members = gzip.compress(b"".join(lines[:3])) + gzip.compress(b"".join(lines[3:]))
    headers = {"content-type": "application/jsonlines", "accept": "application/jsonlines", "content-encoding": "gzip"}
    answered = httpx.post(f"{running.url}/invocations", content=members, headers=headers)
    assert answered.status_code == 200, answered.text
    assert [orjson.loads(line)["patch_idx"] for line in answered.content.splitlines()] == [0, 1, 2, 3, 4]
    trailing = httpx.post(f"{running.url}/invocations", content=members + b"garbage", headers=headers)
    assert trailing.status_code == 400 and trailing.json()["field"] == "content_encoding"
    assert "after its first member" in trailing.json()["reason"]
    padded = httpx.post(f"{running.url}/invocations", content=members + bytes(512), headers=headers)  # as gzip(1)
    assert padded.status_code == 200 and len(padded.content.splitlines()) == 5


@pytest.mark.parametrize(
    ("accept", "answer_type"),
    [
        ("application/json, text/plain, */*", "application/json"),
        ("application/*", "application/json"),
        ("text/html;q=0.9, application/jsonlines;q=0.8", "application/jsonlines"),
        ("application/json;q=0.2, application/jsonlines;q=0.9", "application/jsonlines"),
        ("*/*;q=0.1", "application/json"),
    ],
)
def test_accept_is_negotiated(running: Running, accept: str, answer_type: str) -> None:
    response = httpx.post(f"{running.url}/invocations", json=wire_record("h1", "embedding"), headers={"accept": accept})
    assert response.status_code == 200 and response.headers["content-type"] == answer_type


def test_an_unacceptable_accept_is_406_before_any_forward_pass(running: Running) -> None:
    forwards = metric(running.url, "optimus_batch_size_count", model="h1")
    for accept in ("text/csv", "application/json;q=0, text/plain"):
        refused = httpx.post(
            f"{running.url}/invocations", json=wire_record("h1", "embedding"), headers={"accept": accept}
        )
        assert refused.status_code == 406 and refused.json()["field"] == "accept"
    assert metric(running.url, "optimus_batch_size_count", model="h1") == forwards


def test_framework_errors_use_the_error_layout_and_head_ping_works(running: Running) -> None:
    missing = httpx.get(f"{running.url}/nowhere")
    assert missing.status_code == 404 and missing.json()["field"] == "path" and missing.json()["status"] == 404
    wrong = httpx.get(f"{running.url}/invocations")
    assert wrong.status_code == 405 and wrong.json()["field"] == "method" and "POST" in wrong.headers["allow"]
    head = httpx.head(f"{running.url}/ping")
    assert head.status_code == 200 and head.content == b""


def test_record_errors_are_counted_for_single_records_and_unhosted_models_in_lists(artifact: Path) -> None:
    from kit.artifacts.builder import package

    h1_only = package(["h1"], artifact.parent.parent / "h1-only-server", demo=True)
    with serve_in_thread(Settings(model_dir=h1_only, port=free_port())) as server:
        errors_400 = metric(server.url, "optimus_record_errors_total", status="400")
        bad = httpx.post(f"{server.url}/invocations", json={**wire_record("h1", "embedding"), "image_data": "@"})
        assert bad.status_code == 400
        assert metric(server.url, "optimus_record_errors_total", status="400") == errors_400 + 1
        decoded = metric(server.url, "optimus_decode_seconds_count")
        assert httpx.post(f"{server.url}/invocations", content=b"{", headers=JSON).status_code == 400
        assert metric(server.url, "optimus_decode_seconds_count") == decoded + 1
        answers = httpx.post(
            f"{server.url}/invocations", json=[wire_record("h1", "embedding"), wire_record("tissue-seg", "prediction")]
        ).json()
        assert len(answers[0]["output"]) == 1536 and (answers[1]["status"], answers[1]["record"]) == (404, 1)
        assert metric(server.url, "optimus_record_errors_total", status="404") == 1
        assert 'optimus_queue_wait_seconds_count{model="tissue-seg"}' not in httpx.get(f"{server.url}/metrics").text


def test_work_of_a_client_that_went_away_leaves_the_queue(artifact: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One forward at a time, the first tile held on the device: the second client hangs up while its tile
    waits, so its tile never runs; the disconnect is a 499 logged once, not a 500."""
    device = HeldForwards()
    settings = Settings(model_dir=artifact, port=free_port(), max_batch_size=1)
    with serve_in_thread(settings, device.hooks()) as slow:
        port = int(slow.url.rsplit(":", 1)[1])
        first = threading.Thread(
            target=httpx.post,
            args=(f"{slow.url}/invocations",),
            kwargs={"json": wire_record("h1", "embedding"), "timeout": 30},
        )
        first.start()
        assert device.started.wait(30), "the first tile never reached the device"
        body = orjson.dumps(wire_record("h1", "embedding"))
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            eventually(lambda: metric(slow.url, "optimus_decode_seconds_count") == 2, "the second tile decoded")
        gone = {"route": "/invocations", "status": "499"}
        eventually(lambda: metric(slow.url, "optimus_requests_total", **gone) == 1, "the hang-up answered 499")
        device.release.set()
        first.join()
        # one pass at a time, oldest tile first: a tile of the second client still queued would run before this one
        assert httpx.post(f"{slow.url}/invocations", json=wire_record("h1", "embedding")).status_code == 200
        assert metric(slow.url, "optimus_batch_size_count", model="h1") == 2  # the first tile and the last
        assert metric(slow.url, "optimus_requests_total", route="/invocations", status="500") == 0
    assert sum("client went away" in record.getMessage() for record in caplog.records) == 1


def test_sigterm_does_not_wait_for_a_stalled_upload(artifact: Path) -> None:
    port = free_port()
    env = {"PYTHONPATH": str(REPO), "READ_TIMEOUT_S": "120", "GRACEFUL_TIMEOUT_S": "60", "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(
        [sys.executable, "-m", "model_code.serve", "--model-dir", str(artifact), "--port", str(port)], env=env, cwd=REPO
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
            sock.sendall(head)
            assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue"), "the server never asked for the body"
            sock.sendall(b'{"a')  # and no more: the server is reading an upload that has stalled
            process.send_signal(signal.SIGTERM)
            # within half GRACEFUL_TIMEOUT_S (READ_TIMEOUT_S is longer still); uvicorn re-raises the signal it caught
            assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()


def test_settings_limits_come_from_the_environment() -> None:
    loaded = Settings.load({"MAX_RECORDS": "10", "MAX_RESPONSE_MB": "1.5", "READ_TIMEOUT_S": "3"})
    assert loaded.limits == Limits(max_records=10, max_response_bytes=int(1.5 * 1024 * 1024))
    assert loaded.read_timeout_s == 3.0 and replace(loaded, read_timeout_s=1).read_timeout_s == 1


def test_slide_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = Settings.load({"SLIDE_READ_THREADS": "3", "MAX_QUEUED_SLIDES": "9"})
    assert (loaded.slide_read_threads, loaded.max_queued_slides) == (3, 9)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert Settings.load({}).slide_read_threads == 8  # half the cores
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert Settings.load({}).slide_read_threads == 2 and Settings.load({}).max_queued_slides == 4
    with pytest.raises(SettingsError, match="SLIDE_READ_THREADS"):
        Settings.load({"SLIDE_READ_THREADS": "0"})


def test_decode_workers_default_to_two_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert Settings.load({}).decode_workers == 32
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert Settings.load({}).decode_workers == 4 and Settings.load({"DECODE_WORKERS": "3"}).decode_workers == 3
    with pytest.raises(SettingsError, match="DECODE_WORKERS"):
        Settings.load({"DECODE_WORKERS": "0"})

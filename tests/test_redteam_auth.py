"""Bearer tokens as a hostile client tries them: odd paths, odd methods, odd headers, over raw HTTP/1.1
(httpx would tidy `..` and `//` away before they reach the server), and no token in any log or answer."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from model_code.settings import Auth
from tests.support.auth import TOKEN_A, TOKEN_B, WRONG, serve_with_auth
from tests.support.serving import Running


@pytest.fixture(scope="module")
def guarded(artifact: Path) -> Iterator[Running]:
    """Tokens A and B; the documentation left open (AUTH_OPEN=docs), /metrics and the API not."""
    with serve_with_auth(artifact, Auth(tokens=(TOKEN_A, TOKEN_B), open=frozenset({"docs"}))) as running:
        yield running


def raw(running: Running, method: str, path: str, headers: Sequence[str] = ()) -> tuple[int, bytes]:
    """Status and body of a request sent byte for byte as written."""
    port = int(running.url.rsplit(":", 1)[1])
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close", "Content-Length: 0", *headers]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "path",
    [
        "/ping/../metrics",  # was: let through as "under /ping" (then a 404 without a token)
        "/ping/%2e%2e/metrics",
        "/ping%2F..%2Fmetrics",
        "/docs-assets/../metrics",  # was: let through as "under /docs-assets"
        "/docs-assets/../api/metadata/h1",
        "/docs/./../invocations",
        "//metrics",
        "/metrics/",
        "/metrics//",
        "/./metrics",
        "/PING",
        "/Metrics",
        "/%6Detrics",
        "/endpoints/x/invocations",
        "/api/metadata/h1?x=/ping",
    ],
)
def test_no_path_trick_reaches_a_protected_route_without_a_token(guarded: Running, path: str) -> None:
    for method in ("GET", "POST", "HEAD", "OPTIONS"):
        status, _ = raw(guarded, method, path)
        assert status == 401, (method, path)


def test_open_paths_stay_open(guarded: Running) -> None:
    for path in ("/ping", "/%70ing", "/docs", "/openapi.json", "/docs-assets/swagger-ui.css"):
        assert raw(guarded, "GET", path)[0] == 200, path
    assert raw(guarded, "HEAD", "/ping")[0] == 200


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (f"bearer {TOKEN_A}", 200),
        (f"BEARER {TOKEN_A}", 200),
        (f"Bearer    {TOKEN_A}   ", 200),
        (f"Bearer {TOKEN_A}\t", 200),
        (f"Bearer\t{TOKEN_A}", 401),
        (f"Bearer {TOKEN_A} {TOKEN_B}", 401),
        (f"Bearer {TOKEN_A},{TOKEN_B}", 401),
        (f"Bearer {TOKEN_A}x", 401),
        (f"Bearer {TOKEN_A[:-1]}", 401),
        (f"Basic {TOKEN_A}", 401),
        ("Bearer ", 401),
    ],
)
def test_authorization_header_variants(guarded: Running, header: str, status: int) -> None:
    assert raw(guarded, "GET", "/api/metadata/h1", [f"Authorization: {header}"])[0] == status


def test_two_authorization_headers_are_refused_whatever_their_order(guarded: Running) -> None:
    for first, second in [(WRONG, TOKEN_A), (TOKEN_A, WRONG), (TOKEN_A, TOKEN_B)]:
        status, body = raw(
            guarded, "GET", "/api/metadata/h1", [f"Authorization: Bearer {first}", f"authorization: Bearer {second}"]
        )
        assert status == 401 and b"one Authorization header" in body, (first, second)  # was: the last one counted


def test_no_token_in_any_log_or_answer(guarded: Running, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    near = TOKEN_A[:-1] + "Z"
    bodies = [
        raw(guarded, "GET", path, [f"Authorization: {header}"])[1]
        for path in ("/api/metadata/h1", "/ping/../metrics", "/nowhere")
        for header in (f"Bearer {near}", f"Basic {TOKEN_A}", f"Bearer {TOKEN_A} {TOKEN_B}", f"Bearer {WRONG}")
    ]
    bodies.append(raw(guarded, "GET", "/nowhere", [f"Authorization: Bearer {TOKEN_A}"])[1])  # a 404 with a token
    text = "\n".join(record.getMessage() for record in caplog.records) + b"\n".join(bodies).decode()
    for secret in (TOKEN_A, TOKEN_B, near, WRONG, TOKEN_A[:12]):
        assert secret not in text

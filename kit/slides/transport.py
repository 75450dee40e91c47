"""How `kit slides run --endpoint-url` sends one slide to a server's /invocations and reads its answer.

A slide file goes as it is (`application/octet-stream`); a slide of several files (a folder holding a DICOM
series, an `.mrxs` with its folder) goes as an uncompressed tar, written while it is sent, its length known
in advance. A plain-HTTP request asks `Expect: 100-continue`, so a server that refuses before reading the body (an
unknown option, a slide over MAX_SLIDE_MB, a full slide queue) is heard before the body is sent; a server
or proxy that does not answer 100 within EXPECT_WAIT_S gets the body anyway, and if it answers and hangs up
while the body is still going, the answer is read after the failed send. A 503 with `Retry-After` (a full
slide queue, a failed forward pass) is retried after that delay, up to `retries` times.
"""

from __future__ import annotations

import http.client
import select
import socket
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

EXPECT_WAIT_S = 3.0  # curl waits 1 s for a 100 Continue; a loaded server's event loop may take longer
MAX_RETRY_AFTER_S = 900.0
CHUNK = 1 << 20
ERROR_BYTES = 64 << 10  # of an error answer, kept for the reason
TAR_BLOCK = tarfile.BLOCKSIZE
Part = bytes | tuple[Path, int]  # bytes as they are, or a file's first `size` bytes


class SlideFailed(Exception):
    """A slide the endpoint could not answer: the reason, as the server gave it."""


@dataclass(frozen=True)
class Member:
    name: str  # in the archive
    path: Path


@dataclass(frozen=True)
class SlideBody:
    """What is sent for a slide: its content type, its length and its bytes, in chunks."""

    content_type: str
    length: int
    chunks: Callable[[], Iterator[bytes]]


def slide_members(slide: Path) -> list[Member] | None:
    """The files of a slide made of several (a folder, or an .mrxs and the folder of its stem), named from the
    folder that holds the slide; None for a slide of one file."""
    if slide.is_dir():
        files = sorted(path for path in slide.rglob("*") if path.is_file())
    elif slide.suffix.lower() == ".mrxs":
        files = [slide, *sorted(path for path in slide.with_suffix("").rglob("*") if path.is_file())]
    else:
        return None
    return [Member(path.relative_to(slide.parent).as_posix(), path) for path in files]


def slide_body(slide: Path) -> SlideBody:
    members = slide_members(slide)
    if members is None:
        size = slide.stat().st_size
        return SlideBody("application/octet-stream", size, lambda: _file_chunks(slide, size))
    parts = tar_parts(members)
    return SlideBody("application/x-tar", parts_length(parts), lambda: part_chunks(parts))


def tar_parts(members: list[Member]) -> list[Part]:
    """An uncompressed tar of the members as headers, files and padding, byte for byte what tarfile writes with
    fixed metadata (the same files give the same bytes), none of it read yet. PAX headers: long names and
    sizes over 8 GB."""
    parts: list[Part] = []
    for member in members:
        info = tarfile.TarInfo(member.name)
        info.size, info.mode = member.path.stat().st_size, 0o644
        parts += [info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"), (member.path, info.size)]
        parts.append(bytes(-info.size % TAR_BLOCK))
    written = parts_length(parts) + 2 * TAR_BLOCK
    parts.append(bytes(2 * TAR_BLOCK + (-written % tarfile.RECORDSIZE)))
    return parts


def parts_length(parts: list[Part]) -> int:
    return sum(len(part) if isinstance(part, bytes) else part[1] for part in parts)


def part_chunks(parts: list[Part]) -> Iterator[bytes]:
    for part in parts:
        if isinstance(part, bytes):
            yield part
        else:
            yield from _file_chunks(*part)


def _file_chunks(path: Path, size: int) -> Iterator[bytes]:
    """The file's first `size` bytes (its size when the body's length was counted)."""
    left = size
    with path.open("rb") as file:
        while left and (chunk := file.read(min(CHUNK, left))):
            left -= len(chunk)
            yield chunk
    if left:
        raise SlideFailed(f"{path} shrank while it was sent")


class HttpTransport:
    """POST each slide to URL/invocations (streamed from disk); stream the answer to a file."""

    def __init__(
        self,
        endpoint_url: str,
        timeout_s: float,
        retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        expect_wait_s: float = EXPECT_WAIT_S,
    ):
        parts = urlsplit(endpoint_url.rstrip("/"))
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port
        self.path = parts.path + "/invocations"
        self.timeout_s = timeout_s
        self.retries = retries
        self.sleep = sleep
        self.expect_wait_s = expect_wait_s

    def send(self, slide: Path, attributes: str, out: Path) -> None:
        body = slide_body(slide)
        for attempt in range(self.retries + 1):
            status, retry_after, reason = self._post(body, attributes, out)
            if status == 200:
                return
            if status == 503 and retry_after is not None and attempt < self.retries:
                self.sleep(min(retry_after, MAX_RETRY_AFTER_S))
                continue
            raise SlideFailed(f"HTTP {status}: {reason}")

    def _post(self, body: SlideBody, attributes: str, out: Path) -> tuple[int, float | None, str]:
        """One request: (status, Retry-After seconds or None, the error body); a 200's body written to `out`."""
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        connection = kind(self.host, self.port, timeout=self.timeout_s)
        try:
            connection.putrequest("POST", self.path)
            for name, value in (
                ("Content-Type", body.content_type),
                ("Content-Length", str(body.length)),
                ("X-Amzn-SageMaker-Custom-Attributes", attributes),
                *([] if self.https else [("Expect", "100-continue")]),  # TLS sockets cannot peek at the answer
            ):
                connection.putheader(name, value)
            connection.endheaders()
            answer = None if self.https or self._continued(connection) else connection.getresponse()
            if answer is None:
                answer = self._send_body(connection, body)
            if answer.status == 200:
                with out.open("wb") as file:
                    while chunk := answer.read(CHUNK):
                        file.write(chunk)
                return 200, None, ""
            text = answer.read(ERROR_BYTES).decode(errors="replace")[:500]
            return answer.status, _retry_after(answer.getheader("Retry-After")), text
        except (OSError, http.client.HTTPException) as exc:
            raise SlideFailed(f"{type(exc).__name__}: {exc}") from None
        finally:
            connection.close()

    def _continued(self, connection: http.client.HTTPConnection) -> bool:
        """True when the body should be sent: the server said 100 Continue, or said nothing in time; False
        when its final answer has come instead."""
        sock = connection.sock
        assert sock is not None
        readable, _, _ = select.select([sock], [], [], self.expect_wait_s)
        if not readable:
            return True
        head = sock.recv(64, socket.MSG_PEEK)
        if not head.startswith((b"HTTP/1.1 100", b"HTTP/1.0 100")):
            return False
        seen = b""
        while not seen.endswith(b"\r\n\r\n"):  # the interim answer: a status line and (usually no) headers
            seen += sock.recv(1)
        return True

    def _send_body(self, connection: http.client.HTTPConnection, body: SlideBody) -> http.client.HTTPResponse:
        try:
            for chunk in body.chunks():
                connection.send(chunk)
        except OSError as sending:  # the server answered and closed while the body was on its way
            try:
                return connection.getresponse()
            except (OSError, http.client.HTTPException):
                raise SlideFailed(
                    f"{type(sending).__name__} while sending the slide, and no answer could be read: {sending}"
                ) from None
        return connection.getresponse()


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (its HTTP-date form too); None when absent or unreadable."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None

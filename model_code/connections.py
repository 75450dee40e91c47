"""HTTP connections that cannot be held open by a client that stops sending.

uvicorn closes a connection idle *between* requests (`timeout_keep_alive`), but not one that opened
and sent nothing, sent part of its headers, or stopped in the middle of its body: each would hold a
socket (and a request task) forever, and make SIGTERM wait for them. This protocol drops such a
connection after `read_timeout` seconds without a byte (its headers within `read_timeout` of their first
byte), and on shutdown at once; one whose answer waits that long for the client to read any of it is
dropped too (uvicorn would keep the answer in memory for as long). uvicorn's httptools
parser also keeps a request line and headers, and a chunked body's trailers, of any size in memory (a client
sending header lines without end grows the server by as much): past MAX_HEAD_BYTES of them (and of chunk
framing, beyond an eighth of the body) it answers 431 and closes (past the head: closes).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from model_code.errors import ClientError

MAX_HEAD_BYTES = 64 * 1024  # a request line and headers: SageMaker's own are under 2 kB, a bearer token under 1 kB
HEAD_TOO_LARGE = json.dumps(
    ClientError(f"the request line and headers are over {MAX_HEAD_BYTES} bytes", field="headers", status=431).to_dict()
).encode()


class StallGuardProtocol(HttpToolsProtocol):
    read_timeout = 20.0  # set per server by `guarded_protocol`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_client = True  # a request (or its rest) is still expected from the client
        self._stall: asyncio.TimerHandle | None = None
        self._unread: asyncio.TimerHandle | None = None  # armed while an answer waits for the client to read it
        self._in_head = False  # between a request's first byte and the end of its headers
        self._begun = self._ended = 0  # requests begun and ended on this connection
        self._body_bytes = 0  # of the request in progress, as the parser hands its body over
        self._other_bytes = 0  # of it that are not body: its head, chunk framing, trailers

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        begun, ended, body, in_head = self._begun, self._ended, self._body_bytes, self._in_head
        super().data_received(data)
        if self.transport.is_closing():
            return
        fresh = self._begun > begun  # a request began in this chunk (and may have ended in it too)
        if self._begun - begun <= 1 and self._ended - ended <= 1 and not (fresh and begun > ended):  # one request's
            self._other_bytes += len(data) - (self._body_bytes - (0 if fresh else body))
            if self._other_bytes > MAX_HEAD_BYTES + self._body_bytes // 8:  # framing: a few bytes a chunk
                if in_head or fresh:
                    self._refuse_head()
                else:
                    self._drop("chunk framing and trailers")
                return
        if self._begun == self._ended:  # between requests: blank lines, which the parser skips
            answering = self.cycle is not None and not self.cycle.response_complete
            if not answering and self._stall is None:  # they stop uvicorn's keep-alive timer: a deadline of ours
                self._awaiting_client = True
                self._arm()
            return  # not re-armed by more of them
        if self._in_head:
            return  # not re-armed: the head's deadline runs from its first byte, a trickle cannot stretch it
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_client = True
        self._in_head, self._begun = True, self._begun + 1
        self._body_bytes = self._other_bytes = 0
        self._arm()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def pause_writing(self) -> None:
        """The answer waits in the transport's buffer for the client to read it: a client that takes none of it
        for `read_timeout` seconds is dropped, and the answer's memory with it (one that reads slowly is not)."""
        super().pause_writing()
        self._watch_unread()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._disarm_unread()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._ended += 1
        super().on_message_complete()
        self._awaiting_client = False  # the app has the whole request; idle time is uvicorn's keep-alive
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_unread()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self._awaiting_client and not self.transport.is_closing():
            self.transport.close()  # nothing in flight can be answered before its request arrives
            return
        super().shutdown()

    def _arm(self) -> None:
        self._disarm()
        if self._awaiting_client and not self.transport.is_closing():
            self._stall = self.loop.call_later(self.read_timeout, self._stalled)

    def _disarm(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _drop(self, what: str) -> None:
        """Past its head, the app may be answering: no 431 can be written, the connection is closed."""
        self.logger.info("closing a connection whose %s passed %d bytes", what, MAX_HEAD_BYTES)
        self.transport.abort()

    def _refuse_head(self) -> None:
        self.logger.info("closing a connection whose request line and headers passed %d bytes", MAX_HEAD_BYTES)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app may have it already (its head ended in this chunk): no answer
        head = (
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            f"content-length: {len(HEAD_TOO_LARGE)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + HEAD_TOO_LARGE)
        self.transport.close()

    def _disarm_unread(self) -> None:
        if self._unread is not None:
            self._unread.cancel()
            self._unread = None

    def _watch_unread(self) -> None:
        self._disarm_unread()
        self._unread = self.loop.call_later(self.read_timeout, self._not_reading, self._untaken())

    def _untaken(self) -> int:
        """Bytes of the answer the client has not taken: the transport's buffer and the kernel's send queue
        (Linux: SIOCOUTQ, sent but unacknowledged included), which holds megabytes before the transport's shrinks:
        a client reading 16 kB/s empties it for minutes while the transport's buffer stands still."""
        sock = self.transport.get_extra_info("socket")
        return self.transport.get_write_buffer_size() + (kernel_unsent(sock.fileno()) if sock is not None else 0)

    def _not_reading(self, untaken: int) -> None:
        """Dropped only if the client took nothing of what was waiting: a slow link keeps going."""
        self._unread = None  # closing or not: close() waits for the client to take the answer (after Connection: close)
        if self._untaken() < untaken:
            self._watch_unread()
            return
        self.logger.info("dropping a connection that read none of its answer for %.0f s", self.read_timeout)
        self.transport.abort()  # close() would wait for the buffer to drain, which this client does not do

    def _stalled(self) -> None:
        if self._awaiting_client and not self.transport.is_closing():
            self.logger.info("closing a connection that sent nothing for %.0f s mid-request", self.read_timeout)
            self.transport.close()


def kernel_unsent(fd: int) -> int:
    """The bytes in a socket's kernel send queue (SIOCOUTQ, Linux's TIOCOUTQ); 0 where it cannot be asked."""
    try:
        import fcntl
        import termios

        return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0])
    except (ImportError, AttributeError, OSError, ValueError):
        return 0


def guarded_protocol(read_timeout: float) -> type[StallGuardProtocol]:
    """The protocol class for uvicorn's `http=` option, with this server's read timeout."""
    return type("StallGuard", (StallGuardProtocol,), {"read_timeout": read_timeout})


async def disconnected(request: Request) -> None:
    """Returns once the client of `request` has gone away (its body already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


DRAIN_STALL_S = 1.0  # a refused body is drained while the client keeps sending (it may wait for the answer)


def awaits_continue(request: Request) -> bool:
    """The client sent `Expect: 100-continue`: it sends its body only once told to (the app's first read)."""
    return request.headers.get("expect", "").lower() == "100-continue"


async def drain(request: Request, limit: int, waiting: bool) -> None:
    """Read and discard what the client still sends of a refused body, up to `limit` bytes while it keeps
    sending, so that clients that send the whole body before reading (urllib, requests) read the refusal
    rather than a reset connection; nothing when it is `waiting` for 100 Continue (it sends no body then)."""
    if waiting:
        return
    left = limit
    try:
        while left > 0:
            message = await asyncio.wait_for(request.receive(), DRAIN_STALL_S)
            left -= len(message.get("body", b""))
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return
    except TimeoutError:
        return


async def limited_body(request: Request, limit: int, setting: str, drain_bytes: int) -> AsyncIterator[bytes]:
    """The body's chunks; a body over `limit` bytes (declared, before any is read, or sent) is a 413 naming
    `setting`, raised once what the client still sends of it is drained (up to `drain_bytes`), so that a
    client that sends everything before reading reads the 413 rather than a reset connection."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        await drain(request, drain_bytes, awaits_continue(request))
        raise too_large(int(declared), limit, setting)
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            await drain(request, drain_bytes, waiting=False)
            raise too_large(size, limit, setting)
        yield chunk
        if not message.get("more_body", False):
            return


def too_large(size: int, limit: int, setting: str) -> ClientError:
    return ClientError(
        f"body of {size} bytes or more is over the limit of {limit} bytes ({setting})", field="body", status=413
    )

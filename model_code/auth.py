"""Optional bearer-token authentication for on-premise use (settings.Auth says how it is configured).

With a token configured, every request but /ping (and what AUTH_OPEN leaves open) must carry
`Authorization: Bearer <token>`; the token is compared in constant time with every configured one, and
a request without a valid one gets 401 in the layout of every other error, with `WWW-Authenticate`.
Tokens are never logged. On SageMaker the setting is ignored: IAM guards InvokeEndpoint, and the
runtime forwards no Authorization header to the container.
"""

from __future__ import annotations

import hmac
import logging
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from model_code import inference
from model_code.errors import ClientError
from model_code.records import JSON
from model_code.settings import Auth, SettingsError, read_tokens

log = logging.getLogger("optimus.auth")

ALWAYS_OPEN = ("/ping",)  # health checks carry no credentials
OPENABLE = {"metrics": ("/metrics",)}  # plus "docs": the documentation paths, given by the server
BEARER = "bearerAuth"
LOOPBACK = "127.0.0.1"
LOCAL_HOSTS = (LOOPBACK, "localhost", "::1")  # a server listening only here is reached from this machine alone


class Tokens:
    """The accepted tokens: AUTH_TOKENS, and AUTH_TOKENS_FILE re-read whenever it changes.

    A file that becomes unreadable, empty or malformed contributes no token (fail closed) until fixed;
    replace it atomically (write a new file, then rename it over the old one).
    """

    def __init__(self, auth: Auth):
        self.fixed = [token.encode() for token in auth.tokens]
        self.path = auth.tokens_file
        self._seen: tuple[int, int, int] | None = None
        self._read = False
        self._from_file: list[bytes] = []

    def current(self) -> list[bytes]:
        if self.path is None:
            return self.fixed
        self._refresh(self.path)  # a stat per request: small beside decoding a tile
        return self.fixed + self._from_file

    def _refresh(self, path: Path) -> None:
        try:
            stat = os.stat(path)
            seen: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except OSError:
            seen = None
        if self._read and seen == self._seen:
            return
        self._seen, self._read = seen, True
        try:
            self._from_file = [token.encode() for token in read_tokens(path)]
            log.info("read %d token(s) from %s", len(self._from_file), path)
        except SettingsError as exc:  # the message names the file and the reason, never a token
            self._from_file = []
            log.error("%s: its tokens are refused until it is fixed", exc)


def matches(presented: bytes, tokens: Sequence[bytes]) -> bool:
    """Whether `presented` is one of `tokens`, in time independent of where they differ (every one compared)."""
    return any([hmac.compare_digest(presented, token) for token in tokens])  # a list: no early exit


class BearerAuth:
    """ASGI middleware refusing requests without a valid bearer token, except under `open_paths`."""

    def __init__(self, app: ASGIApp, tokens: Tokens, open_paths: Sequence[str]):
        self.app = app
        self.tokens = tokens
        self.open_paths = tuple(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_under(scope["path"], self.open_paths):
            await self.app(scope, receive, send)
            return
        headers = [value for name, value in scope["headers"] if name == b"authorization"]
        refusal = self._refusal(headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        reason, challenge = refusal
        body = inference.dumps(ClientError(reason, field="authorization", status=401).to_dict())
        await Response(body, 401, {"WWW-Authenticate": challenge}, media_type=JSON)(scope, receive, send)

    def _refusal(self, headers: list[bytes]) -> tuple[str, str] | None:
        """None for one valid token; else the reason and the WWW-Authenticate challenge (RFC 6750)."""
        realm = 'Bearer realm="optimus"'
        if not headers:
            return "this server needs a token: send 'Authorization: Bearer <token>'", realm
        if len(headers) > 1:
            return "send one Authorization header", f'{realm}, error="invalid_request"'
        header = headers[0]
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return "must be 'Bearer <token>'", f'{realm}, error="invalid_request"'
        if not matches(token.strip(), self.tokens.current()):
            return "the token is not valid", f'{realm}, error="invalid_token"'
        return None


def is_under(path: str, prefixes: Sequence[str]) -> bool:
    """Whether `path` is one of `prefixes` or below one; a path with `.`, `..` or empty segments never is
    (`/ping/../metrics` must not pass as under /ping, whatever a router or proxy later makes of it)."""
    if posixpath.normpath(path) != path and path != "/":
        return False
    return any(path == prefix or path.startswith(prefix.rstrip("/") + "/") for prefix in prefixes)


def protect(app: FastAPI, auth: Auth, docs_paths: Sequence[str], host: str = LOOPBACK) -> None:
    """Add bearer authentication to `app` when configured (and not on SageMaker); one log line either way.

    Without tokens the server stays open (the container binds every interface, as SageMaker and a published
    port need); where it listens beyond this machine, a warning says who can reach it and how to close it."""
    if not auth.configured:
        if not auth.sagemaker and host not in LOCAL_HOSTS:
            log.warning(
                "no AUTH_TOKENS or AUTH_TOKENS_FILE: every route on %s is open to anyone who can reach this port; "
                "set AUTH_TOKENS (docs/security.md), or SERVER_HOST=127.0.0.1 for this machine only",
                host,
            )
        return
    if auth.sagemaker:
        log.warning("AUTH_TOKENS / AUTH_TOKENS_FILE ignored on SageMaker: IAM guards InvokeEndpoint")
        return
    openable = {**OPENABLE, "docs": tuple(docs_paths)}
    open_paths = ALWAYS_OPEN + tuple(path for name in sorted(auth.open) for path in openable[name])
    tokens = Tokens(auth)
    count = len(tokens.current())
    app.add_middleware(BearerAuth, tokens=tokens, open_paths=open_paths)
    declare_bearer(app, open_paths)
    log.info("bearer-token authentication on: %d token(s); open without one: %s", count, ", ".join(open_paths))


def declare_bearer(app: FastAPI, open_paths: Sequence[str]) -> None:
    """Declare the bearer scheme in the OpenAPI schema: /docs then offers an Authorize button whose token
    its "Try it out" calls send; operations under `open_paths` are marked as needing none."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain()
            schema.setdefault("components", {})["securitySchemes"] = {BEARER: {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{BEARER: []}]
            for path, operations in schema.get("paths", {}).items():
                if is_under(path, open_paths):
                    for operation in operations.values():
                        operation["security"] = []
        return app.openapi_schema  # type: ignore[return-value]  # set by `plain`

    app.openapi = openapi  # type: ignore[method-assign]

"""Bearer tokens as the auth tests configure and send them, and a server asking for them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from model_code.settings import Auth, Settings
from tests.support.serving import Running, free_port, serve_in_thread

TOKEN_A = "a" * 20 + "-first-token"
TOKEN_B = "b" * 20 + "-second-token"
TOKEN_FILE = "f" * 20 + "-file-token"
WRONG = "w" * 20 + "-wrong-token"


@contextlib.contextmanager
def serve_with_auth(artifact: Path, auth_settings: Auth) -> Iterator[Running]:
    settings = Settings(model_dir=artifact, port=free_port(), decode_workers=1, auth=auth_settings)
    with serve_in_thread(settings) as running:
        yield running


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}

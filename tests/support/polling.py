"""Waiting for something that happens on its own time (a server's thread, a cleanup), without fixed sleeps."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], what: str, timeout_s: float = 10.0, every_s: float = 0.02) -> T:
    """`check()`'s first truthy value, polled until `timeout_s`; an AssertionError naming `what` if none came.
    Exceptions from `check` count as "not yet" (a server still starting refuses connections)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            if value := check():
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        threading.Event().wait(every_s)

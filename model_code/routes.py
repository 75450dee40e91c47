"""What a REST route (`/api/embed/{model}`, ...) says of a request: its model and mode, which the request's own
(a record's `model_name` and `mode`, a slide's `model` and `mode` options) may leave out but not contradict."""

from __future__ import annotations

from collections.abc import Mapping

from model_code.catalogue import canonical_name
from model_code.errors import ClientError


def check_route(sent: Mapping[str, object], route: Mapping[str, str]) -> None:
    """A 400 on the first field of `route` that `sent` gives otherwise; a model agrees under any of its names."""
    for field, value in route.items():
        given = sent.get(field)
        if given is not None and _named(given) != _named(value):
            raise ClientError(f"'{given}' contradicts '{value}' in the route", field=field)


def _named(value: object) -> object:
    """A model's catalogue name for any of its names; anything else (a mode, an unknown name) as it is."""
    return (canonical_name(value) or value) if isinstance(value, str) else value

"""Every field of the wire record, sent as every JSON type, over real HTTP: a 200 or a 400 naming that field,
never a 500 (was: `"mode": ["embedding"]` or `{}` crashed the answer-size pre-check with `unhashable type`).
And the pre-check counts metadata answers at their real size before any answer is built."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
import pytest

from kit.endpoints.samples import wire_record
from model_code.errors import ClientError
from model_code.inference import Models, parse_request
from model_code.records import WireRecord
from model_code.settings import Limits
from tests.support.serving import Running

VALUES: list[Any] = [None, True, False, 0, -1, 2**70, 1.5, -0.0, "", "embedding", "h1", [], ["embedding"], [1.5], {}]
VALUES += [{"mode": "embedding"}, [[]], "\u0000", "x" * 10_000]
FIELDS = list(WireRecord.model_fields)


def answer(running: Running, record: dict[str, Any], path: str = "/invocations") -> httpx.Response:
    return httpx.post(f"{running.url}{path}", content=json.dumps(record), timeout=60)  # orjson stops at 64 bits


@pytest.mark.parametrize("field", FIELDS)
def test_every_json_type_in_every_field_is_a_200_or_a_400_naming_it(running: Running, field: str) -> None:
    base = wire_record("h1", "embedding")
    for value in VALUES:
        got = answer(running, {**base, field: value})
        assert got.status_code in (200, 400), (field, value, got.status_code, got.text[:300])
        if got.status_code == 400:
            assert got.json()["field"].split(".")[0] == field, (field, value, got.text[:300])
    missing = answer(running, {name: v for name, v in base.items() if name != field})
    assert missing.status_code in (200, 400), (field, missing.text[:300])


@pytest.mark.parametrize("mode", [["embedding"], {}, {"a": 1}, 1, 1.5, True, None, [], "bogus"])
def test_mode_of_any_json_type_is_a_400_naming_mode(running: Running, mode: Any) -> None:
    got = answer(running, {**wire_record("h1", "embedding"), "mode": mode})
    assert (got.status_code, got.json()["field"]) == (400, "mode"), got.text[:300]
    routed = answer(running, {**wire_record("h1", "embedding"), "mode": mode}, "/api/embed/h1")
    if mode is None:  # null is "not sent": the route's mode fills it in
        assert routed.status_code == 200, routed.text[:300]
    else:
        assert (routed.status_code, routed.json()["field"]) == (400, "mode"), routed.text[:300]
    listed = httpx.post(f"{running.url}/invocations", json=[{**wire_record("h1", "embedding"), "mode": mode}] * 2)
    assert listed.status_code == 200 and [entry["field"] for entry in listed.json()] == ["mode", "mode"]


def test_metadata_answers_are_counted_before_any_is_built(models: Models) -> None:
    """100 M-Optimus metadata records (4.5 kB) would answer 45.7 MB: refused by the pre-check, at their real size."""
    records = orjson.dumps([{"model_name": "m-optimus", "mode": "metadata"}] * 100)
    each = models.metadata_bytes["m-optimus"]
    assert each > 400_000  # its 25,376 gene IDs
    limits = Limits(max_response_bytes=each * 99)
    with pytest.raises(ClientError) as refused:
        parse_request(records, "application/json", None, limits=limits, models=models)
    assert refused.value.status_code == 413 and f"at least {each * 100} bytes" in refused.value.reason
    assert len(
        parse_request(
            records, "application/json", None, limits=Limits(max_response_bytes=each * 100), models=models
        ).records
    )
    # Without the loaded models (input_fn under AWS's toolkit), each gene is counted at its shortest name.
    with pytest.raises(ClientError, match=r"at least 10150400 bytes"):
        parse_request(records, "application/json", None, limits=Limits(max_response_bytes=10_000_000))


def test_the_server_refuses_a_metadata_list_before_building_it(running: Running) -> None:
    """Over real HTTP: the pre-check's reason ("take at least"), not the writer's ("the answer is over")."""
    each = running.server.models.metadata_bytes["m-optimus"]  # type: ignore[union-attr]
    records = [{"model_name": "m-optimus", "mode": "metadata"}] * (
        running.server.settings.limits.max_response_bytes // each + 1
    )
    got = httpx.post(f"{running.url}/invocations", json=records, timeout=60)
    assert got.status_code == 413 and "take at least" in got.json()["reason"], got.text[:300]

"""Slides as the tests send them to the real server, and the answers they expect: posting a slide, the tile
API's features for the same tiles, a refusal naming its field, a slide held in its tissue pass; slides with
damaged JPEG tiles, OpenSlide's own DICOM fixture."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile

from kit.endpoints.checks import SAME_ATOL, SAME_RTOL
from kit.endpoints.samples import wire_record
from model_code.slides import job
from tests.support.images import png_bytes
from tests.support.serving import Running

ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
TILE = 256  # the generated slides' JPEG tiles
OPENSLIDE = Path(__file__).resolve().parents[1] / "fixtures" / "openslide"
DICOM = [OPENSLIDE / "boxes_0.dcm", OPENSLIDE / "boxes_1.dcm"]  # a two-instance series, one slide


def post_slide(
    running: Running, body: bytes, attributes: str, content_type: str = "image/tiff", **query: str
) -> httpx.Response:
    headers = {"content-type": content_type, ATTRIBUTES: attributes}
    return httpx.post(f"{running.url}/invocations", content=body, headers=headers, params=query, timeout=120)


def tile_api(running: Running, tiles: list[np.ndarray], model: str = "h1") -> np.ndarray:
    records = [wire_record(model, "embedding", png_bytes(tile)) for tile in tiles]
    answer = httpx.post(f"{running.url}/invocations", json=records, timeout=60)
    assert answer.status_code == 200, answer.text
    return np.array([entry["output"] for entry in answer.json()])


def assert_same_features(got: np.ndarray, expected: np.ndarray) -> None:
    """Within the smoke test's tolerance relative to the features' scale (the demo model's are about 1e-4),
    and the tolerance tells tiles apart: another tile's features are outside it."""
    atol = SAME_ATOL * float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=SAME_RTOL, atol=atol)
    if len(expected) > 1:
        assert not np.allclose(got[1:], expected[:-1], rtol=SAME_RTOL, atol=atol), "tiles are indistinguishable"


def refused(answer: httpx.Response, field: str, status: int = 400) -> str:
    """The reason of a refusal with this status naming this field."""
    assert (answer.status_code, answer.json()["field"]) == (status, field), answer.text
    return str(answer.json()["reason"])


def hold_tissue_pass(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Slides stop once their tissue is being found, until the event is set."""
    release = threading.Event()
    plain = job.tissue.tissue_mask

    def waiting(*args: object, **kwargs: object) -> object:
        assert release.wait(60), "never released"
        return plain(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(job.tissue, "tissue_mask", waiting)
    return release


def damaged(slide: Path, out: Path, tiles: list[int]) -> Path:
    """A copy of `slide` whose level-0 JPEG tiles `tiles` carry an invalid marker."""
    data = bytearray(slide.read_bytes())
    with tifffile.TiffFile(slide) as tiff:
        offsets = tiff.pages.first.dataoffsets
        for index in tiles:
            at = int(offsets[index])
            assert data[at : at + 3] == b"\xff\xd8\xff"
            data[at + 3] = 0x01
    out.write_bytes(bytes(data))
    return out


def tile_index(x: int, y: int, width: int) -> int:
    """The level-0 JPEG tile holding pixel (x, y) of a generated slide `width` pixels wide."""
    return (y // TILE) * -(-width // TILE) + x // TILE

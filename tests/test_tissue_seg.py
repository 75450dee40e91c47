"""The demo tissue-seg finds tissue on real H&E, through the packaged program and the real runner."""

from __future__ import annotations

import numpy as np
import orjson

from kit.endpoints.samples import sample_png, wire_record
from model_code.inference import Models, input_fn, predict_fn
from tests.support.images import png_bytes


def _mask(models: Models, png: bytes) -> np.ndarray:
    batch = predict_fn(input_fn(orjson.dumps(wire_record("tissue-seg", "prediction", png)), "application/json"), models)
    assert batch.results is not None and isinstance(batch.results[0], dict)
    return np.asarray(batch.results[0]["output"]).reshape(512, 512)


def test_finds_the_tissue_of_a_real_he_thumbnail(models: Models) -> None:
    mask = _mask(models, sample_png(512))
    # The sample (8 um/px) has tissue along its right and bottom edges and bare glass at the top left.
    assert 0.2 < mask.mean() < 0.35
    assert mask[:200, :300].mean() < 0.01
    assert mask[150:300, 450:].mean() > 0.9 and mask[470:, 150:500].mean() > 0.9


def test_blank_glass_and_grey_dust_are_not_tissue(models: Models) -> None:
    glass = np.full((512, 512, 3), 242, dtype=np.uint8)
    glass[100:140, 100:140] = 90  # a grey speck of dust
    assert _mask(models, png_bytes(glass)).sum() == 0

"""A PNG tile's pixels by Pillow's decoder and by the server's (`records.png_pixels`, libpng), side by side
on the sample h1 tile, alternating rounds; the two must give the same pixels.

    python -m bench.tile_decode [--tiles 300] [--json build/bench/tile_decode.json]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pybase64
from PIL import Image

from bench import write_figures
from kit.endpoints.samples import wire_record
from model_code.records import png_pixels


def pillow(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def libpng(data: bytes) -> np.ndarray:
    pixels = png_pixels(data)
    assert pixels is not None
    return pixels


def cpu_ms(decode: Callable[[bytes], np.ndarray], data: bytes, tiles: int) -> float:
    decode(data)
    began = time.process_time()
    for _ in range(tiles):
        decode(data)
    return round((time.process_time() - began) / tiles * 1000, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=300)
    parser.add_argument("--json", type=Path, default=Path("build/bench/tile_decode.json"))
    args = parser.parse_args(argv)
    data = pybase64.b64decode(wire_record("h1", "embedding")["image_data"])
    assert np.array_equal(pillow(data), libpng(data)), "the decoders disagree"
    figures: dict[str, Any] = {"png_bytes": len(data)}
    for round_ in (1, 2, 3):
        for name, decode in (("pillow", pillow), ("libpng", libpng)):
            figures[f"{name}_{round_}"] = {"cpu_ms_per_tile": cpu_ms(decode, data, args.tiles)}
    for round_ in (1, 2, 3):
        ratio = figures[f"pillow_{round_}"]["cpu_ms_per_tile"] / figures[f"libpng_{round_}"]["cpu_ms_per_tile"]
        figures[f"ratio_{round_}"] = round(ratio, 2)
        print(
            f"round {round_}: Pillow {figures[f'pillow_{round_}']['cpu_ms_per_tile']} ms, "
            f"libpng {figures[f'libpng_{round_}']['cpu_ms_per_tile']} ms of CPU a tile: Pillow / libpng {ratio:.2f}x"
        )
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

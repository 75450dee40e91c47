"""A simulated accelerator for benchmarks and tests, injected into the kit's server through `ForwardHooks`.

`python -m bench.simulated_device [--forward-ms A,B] [--poison-slide NAME] SERVE-ARGS...` runs
`python -m model_code.serve SERVE-ARGS...` with every forward pass lasting A + B x tiles ms, as the device's
time for it: the pass waits (the GIL released, as during a GPU call) whatever of that the demo model's real
forward on the CPU, which stands in for the device's work and gives the answers, has not already taken. A
pass whose real forward takes longer lasts as long as that. Every pass that holds a tile of slide NAME
fails, as a device error would (the soak test's poison tile). The production server has neither knob.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from model_code.records import Record
from model_code.runners import ForwardHooks


@dataclass(frozen=True)
class SimulatedDevice:
    forward_ms: tuple[float, float] | None = None  # A, B: each pass lasts A + B x tiles ms on the device
    poison_slide: str | None = None  # a pass holding a tile of this slide fails

    def hooks(self) -> ForwardHooks:
        return ForwardHooks(after=self.after)

    def wait_s(self, tiles: int, spent_s: float) -> float:
        """What a pass of `tiles` still waits after its real forward took `spent_s`."""
        if self.forward_ms is None:
            return 0.0
        return max(0.0, (self.forward_ms[0] + self.forward_ms[1] * tiles) / 1000 - spent_s)

    def after(self, model: str, records: Sequence[Record], seconds: float) -> None:
        time.sleep(self.wait_s(len(records), seconds))
        if self.poison_slide is not None and any(r.echo.get("slide_name") == self.poison_slide for r in records):
            raise RuntimeError(f"simulated device failure on a tile of slide '{self.poison_slide}'")


def forward_ms(raw: str) -> tuple[float, float]:
    """`A,B` as two numbers of milliseconds."""
    try:
        fixed, per_tile = (float(part) for part in raw.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} must be two numbers of milliseconds, A,B") from None
    return fixed, per_tile


def main(argv: list[str] | None = None) -> int:
    from model_code import serve  # torch, only once the arguments are good

    parser = argparse.ArgumentParser(prog="python -m bench.simulated_device", description=__doc__)
    parser.add_argument("--forward-ms", type=forward_ms, help="A,B: each pass lasts A + B x tiles ms")
    parser.add_argument("--poison-slide", help="every pass holding a tile of this slide_name fails")
    args, rest = parser.parse_known_args(argv)
    return serve.main(rest, SimulatedDevice(args.forward_ms, args.poison_slide).hooks())


if __name__ == "__main__":
    sys.exit(main())

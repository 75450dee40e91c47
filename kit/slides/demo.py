"""The demo's slide step: a small pyramidal SVS made from the real H&E samples, through a running server's
slide path with `kit slides run`'s code, and a picture of what came back."""

from __future__ import annotations

from pathlib import Path

from kit.slides.picture import features_picture
from kit.slides.run import HttpTransport, Outcome, plan_outputs, run_slides
from kit.slides.synthetic import make_slide

DEMO_SLIDE_UM = (2800.0, 2000.0)  # 5600 x 4000 pixels at 0.5 um/px
DEMO_ORIGIN = (160, 262)  # where on the 8 um/px sample thumbnail: its tissue edge, right and bottom


def slide_demo(workdir: Path, endpoint_url: str, model: str = "h1") -> tuple[Outcome, Path | None]:
    """Generate the slide, run it, draw the picture (None when the slide failed)."""
    slide = make_slide(workdir / "demo-slide.svs", 0.5, DEMO_SLIDE_UM, DEMO_ORIGIN)
    out = workdir / "features"
    jobs = plan_outputs([(slide, slide.name)], out, "h5")
    (outcome,) = run_slides(jobs, HttpTransport(endpoint_url, 600), f"model={model};dtype=float32", overwrite=True)
    if outcome.status != "done":
        return outcome, None
    return outcome, features_picture(slide, out / "demo-slide.h5", workdir / "demo-slide.png")

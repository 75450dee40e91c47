"""An artifact's code/ folder, for AWS's own PyTorch serving image (`kit package --with-code`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from kit import REPO

MODEL_CODE = REPO / "model_code"
# What the handler imports beyond what AWS's image has (torch, numpy):
HANDLER_PACKAGES = {"timm", "safetensors", "pillow", "imagecodecs", "pydantic", "orjson", "pybase64"}


def add_code(model_dir: Path) -> list[str]:
    """code/model_code/ and code/requirements.txt: what AWS's PyTorch serving image needs to run our
    handler unchanged (it puts code/ on sys.path; set SAGEMAKER_PROGRAM=model_code.inference). The
    requirements are the handler's imports beyond torch, pinned as in our image."""
    code = model_dir / "code"
    written = []
    for source in sorted(MODEL_CODE.glob("*.py")):
        target = code / "model_code" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written.append(str(target.relative_to(model_dir)))
    pins = (REPO / "container" / "requirements.txt").read_text().splitlines()
    needed = [pin for pin in pins if pin.split("==")[0] in HANDLER_PACKAGES]
    (code / "requirements.txt").write_text("\n".join(needed) + "\n")
    return [*written, "code/requirements.txt"]

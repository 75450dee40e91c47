"""The CDK app's context as the stack tests give it: cdk.json's, with two endpoints on demo artifacts."""

from __future__ import annotations

import json
from typing import Any

from tests.support.paths import REPO


def context(artifacts: dict[str, str], **overrides: Any) -> dict[str, Any]:
    """cdk.json's context with endpoints h1 and m on the artifacts `artifacts["H1"]` and `artifacts["M"]`,
    then `overrides`."""
    base = json.loads((REPO / "cdk.json").read_text())["context"]
    base["endpoints"] = {
        "h1": {"models": ["h1", "tissue-seg"], "artifact": artifacts["H1"]},
        "m": {"models": ["m-optimus", "tissue-seg"], "artifact": artifacts["M"]},
    }
    base.update(overrides)
    return base

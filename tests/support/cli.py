"""The kit's CLI run in a fresh interpreter, as an operator's shell runs it: which heavy modules it loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO

HEAVY = ("torch", "timm")
PROBE = f"""
import json, sys
from kit.__main__ import main
status = main(sys.argv[1:])
print(json.dumps({{"status": status, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def probe(args: list[str], tmp_path: Path) -> tuple[dict[str, object], str]:
    """Run the CLI in a fresh interpreter with no AWS configuration; its status and heavy modules loaded."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith("AWS_")
    } | {  # no credentials or region from this machine, and no instance metadata to wait for
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), done.stderr

"""Where the repository and the vendor's payloads are."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENDOR = REPO.parent / "shared" / "fixtures" / "vendor-payloads"

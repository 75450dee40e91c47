"""The soak and fault test (`make soak`), run briefly: its checks pass against the real server."""

from __future__ import annotations

from pathlib import Path

from bench.soak import growth, main


def test_a_short_soak_passes(tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    assert main(["--minutes", "0.15", "--clients", "4", "--workdir", str(tmp_path), "--json", str(report)]) == 0
    import json

    result = json.loads(report.read_text())
    assert result["requests"] > 50 and any(key.startswith("poison alone 503") for key in result["statuses"])


def test_growth_compares_the_last_quarter_with_the_second() -> None:
    rising = [{"rss_mb": float(i)} for i in range(100)]
    middle, last = growth(rising, "rss_mb")
    assert middle < 50 < last

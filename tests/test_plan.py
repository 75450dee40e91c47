"""`kit plan` and the cohort CSV: the estimates against hand-computed figures, the CSV's tiles, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kit.__main__ import main
from kit.cohorts.cohort import read_cohort
from kit.cohorts.plan import Inputs, plan

REPO = Path(__file__).resolve().parents[1]


def test_estimates_by_hand() -> None:
    # 100 slides x 36,000 tiles at 50 tiles/s = 20 instance-hours of work; 4 instances; 12 min starts
    inputs = Inputs(100, 3_600_000, 50, 4, 1, 0.8, 12, 6, 2.0)
    realtime, asynchronous, batch, job, spot = plan(inputs)
    assert realtime.wall_hours == pytest.approx(0.2 + 20 / 0.8 / 4)  # 6.45 h at 80% of capacity
    assert realtime.instance_hours == pytest.approx(4 * 6.45)
    assert realtime.standing_cost_per_month == pytest.approx(1 * 730 * 2.0)  # minInstances around the clock
    assert asynchronous.wall_hours == pytest.approx(0.2 + 5)
    assert asynchronous.instance_hours == pytest.approx(20 + 4 * (0.2 + 0.1))  # work + each start and cooldown
    assert asynchronous.cost == pytest.approx(21.2 * 2.0) and asynchronous.standing_cost_per_month == 0
    assert (batch.instances, batch.wall_hours, batch.instance_hours) == (4, pytest.approx(5.2), pytest.approx(20.8))
    # a job: each slide 36,000 / 50 = 720 s of forward passes + 5 s tissue-seg (its 1.7 GB copy at 200 MB/s,
    # 8.5 s, overlaps them); 100 slides over 4 instances, each started in 12 min
    assert job.wall_hours == pytest.approx(0.2 + 100 * 725 / 4 / 3600)
    assert job.instance_hours == pytest.approx(4 * job.wall_hours) and job.cost == pytest.approx(
        2.0 * job.instance_hours
    )
    assert spot.instance_hours == job.instance_hours and spot.cost == pytest.approx(0.3 * job.cost)


def test_a_job_waits_for_a_copy_slower_than_the_forward_passes_and_for_its_largest_slide() -> None:
    inputs = Inputs(2, 2000, 100, 4, 1, 0.7, 0, 0, 1.0, gb_per_slide=20, copy_mb_per_s=100)
    job, _ = plan(inputs)[3:]
    assert (job.instances, job.wall_hours) == (2, pytest.approx(200 / 3600))  # 20 GB at 100 MB/s, not 10 + 5 s
    from kit.cohorts.plan import job_estimates

    (one, _) = job_estimates([10.0, 10.0, 3600.0], inputs)
    assert one.instances == 3 and one.wall_hours == pytest.approx(1.0)  # the largest slide, not the mean


def test_async_uses_at_most_one_instance_per_slide() -> None:
    assert [r.instances for r in plan(Inputs(2, 20_000, 40, 4, 1, 0.7, 10, 10, None))] == [4, 2, 2, 2, 2]


def test_plan_prints_its_assumptions_with_separators_and_refuses_a_floor_over_the_ceiling(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plan", "--slides", "10000", "--tiles-per-slide", "20000", "--price-per-hour", "1.5"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the assumptions are wrapped
    assert "10,000 slides, 200,000,000 tiles" in out and "1,388.9 instance-hours" in out
    assert "takes 10 min to start" in out and "0.7 utilisation" in out and "730 h a month" in out
    assert "scaling in" in out and "spot saves 70%" in out and "$1,095.00" in out  # 1 idle instance a month
    assert main(["plan", "--slides", "2", "--tiles-per-slide", "9", "--min-instances", "5", "--instances", "4"]) == 2
    assert "--min-instances 5: from 0 to --instances (4)" in capsys.readouterr().err


def test_batch_uses_at_most_one_instance_per_slide_file_and_100() -> None:
    assert plan(Inputs(3, 30_000, 40, 10, 1, 0.7, 10, 10, None))[2].instances == 3
    assert plan(Inputs(5000, 10**8, 40, 500, 1, 0.7, 10, 10, None))[2].instances == 100


def test_cohort_csv_tiles_column_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a.svs", "b.svs"):
        (tmp_path / name).write_bytes(b"x")
    cohort = tmp_path / "cohort.csv"
    cohort.write_text("slide,slide_id,tiles\na.svs,,1000\ns3://bucket/x/b-2.svs,,\n")
    status = main(["plan", "--cohort", str(cohort), "--tiles-per-slide", "3000", "--json", str(tmp_path / "p.json")])
    assert status == 0
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["inputs"]["slides"] == 2 and report["inputs"]["tiles"] == 4000
    assert report["inputs"]["tiles_per_second"] == 40  # stacks/config.py's default
    assert [p["path"] for p in report["paths"]] == [
        "real-time", "async", "batch transform", "training job", "training job, spot"
    ]  # fmt: skip
    assert "give --price-per-hour" in capsys.readouterr().out
    assert main(["plan", "--cohort", str(cohort)]) == 2  # b-2 has no tiles and no --tiles-per-slide
    assert [s.slide_id for s in read_cohort(cohort)] == ["a", "b-2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path\na.svs\n", "columns must be"),
        ("slide\nmissing.svs\n", "cohort.csv:2: slide 'missing.svs': no such file"),
        ("slide\ns3://My_Bucket/a.svs\n", "cohort.csv:2: slide 's3://My_Bucket/a.svs' is not s3://BUCKET/KEY"),
        ("slide,slide_id\na.svs,x\na.svs,x\n", "cohort.csv:3: slide_id 'x' appears twice"),
        ("slide,slide_id\na.svs,a b\n", "slide_id 'a b'"),
        ("slide,tiles\na.svs,many\n", "tiles 'many' is not a whole number"),
        ("slide,bulk_rna\na.svs,rna.json\n", "bulk_rna 'rna.json': no such file"),
        ("slide\n", "no slides"),
    ],
)
def test_cohort_errors_name_the_line(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.svs").write_bytes(b"x")
    (tmp_path / "cohort.csv").write_text(text)
    assert main(["plan", "--cohort", str(tmp_path / "cohort.csv"), "--tiles-per-slide", "1"]) == 2
    assert message in capsys.readouterr().err


def test_plan_is_torch_free() -> None:
    code = "import sys; from kit.__main__ import main; main(['plan', '--slides', '2', '--tiles-per-slide', '9']); "
    code += "assert 'torch' not in sys.modules and 'boto3' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True)

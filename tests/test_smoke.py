"""python -m kit smoke against the real local server: passes, fails on what it must, writes CI reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

from kit.__main__ import main
from kit.endpoints.checks import smoke
from tests.support.paths import REPO
from tests.support.serving import Running


def test_smoke_passes_on_a_healthy_endpoint(running: Running) -> None:
    report = smoke(
        {"optimus-local": ["h1", "m-optimus", "tissue-seg"]}, endpoint_url=running.url, requests=5, region="us-east-1"
    )
    assert report.passed, report.text()
    names = {(c.model, c.name) for c in report.checks}
    assert ("m-optimus", "mode prediction_with_embedding") in names and ("tissue-seg", "mode prediction") in names
    assert {("h1", "metadata"), ("h1", "same tile twice, same output"), ("h1", "latency over 5 requests")} <= names
    figures = report.latency_ms["optimus-local/h1/embedding"]
    assert 0 < figures["p50"] <= figures["p95"] and figures["n"] == 5


def test_a_model_the_endpoint_does_not_host_fails(running: Running) -> None:
    report = smoke({"optimus-local": ["h1", "h0"]}, endpoint_url=running.url, requests=2, region="us-east-1")
    assert not report.passed
    failed = [c for c in report.checks if not c.passed]
    assert [(c.model, c.name) for c in failed] == [("h0", "metadata")]
    assert "404" in failed[0].detail and "not hosted" in failed[0].detail


def test_cli_writes_json_and_junit_and_exits_by_result(running: Running, tmp_path: Path) -> None:
    args = [
        "smoke",
        "--endpoint",
        "optimus-local",
        "--endpoint-url",
        running.url,
        "--region",
        "us-east-1",
        "--requests",
        "3",
    ]
    good = main(
        [*args, "--models", "h1,tissue-seg", "--json", str(tmp_path / "a.json"), "--junit-xml", str(tmp_path / "a.xml")]
    )
    assert good == 0
    assert json.loads((tmp_path / "a.json").read_text())["passed"] is True
    suite = ElementTree.parse(tmp_path / "a.xml").getroot()
    assert suite.get("tests") == "8" and suite.get("failures") == "0"
    bad = main([*args, "--models", "h1,m-optimus,h0", "--junit-xml", str(tmp_path / "b.xml")])
    assert bad == 1
    suite = ElementTree.parse(tmp_path / "b.xml").getroot()
    failures = [case.get("classname") for case in suite.iter("testcase") if case.find("failure") is not None]
    assert failures == ["optimus-local.h0"]


def test_cli_needs_endpoints_to_check(capsys) -> None:
    assert main(["smoke"]) == 2
    assert "give --stack NAME, or --endpoint NAME with --models" in capsys.readouterr().err
    assert main(["smoke", "--endpoint", "x"]) == 2


def test_make_demo_runs_the_whole_path_offline(tmp_path: Path) -> None:
    """What `make demo` runs: package, serve both vendor packages, smoke them through boto3, synthesize."""
    done = subprocess.run(
        [sys.executable, "-m", "kit", "demo", "--workdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "H1: 8/8 checks passed" in done.stdout and "M: 10/10 checks passed" in done.stdout
    assert "cdk-nag (AwsSolutions, HIPAA) and cfn-lint clean" in done.stdout
    assert (tmp_path / "cdk.out" / "OptimusEndpoints.template.json").is_file()

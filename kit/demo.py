"""`python -m kit demo` (`make demo`): the whole path offline, on a CPU, in a few minutes.

Packages the demo models of the vendor's two packages, starts the real server for each on a local
port, runs the smoke test against both through boto3 and a generated whole slide through H1's slide
path (a picture of its features), synthesizes the CDK stacks (cdk-nag and cfn-lint included), prints
what ran where, and stops the servers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kit import REPO
from model_code.catalogue import PACKAGES

HELP = "package the demo models and run every mode, offline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=Path("build/demo"), help="default: build/demo")
    parser.add_argument("--requests", type=int, default=10, help="requests for the latency figures (default 10)")


def run(args: argparse.Namespace) -> int:
    return run_demo(args.workdir, args.requests)


def run_demo(workdir: Path, requests: int = 10) -> int:
    from kit.artifacts.builder import package
    from kit.endpoints.checks import Report, smoke
    from kit.local import serve_model
    from kit.slides.demo import slide_demo

    workdir = workdir.resolve()
    reports: dict[str, Report] = {}
    for name, models in PACKAGES.items():
        began = time.perf_counter()
        model_dir = package(list(models), workdir / name, demo=True)
        print(f"[package] {name}: {', '.join(models)} -> {model_dir} ({time.perf_counter() - began:.1f} s)")
        with serve_model(model_dir) as server:
            print(f"[serve]   {name}: python -m model_code.serve on {server.url}")
            endpoint = f"optimus-{name.lower()}"
            reports[name] = smoke(
                {endpoint: list(models)}, endpoint_url=server.url, requests=requests, region="us-east-1"
            )
            if name == "H1":  # a whole slide through the same server's slide path
                slide, picture = slide_demo(workdir / "slides", server.url)
        print(f"[smoke]   {name}: boto3 sagemaker-runtime -> {server.url}")
        print("          " + reports[name].text().replace("\n", "\n          "))
    synthesized = _synth(workdir)
    print("\nsummary")
    for name, report in reports.items():
        failed = sum(not c.passed for c in report.checks)
        latency = "; ".join(f"{k.split('/', 1)[1]} p50 {v['p50']:.1f} ms" for k, v in report.latency_ms.items())
        passed = len(report.checks) - failed
        print(f"  {name}: {passed}/{len(report.checks)} checks passed on a local CPU server ({latency})")
    print(f"  slide: {slide.status}, {slide.tiles} tiles at {slide.tiles_per_s:.1f} tiles/s {slide.reason}".rstrip())
    print(f"  picture: {picture}")
    print(f"  CDK: {synthesized}")
    ok = all(r.passed for r in reports.values()) and synthesized.startswith("synthesized") and picture is not None
    print("demo " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


def _synth(workdir: Path) -> str:
    """The CDK app on the demo artifacts, offline: cdk-nag's packs run during synthesis, then cfn-lint."""
    outdir = workdir / "cdk.out"
    endpoints = {
        name.lower(): {"models": list(models), "artifact": str(workdir / name)} for name, models in PACKAGES.items()
    }
    env = {**os.environ, "CDK_OUTDIR": str(outdir), "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1"}
    synth = subprocess.run(
        [sys.executable, "app.py", "-c", f"endpoints={json.dumps(endpoints)}"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if synth.returncode != 0:
        return f"synthesis FAILED:\n{synth.stderr[-3000:]}"
    templates = sorted(str(p) for p in outdir.glob("*.template.json"))
    lint = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), *templates], capture_output=True, text=True)
    if lint.returncode != 0:
        return f"cfn-lint FAILED:\n{lint.stdout[-3000:]}"
    return f"synthesized {len(templates)} stacks into {outdir}; cdk-nag (AwsSolutions, HIPAA) and cfn-lint clean"

"""Check a running serving image over HTTP, as SageMaker talks to it (`container/image_check.sh` runs this).

Waits for a healthy /ping (printing the time from the container's start), checks the models it names and that
/docs loads its assets from the server, sends every
vendor payload for the package's models to /invocations and compares each answer's shape with the vendor's, sends
a bad input expecting a 400 that names the field, runs `kit smoke` against it, then sends a generated slide
through its whole-slide path (`kit slides run`). Exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from model_code.catalogue import PACKAGES, canonical_name

BAD_INPUT = {"model_name": "h1", "mode": "embedding", "image_data": "!!not base64!!"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--package", required=True, choices=sorted(PACKAGES))
    parser.add_argument("--payloads", type=Path, required=True, help="the vendor payloads (real-time/, batch/)")
    parser.add_argument("--started", type=float, help="when the container started (epoch seconds)")
    parser.add_argument("--pid", type=int, help="the server's process: stop waiting if it is gone")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for /ping (default 600)")
    args = parser.parse_args(argv)
    models = PACKAGES[args.package]
    failures: list[str] = []
    began = args.started or time.time()
    if not wait_for_ping(args.url, args.pid, args.timeout):
        print(f"FAIL: {args.url}/ping never answered 200")
        return 1
    print(f"healthy /ping after {time.time() - began:.1f} s")
    with httpx.Client(base_url=args.url, timeout=120) as client:
        named = client.get("/ping").json().get("models")
        check(failures, sorted(named) == sorted(models), f"/ping names {named}, expected {list(models)}")
        for payload in payloads_for(args.payloads, models):
            failures += check_payload(client, payload)
        docs = client.get("/docs")
        assets = re.findall(r'(?:src|href)="(/docs-assets/[^"]+)"', docs.text)
        served = [client.get(asset).status_code for asset in assets]
        check(failures, docs.status_code == 200 and bool(assets) and set(served) == {200}, f"/docs assets: {served}")
        bad = client.post("/invocations", json=BAD_INPUT)
        check(
            failures,
            bad.status_code == 400 and bad.json().get("field") == "image_data",
            f"bad input: {bad.status_code} {bad.text[:200]}",
        )
    smoke = subprocess.run(
        [sys.executable, "-m", "kit", "smoke", "--endpoint", f"optimus-{args.package.lower()}",
         "--models", ",".join(models), "--endpoint-url", args.url, "--requests", "5", "--region", "us-east-1"],
        capture_output=True, text=True,
    )  # fmt: skip
    print(smoke.stdout + smoke.stderr)
    check(failures, smoke.returncode == 0, f"kit smoke exited {smoke.returncode}")
    failures += check_slide(args.url, models[0])
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


def wait_for_ping(url: str, pid: int | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (pid is None or os.path.exists(f"/proc/{pid}")):
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False


def payloads_for(root: Path, models: tuple[str, ...]) -> list[Path]:
    """The vendor's real-time and batch files whose records are all for these models."""
    found = sorted((root / "real-time").glob("*.json")) + sorted((root / "batch").glob("*.jsonl"))
    assert found, f"no vendor payloads under {root}"
    return [path for path in found if {canonical_name(r["model_name"]) for r in records(path)} <= set(models)]


def records(path: Path) -> list[dict]:
    """A .json file's one record, or a JSON lines file's records (also their .out answers)."""
    text = path.read_text()
    return [json.loads(line) for line in text.splitlines()] if ".jsonl" in path.suffixes else [json.loads(text)]


def check_payload(client: httpx.Client, path: Path) -> list[str]:
    """POST the file as the vendor's client does; the answer must have the vendor's keys and output sizes."""
    kind = "application/jsonlines" if path.suffix == ".jsonl" else "application/json"
    answer = client.post("/invocations", content=path.read_bytes(), headers={"content-type": kind, "accept": kind})
    if answer.status_code != 200:
        return [f"{path.name}: {answer.status_code} {answer.text[:300]}"]
    got = [json.loads(line) for line in answer.text.splitlines()] if path.suffix == ".jsonl" else [answer.json()]
    expected = records(path.with_name(path.name + ".out"))
    shapes = len(got) == len(expected) and all(
        set(want) <= set(have) and len(have["output"]) == len(want["output"])
        for have, want in zip(got, expected, strict=True)
    )
    print(f"{path.name}: {len(got)} answer(s), {'vendor shapes' if shapes else 'SHAPES DIFFER'}")
    return [] if shapes else [f"{path.name}: keys or output sizes differ from {path.name}.out"]


def check_slide(url: str, model: str) -> list[str]:
    """A generated SVS slide through the slide path (OpenSlide in the image, the body spooled to /tmp)."""
    from kit.slides.synthetic import make_slide

    with tempfile.TemporaryDirectory() as work:
        slide = make_slide(Path(work) / "probe-slide.svs")
        command = [sys.executable, "-m", "kit", "slides", "run", str(slide), "--endpoint-url", url]
        done = subprocess.run([*command, "--model", model, "--out", work], capture_output=True, text=True)
        written = (Path(work) / "probe-slide.h5").is_file()
    print(f"slide {model}: exit {done.returncode}, features file {'written' if written else 'MISSING'}")
    if done.returncode == 0 and written:
        return []
    return [f"slide through {model}: exit {done.returncode}\n{(done.stdout + done.stderr)[-1500:]}"]


def check(failures: list[str], ok: bool, message: str) -> None:
    if not ok:
        failures.append(message)


if __name__ == "__main__":
    sys.exit(main())

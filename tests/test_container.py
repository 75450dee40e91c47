"""What the image runs, run outside Docker (no Docker engine here): the `serve` entry, SIGTERM, pins."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kit.artifacts.builder import package
from kit.endpoints.samples import wire_record
from kit.local import free_port, local_server, metric, serve_model
from tests.support.paths import REPO
from tests.support.polling import eventually


def test_container_serve_entry_answers_ping_and_invocations(artifact: Path) -> None:
    """`serve` exactly as the image's CMD runs it, with the port from SAGEMAKER_BIND_TO_PORT."""
    port = free_port()
    env = {"SAGEMAKER_BIND_TO_PORT": str(port), "DECODE_WORKERS": "1"}
    with local_server([str(REPO / "container" / "serve"), "--model-dir", str(artifact)], port, env):
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/ping").json()["models"] == ["h1", "m-optimus", "tissue-seg"]
        answer = httpx.post(f"{url}/invocations", json=wire_record("tissue-seg", "prediction"), timeout=30)
        assert answer.status_code == 200 and len(answer.json()["output"]) == 512 * 512


def test_sigterm_finishes_requests_in_flight_then_exits(artifact: Path) -> None:
    port = free_port()
    env = {"DECODE_WORKERS": "1", "MAX_BATCH_WAIT_MS": "0"}
    command = [sys.executable, "-m", "bench.simulated_device", "--forward-ms", "1500,0", "--model-dir", str(artifact)]
    with local_server([*command, "--port", str(port)], port, env) as server:
        process = server.process
        url = f"http://127.0.0.1:{port}"
        answers: list[httpx.Response] = []
        in_flight = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{url}/invocations", json=wire_record("h1", "embedding"), timeout=60)
            )
        )
        in_flight.start()
        _wait_until_forwarding(url)
        process.send_signal(signal.SIGTERM)
        in_flight.join(timeout=60)
        assert answers and answers[0].status_code == 200 and len(answers[0].json()["output"]) == 1536
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/ping")


def _wait_until_forwarding(url: str) -> None:
    """Until the request is inside its (simulated, 1.5 s) forward pass: its tile has left the queue."""
    eventually(lambda: metric(url, "optimus_queue_wait_seconds_count", model="h1") == 1, "the request in its forward")


def test_model_dir_that_is_not_an_artifact_exits_non_zero(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(REPO / "container" / "serve"), "--model-dir", str(tmp_path), "--port", str(free_port())],
        cwd=REPO,
        env={"PATH": str(Path(sys.executable).parent), "DECODE_WORKERS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "manifest.json is missing" in done.stdout + done.stderr


def test_container_pins_match_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    image = [
        line for line in (REPO / "container" / "requirements.txt").read_text().splitlines() if line and line[0] != "#"
    ]
    assert set(image) <= set(project), "container/requirements.txt pins differ from pyproject.toml"
    torch_pins = {p.split("==")[0]: p.split("==")[1] for p in project if p.startswith(("torch==", "torchvision=="))}
    dockerfile = (REPO / "container" / "Dockerfile").read_text()
    assert f"ARG TORCH_VERSION={torch_pins['torch']}" in dockerfile
    table = (REPO / "container" / "torch-versions.txt").read_text().splitlines()
    rows = {line.split()[0]: line.split()[1:3] for line in table if line.strip() and line[0] != "#"}
    assert rows[torch_pins["torch"]][0] == torch_pins["torchvision"], "the default row must be pyproject's pair"
    assert all(cuda.startswith("cu12") for _, cuda in rows.values()), "ml.g5's driver 550 runs CUDA 12.x builds"
    assert 'CMD ["serve"]' in dockerfile and "USER optimus" in dockerfile


def test_image_defaults_are_sagemakers_and_the_local_check_only_overrides_build_arguments() -> None:
    """The Dockerfile builds the real image by default; `make image-check` changes build arguments only."""
    dockerfile = (REPO / "container" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm\nFROM ${BASE_IMAGE}" in dockerfile
    assert "ARG TORCH_INDEX_URL=\n" in dockerfile, "empty: the row's CUDA 12 index on download.pytorch.org"
    check = (REPO / "container" / "image_check.sh").read_text()
    assert "-f container/Dockerfile" in check
    assert set(re.findall(r"--build-arg (\w+)=", check)) == {"BASE_IMAGE", "TORCH_INDEX_URL"}
    run = check[check.index("run -d") : check.index("serve >/dev/null")]
    for flag in ("--network none", "--read-only", "--read-only-tmpfs=false", "/opt/ml/model:ro", "--cap-drop all"):
        assert flag in run, flag
    assert "--user" not in run, "the image's own user, as SageMaker runs it"


@pytest.fixture(scope="module")
def h1_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model_dir = package(["h1", "tissue-seg"], tmp_path_factory.mktemp("h1"), demo=True)
    with serve_model(model_dir, {"DECODE_WORKERS": "1"}) as server:
        yield server.url


def probe(url: str, package_name: str, vendor: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(REPO / "container" / "probe.py"), "--url", url, "--package", package_name]
    return subprocess.run(
        [*command, "--payloads", str(vendor), "--timeout", "10"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_image_probe_passes_a_server_hosting_the_package(h1_server: str, vendor: Path) -> None:
    done = probe(h1_server, "H1", vendor)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("h1_embed_input.json", "tissue_seg_input.json", "h1_embed_inputs.jsonl"):
        assert f"{name}: " in done.stdout and "vendor shapes" in done.stdout
    assert "m_embed_input.json" not in done.stdout, "M's payloads are not for the H1 package"
    assert "8 passed, 0 failed" in done.stdout, "kit smoke ran against it"
    assert "slide h1: exit 0, features file written" in done.stdout


def test_image_probe_fails_a_server_without_the_package(h1_server: str, vendor: Path) -> None:
    done = probe(h1_server, "M", vendor)
    assert done.returncode == 1
    assert "FAIL: /ping names ['h1', 'tissue-seg'], expected ['m-optimus', 'tissue-seg']" in done.stdout
    assert "FAIL: m_predict_input.json: 404" in done.stdout
    assert "FAIL: kit smoke exited 1" in done.stdout


def test_image_probe_fails_when_nothing_answers(vendor: Path) -> None:
    done = probe(f"http://127.0.0.1:{free_port()}", "H1", vendor)
    assert done.returncode == 1 and "/ping never answered 200" in done.stdout


def test_image_requirements_provide_every_module_the_server_imports() -> None:
    """A module model_code imports must come with the image's pins (or torch): a missing one starts a
    container that dies before /ping (it happened with tifffile). Checked against this venv's metadata."""
    import ast
    from importlib import metadata

    from packaging.requirements import Requirement

    pins = [line for line in (REPO / "container" / "requirements.txt").read_text().splitlines() if line[:1].isalnum()]
    installed = {"torch", "torchvision"}
    todo = [Requirement(pin).name for pin in pins]
    while todo:  # the pins and what they pull in, as pip installs them (no extras)
        name = todo.pop().lower().replace("_", "-")
        if name in installed and name not in ("torch", "torchvision"):
            continue
        installed.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    providers = metadata.packages_distributions()
    missing = set()
    for source in (REPO / "model_code").rglob("*.py"):
        tree = ast.parse(source.read_text())
        optional = {  # `try: import x` / `except ImportError`: the handler runs without it
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.Try)
            and any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers)
            for statement in node.body
            for inner in ast.walk(statement)
        }
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for top in {name.split(".")[0] for name in names}:
                if top in sys.stdlib_module_names or top in ("model_code", "__future__"):
                    continue
                if not {d.lower().replace("_", "-") for d in providers.get(top, [top])} & installed:
                    missing.add(f"{top} ({source.relative_to(REPO)})")
    assert not missing, f"model_code imports what the image does not install: {sorted(missing)}"

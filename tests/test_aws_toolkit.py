"""inference.py as the user module of AWS's own serving toolkit (`sagemaker-inference`, what AWS's PyTorch
inference image runs): same answers, same 4xx for bad input.

The toolkit's Transformer runs for real; only the model server around it (MMS / TorchServe, Java) is
replaced by the small context object it hands to the Transformer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from sagemaker_inference.transformer import Transformer

from kit.endpoints.samples import wire_record


class ModelServerContext:
    """What MMS / TorchServe pass to the toolkit: system properties, request headers, the response status."""

    def __init__(self, model_dir: Path, headers: dict[str, str]):
        self.system_properties = {"model_dir": str(model_dir)}
        self.request_processor = [self]
        self.headers = headers
        self.status: tuple[int, str] | None = None
        self.content_type: str | None = None

    def get_request_properties(self) -> dict[str, str]:
        return self.headers

    def set_response_status(self, code: int, phrase: str) -> None:
        self.status = (code, phrase)

    def set_response_content_type(self, index: int, content_type: str) -> None:
        self.content_type = content_type


@pytest.fixture(scope="module")
def transformer(artifact: Path) -> Transformer:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAGEMAKER_PROGRAM", "model_code.inference")
        toolkit = Transformer()
        toolkit.validate_and_initialize(model_dir=str(artifact), context=None)
    return toolkit


def invoke(
    transformer: Transformer, artifact: Path, body: bytes, content_type: str, accept: str
) -> tuple[Any, ModelServerContext]:
    context = ModelServerContext(artifact, {"Content-Type": content_type, "Accept": accept})
    return transformer.transform([{"body": body}], context)[0], context


@pytest.mark.parametrize("name", ["h1_embed_input.json", "m_predict_input.json", "tissue_seg_input.json"])
def test_vendor_payloads_under_the_toolkit(transformer: Transformer, artifact: Path, vendor: Path, name: str) -> None:
    body = (vendor / "real-time" / name).read_bytes()
    expected = json.loads((vendor / "real-time" / f"{name}.out").read_text())
    answer, context = invoke(transformer, artifact, body, "application/json", "application/json")
    assert context.status is None and context.content_type == "application/json"
    assert len(json.loads(answer)["output"]) == len(expected["output"])


def test_batch_transform_lines_under_the_toolkit(transformer: Transformer, artifact: Path, vendor: Path) -> None:
    body = (vendor / "batch" / "m_embed_inputs.jsonl").read_bytes()
    answer, context = invoke(transformer, artifact, body, "application/jsonlines", "application/jsonlines")
    lines = answer.decode().splitlines()
    assert context.content_type == "application/jsonlines" and len(lines) == 20
    assert [json.loads(line)["patch_idx"] for line in lines] == [json.loads(r)["patch_idx"] for r in body.splitlines()]


@pytest.mark.parametrize(
    ("record", "status", "field"),
    [
        ({**wire_record("h1", "embedding"), "image_data": "!!"}, 400, "image_data"),
        ({**wire_record("h1", "embedding"), "model_name": "h5"}, 400, "model_name"),
        (wire_record("h0", "embedding"), 404, "model_name"),
    ],
)
def test_bad_input_gets_the_same_4xx_under_the_toolkit(
    transformer: Transformer, artifact: Path, record: dict[str, Any], status: int, field: str
) -> None:
    answer, context = invoke(transformer, artifact, orjson.dumps(record), "application/json", "application/json")
    assert context.status is not None and context.status[0] == status
    assert f"field '{field}'" in answer


TOOLKIT_RUN = """
import json, sys
code, model_dir, payload = sys.argv[1:4]
sys.path.insert(0, code)  # what AWS's PyTorch serving image does with the artifact's code/
import model_code.inference
assert model_code.inference.__file__.startswith(code), model_code.inference.__file__
from sagemaker_inference.transformer import Transformer

class Context:
    system_properties = {"model_dir": model_dir}
    status = None
    def __init__(self):
        self.request_processor = [self]
    def get_request_properties(self):
        return {"Content-Type": "application/json", "Accept": "application/json"}
    def set_response_status(self, code, phrase):
        self.status = code
    def set_response_content_type(self, index, content_type):
        pass

context = Context()
answer = Transformer().transform([{"body": open(payload, "rb").read()}], context)[0]
print(json.dumps({"status": context.status, "outputs": len(json.loads(answer)["output"])}))
"""


def test_artifact_with_code_runs_in_aws_image_layout(tmp_path: Path, vendor: Path) -> None:
    """`kit package --with-code`: the handler imported from the artifact's own code/ serves under the toolkit."""
    import os
    import subprocess
    import sys

    from kit.artifacts.builder import package
    from model_code.manifest import read_manifest

    model_dir = package(["h1"], tmp_path / "out", demo=True, with_code=True)
    manifest = read_manifest(model_dir)
    assert "code/model_code/inference.py" in manifest.sha256 and "code/requirements.txt" in manifest.sha256
    assert "timm==" in (model_dir / "code" / "requirements.txt").read_text()
    payload = vendor / "real-time" / "h1_embed_input.json"
    done = subprocess.run(
        [sys.executable, "-c", TOOLKIT_RUN, str(model_dir / "code"), str(model_dir), str(payload)],
        cwd=tmp_path,
        env={**os.environ, "SAGEMAKER_PROGRAM": "model_code.inference"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"status": None, "outputs": 1536}


def test_code_requirements_cover_the_handlers_imports(tmp_path: Path) -> None:
    """Every package imported by the model_code modules that the handler (model_code.inference) loads, beyond
    the standard library and what AWS's PyTorch image has (torch, numpy, its serving toolkit), is pinned in
    code/requirements.txt: a new import cannot break that image."""
    import ast
    import subprocess
    import sys
    from importlib.metadata import packages_distributions

    from kit import REPO
    from kit.artifacts.code import add_code

    add_code(tmp_path)
    pinned = {line.split("==")[0].lower() for line in (tmp_path / "code" / "requirements.txt").read_text().split()}
    listing = "import sys, model_code.inference; print(*(n for n in sys.modules if n.startswith('model_code')))"
    modules = subprocess.run([sys.executable, "-c", listing], check=True, capture_output=True, text=True).stdout.split()
    imported = set()
    for module in modules:
        path = REPO / Path(*module.split("."))
        source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = (
        imported - set(sys.stdlib_module_names) - {"__future__", "model_code", "torch", "numpy", "sagemaker_inference"}
    )
    distributions = packages_distributions()
    needed = {distributions[name][0].lower() for name in third_party}
    assert "imagecodecs" in needed and needed <= pinned, f"not in code/requirements.txt: {needed - pinned}"

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

from kit.samples import wire_record


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

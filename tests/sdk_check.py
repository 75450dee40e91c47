"""The SageMaker Python SDK's own classes against the local server: `make sdk-check`.

Run by the SDK's virtual environment (.venv-sdk, the `sdk` extra's pin), not by pytest: the SDK stays out of the
kit's environment. It starts `python -m model_code.serve` with the kit's interpreter on a free port, points the
SDK's boto3 client at it (AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME, dummy credentials) and sends the vendor's payloads
through `sagemaker.predictor.Predictor` with the SDK's JSON and JSON-lines serializers; each answer is compared
with the same request sent straight to /invocations. Exits 1 on the first mismatch.

    .venv-sdk/bin/python -m tests.sdk_check --python .venv/bin/python --model-dir build/sdk-check/art/model
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from kit.local import free_port, local_server

VENDOR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "vendor-payloads"
ENDPOINT = "optimus-local"
TILE_FIELDS = ("slide_name", "x", "y", "width", "height", "tissue_ratio", "patch_idx", "resolution")


class Mismatch(AssertionError):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Mismatch(what)


def same(a: Any, b: Any) -> bool:
    """Equal JSON, floats to 1e-5 (the SDK's answer and the wire's come from separate forward passes)."""
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, int | float) and isinstance(b, int | float) and math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def wire(url: str, body: bytes, content_type: str = "application/json") -> bytes:
    """The same request straight to the container's /invocations: the reference answer."""
    request = urllib.request.Request(
        f"{url}/invocations", body, {"Content-Type": content_type, "Accept": content_type}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        return bytes(answer.read())


def check_tile(answer: dict[str, Any], record: dict[str, Any], length: int, what: str) -> None:
    output = answer.get("output")
    check(isinstance(output, list) and len(output) == length, f"{what}: 'output' is not {length} values")
    check(all(isinstance(v, float) and math.isfinite(v) for v in output), f"{what}: 'output' is not finite floats")
    for field in TILE_FIELDS:
        check(answer.get(field) == record.get(field), f"{what}: field {field!r} not echoed")


class Sdk:
    """One way SDK users call an endpoint: 2.x `Predictor(serializer, deserializer).predict(data)`, or 3.x (and
    sagemaker-core 2.x) `Endpoint(endpoint_name, serializer, deserializer).invoke(data, content_type, accept).body`."""

    def __init__(self) -> None:
        from sagemaker.core.deserializers import JSONDeserializer, JSONLinesDeserializer
        from sagemaker.core.serializers import JSONLinesSerializer, JSONSerializer

        self.json, self.lines = (JSONSerializer(), JSONDeserializer()), (JSONLinesSerializer(), JSONLinesDeserializer())

    def predict(self, data: Any, lines: bool = False) -> Any:
        from sagemaker.core.resources import Endpoint

        serializer, deserializer = self.lines if lines else self.json
        endpoint = Endpoint(endpoint_name=ENDPOINT, serializer=serializer, deserializer=deserializer)
        return endpoint.invoke(data, content_type=serializer.CONTENT_TYPE, accept=deserializer.ACCEPT[0]).body


class SdkV2(Sdk):
    def __init__(self) -> None:
        from sagemaker.deserializers import JSONDeserializer, JSONLinesDeserializer
        from sagemaker.predictor import Predictor
        from sagemaker.serializers import JSONLinesSerializer, JSONSerializer

        self.json_predictor = Predictor(ENDPOINT, serializer=JSONSerializer(), deserializer=JSONDeserializer())
        self.lines_predictor = Predictor(
            ENDPOINT, serializer=JSONLinesSerializer(), deserializer=JSONLinesDeserializer()
        )

    def predict(self, data: Any, lines: bool = False) -> Any:
        return (self.lines_predictor if lines else self.json_predictor).predict(data)


def run_checks(url: str, sdk: Sdk) -> list[str]:
    done = []
    record = json.loads((VENDOR / "real-time" / "h1_embed_input.json").read_bytes())
    answer = sdk.predict(record)
    check_tile(answer, record, 1536, "h1 embedding")
    check(same(answer, json.loads(wire(url, json.dumps(record).encode()))), "h1 embedding: differs from /invocations")
    done.append("h1 embedding (vendor real-time payload): 1536 floats, tile fields echoed, same as /invocations")

    record = json.loads((VENDOR / "real-time" / "m_predict_input.json").read_bytes())
    record["mode"] = "prediction_with_embedding"
    answer = sdk.predict(record)
    check_tile(answer, record, 6002, "m-optimus prediction_with_embedding")
    embedding = answer.get("embedding")
    check(isinstance(embedding, list) and len(embedding) == 1536, "m-optimus: 'embedding' is not 1536 values")
    check(same(answer, json.loads(wire(url, json.dumps(record).encode()))), "m-optimus: differs from /invocations")
    done.append("m-optimus prediction_with_embedding (vendor payload, bulk_rna): 6002 counts + 1536 embedding")

    for model, genes in (("h1", False), ("m-optimus", True)):
        meta = sdk.predict({"model_name": model, "mode": "metadata"})
        check(meta.get("model_name") == model, f"{model} metadata: model_name {meta.get('model_name')!r}")
        check(meta.get("tile_size") == [224, 224] and meta.get("embedding_dim") == 1536, f"{model} metadata: shapes")
        check(("output_genes" in meta) == genes, f"{model} metadata: output_genes")
    done.append("metadata of h1 and m-optimus")

    batch_file = VENDOR / "batch" / "h1_embed_inputs.jsonl"
    lines = [json.loads(line) for line in batch_file.read_text().splitlines() if line.strip()]
    with batch_file.open("rb") as stream:  # the serializer sends a file as it is, as batch transform sends its lines
        answers = sdk.predict(stream, lines=True)
    check(isinstance(answers, list) and len(answers) == len(lines), f"JSON lines: {len(answers)} answers")
    for i, (answer, line) in enumerate(zip(answers, lines, strict=True)):
        check_tile(answer, line, 1536, f"JSON lines, line {i}")
    reference = wire(url, batch_file.read_bytes(), "application/jsonlines").decode().splitlines()
    check(same(answers, [json.loads(line) for line in reference]), "JSON lines: differs from /invocations")
    done.append(f"JSON lines ({batch_file.name}, {len(lines)} lines): one answer per line, in order")

    bad = dict(lines[0], image_data="not base64!")
    answers = sdk.predict([lines[1], bad, lines[2]], lines=True)  # the serializer joins a list's records into lines
    check(len(answers) == 3 and answers[1].get("field") == "image_data", "JSON lines with a bad line: no error line")
    check_tile(answers[0], lines[1], 1536, "JSON lines with a bad line, line 0")
    check_tile(answers[2], lines[2], 1536, "JSON lines with a bad line, line 2")
    done.append("JSON lines with a bad line: its line is its error, the others answered")

    try:
        sdk.predict(bad)
    except ClientError as error:
        response = error.response
        check(response["Error"]["Code"] == "ModelError", f"bad input: {response['Error']['Code']}, not ModelError")
        check(response["ResponseMetadata"]["HTTPStatusCode"] == 424, "bad input: not HTTP 424")
        check(
            response.get("OriginalStatusCode") == 400,
            f"bad input: OriginalStatusCode {response.get('OriginalStatusCode')}",
        )
        original = json.loads(response["OriginalMessage"])
        check(original.get("field") == "image_data" and "base64" in original.get("reason", ""), "bad input: reason")
        done.append(
            f"bad input: {type(error).__module__}.{type(error).__name__} (424), OriginalMessage {original['error']!r}"
        )
    else:
        raise Mismatch("bad input: the SDK raised nothing")
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="the kit's interpreter, which runs the server")
    parser.add_argument("--model-dir", required=True, type=Path, help="a packaged artifact's model/ directory")
    args = parser.parse_args()
    check(VENDOR.is_dir(), f"the vendor payloads are expected beside the repository at {VENDOR}")

    port = free_port()
    os.environ.update(
        AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="local",
        AWS_SECRET_ACCESS_KEY="local",  # dummy: the local server checks no signature
        AWS_DEFAULT_REGION="us-east-1",
        SAGEMAKER_SUPPRESS_V2_WARNING="1",
    )
    os.environ.pop("AWS_PROFILE", None)
    try:
        v2 = version("sagemaker").startswith("2.")
    except PackageNotFoundError:  # sagemaker-core alone: 3.x's classes
        v2 = False
    sdk = SdkV2() if v2 else Sdk()
    name = (
        f"sagemaker {version('sagemaker')} Predictor" if v2 else f"sagemaker-core {version('sagemaker-core')} Endpoint"
    )
    command = [args.python, "-m", "model_code.serve", "--model-dir", str(args.model_dir), "--port", str(port)]
    path = f"{Path(args.python).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the kit's `python` first
    with local_server(command, port, {"PATH": path}) as server:
        try:
            done = run_checks(server.url, sdk)
        except Mismatch as mismatch:
            print(f"sdk-check FAILED: {mismatch}", file=sys.stderr)
            return 1
    for line in done:
        print(f"ok  {line}")
    print(f"{name} reached the local server through boto3's sagemaker-runtime client")
    print(f"sdk-check: {len(done)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

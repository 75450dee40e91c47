"""The SageMaker handler (model_fn / input_fn / predict_fn / output_fn) on the demo models."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from kit.artifacts.builder import package
from kit.endpoints.checks import SAME_ATOL, SAME_RTOL
from kit.endpoints.samples import synthetic_counts, wire_record
from model_code.catalogue import ECHO_FIELDS, N_INPUT_GENES, N_OUTPUT_GENES
from model_code.errors import ClientError, ForwardError
from model_code.inference import Models, input_fn, model_fn
from tests.support.handler import invoke, invoke_json
from tests.support.images import png_bytes, random_tile

REAL_TIME = ["h1_embed_input.json", "m_embed_input.json", "m_predict_input.json", "tissue_seg_input.json"]


@pytest.mark.parametrize("name", REAL_TIME)
def test_real_time_vendor_payloads_give_vendor_shapes(models: Models, vendor: Path, name: str) -> None:
    request = json.loads((vendor / "real-time" / name).read_text())
    expected = json.loads((vendor / "real-time" / f"{name}.out").read_text())
    answer = invoke_json(models, request)
    assert len(answer["output"]) == len(expected["output"])
    assert np.isfinite(answer["output"]).all()
    # Same keys in the same order as the vendor's answer; the vendor's real-time h1 answer carries
    # only "output", ours echoes the tile fields there too (as its batch h1 answer does).
    assert list(answer) == ["output", *ECHO_FIELDS]
    assert list(expected) in (["output"], list(answer))
    assert {k: answer[k] for k in ECHO_FIELDS} == {k: request[k] for k in ECHO_FIELDS}


@pytest.mark.parametrize("name", ["h1_embed_inputs.jsonl", "m_embed_inputs.jsonl"])
def test_batch_vendor_files_answer_one_line_per_record_in_order(models: Models, vendor: Path, name: str) -> None:
    body = (vendor / "batch" / name).read_bytes()
    expected = [json.loads(line) for line in (vendor / "batch" / f"{name}.out").read_text().splitlines()]
    out, out_type = invoke(models, body, "application/jsonlines", "application/jsonlines")
    assert out_type == "application/jsonlines"
    lines = [json.loads(line) for line in out.decode().splitlines()]
    requests = [json.loads(line) for line in body.decode().splitlines()]
    assert len(lines) == len(expected) == len(requests) == 20
    for answer, vendor_answer, request in zip(lines, expected, requests, strict=True):
        assert list(answer) == list(vendor_answer)
        assert len(answer["output"]) == len(vendor_answer["output"])
        assert answer["patch_idx"] == request["patch_idx"] and answer["x"] == request["x"]


def test_json_list_in_gives_list_out_in_order(models: Models) -> None:
    records = [wire_record("h1", "embedding", png_bytes(random_tile(224, i)), patch_idx=i) for i in range(5)]
    answers = invoke_json(models, records)
    assert [a["patch_idx"] for a in answers] == [0, 1, 2, 3, 4]
    singles = [invoke_json(models, record)["output"] for record in records]
    for answer, single in zip(answers, singles, strict=True):
        np.testing.assert_allclose(answer["output"], single, rtol=1e-5, atol=1e-5)


def test_same_tile_twice_gives_same_output(models: Models) -> None:
    record = wire_record("m-optimus", "prediction_with_embedding", bulk_rna=synthetic_counts())
    first, second = invoke_json(models, record), invoke_json(models, record)
    assert first["output"] == second["output"] and first["embedding"] == second["embedding"]
    # Within one batch, BLAS may round rows differently in the last bits: equal to float32 precision on a
    # CPU; on a GPU (fp16 autocast) within the smoke test's tolerance.
    on_gpu = next(iter(models.runners.values())).device.type == "cuda"
    rtol, atol = (SAME_RTOL, SAME_ATOL) if on_gpu else (1e-5, 1e-6)
    in_batch = invoke_json(models, [record, record])
    for answer in in_batch:
        np.testing.assert_allclose(answer["embedding"], first["embedding"], rtol=rtol, atol=atol)


def test_different_tiles_give_different_embeddings(models: Models) -> None:
    a, b = (
        invoke_json(models, wire_record("h1", "embedding", png_bytes(random_tile(224, s))))["output"] for s in (1, 2)
    )
    assert a != b


def test_m_optimus_modes_alias_and_bulk_rna(models: Models) -> None:
    with_rna = invoke_json(
        models, wire_record("m-optimus-stx", "prediction_with_embedding", bulk_rna=synthetic_counts())
    )
    assert list(with_rna) == ["output", *ECHO_FIELDS, "embedding"]
    assert len(with_rna["output"]) == N_OUTPUT_GENES and len(with_rna["embedding"]) == 1536
    counts = np.array(with_rna["output"])
    assert (counts == np.round(counts)).all() and (counts >= 0).all()
    without = invoke_json(models, wire_record("m-optimus", "prediction"))
    assert without["output"] != with_rna["output"], "bulk RNA must reach the model"
    embedding = invoke_json(models, wire_record("m-optimus", "embedding", bulk_rna=synthetic_counts()))
    np.testing.assert_array_equal(embedding["output"], with_rna["embedding"])


def test_tissue_seg_mask_is_binary_row_major(models: Models) -> None:
    answer = invoke_json(models, wire_record("tissue-seg", "prediction"))
    mask = np.array(answer["output"])
    assert mask.shape == (512 * 512,) and set(np.unique(mask)) <= {0.0, 1.0}


def test_metadata_describes_each_model(models: Models) -> None:
    """In the vendor's layout: tile_size [height, width], outputs `embeddings` / `predictions`, and no
    `embedding_dim` at all (not null) for tissue-seg."""
    h1 = invoke_json(models, wire_record("h1", "metadata"))
    assert h1["model_name"] == "h1" and h1["tile_size"] == [224, 224] and h1["embedding_dim"] == 1536
    assert h1["outputs"] == {"embeddings": {"shape": ["B", 1536]}}
    m = invoke_json(models, wire_record("m-optimus-stx", "metadata"))
    assert len(m["input_genes"]) == N_INPUT_GENES and len(m["output_genes"]) == N_OUTPUT_GENES
    assert m["input_genes"][0].startswith("ENSG") and m["outputs"]["predictions"] == {"shape": ["B", N_OUTPUT_GENES]}
    assert m["outputs"]["embeddings"] == {"shape": ["B", 1536]}
    seg = invoke_json(models, wire_record("tissue-seg", "metadata"))
    assert seg["tile_size"] == [512, 512] and seg["outputs"] == {"predictions": {"shape": ["B", 512 * 512]}}
    assert "embedding_dim" not in seg


def test_jsonlines_accept_for_single_object(models: Models) -> None:
    out, out_type = invoke(models, wire_record("h1", "embedding"), accept="application/jsonlines")
    assert out_type == "application/jsonlines" and out.count(b"\n") == 1


def _rgba_tile() -> bytes:
    rgba = np.dstack([random_tile(224), np.full((224, 224), 255, np.uint8)])
    return png_bytes(rgba, "RGBA")


def test_rgba_tile_is_accepted_as_rgb(models: Models) -> None:
    answer = invoke_json(models, wire_record("h1", "embedding", _rgba_tile()))
    assert len(answer["output"]) == 1536


def _with(model: str, wire_mode: str, **fields: object) -> dict:
    record = wire_record(model, wire_mode)
    record.update(fields)
    return record


BAD_RECORDS = {
    "bad base64": (_with("h1", "embedding", image_data="not base64!!"), 400, "image_data", "base64"),
    "not an image": (
        _with("h1", "embedding", image_data=base64.b64encode(b"hello").decode()),
        400,
        "image_data",
        "image",
    ),
    "empty image": (_with("h1", "embedding", image_data=""), 400, "image_data", "empty"),
    "wrong tile size": (
        _with("h1", "embedding", image_data=base64.b64encode(png_bytes(random_tile(256))).decode()),
        400,
        "image_data",
        "256x256",
    ),
    "grey tile": (
        _with("h1", "embedding", image_data=base64.b64encode(png_bytes(random_tile(224)[:, :, 0])).decode()),
        400,
        "image_data",
        "colour mode L",
    ),
    "truncated png": (
        _with("h1", "embedding", image_data=base64.b64encode(png_bytes(random_tile(224))[:3000]).decode()),
        400,
        "image_data",
        "",
    ),
    "bulk_rna length": (_with("m-optimus", "prediction", bulk_rna=[1.0] * 10), 400, "bulk_rna", "10 values"),
    "bulk_rna negative": (
        _with("m-optimus", "prediction", bulk_rna=[1.0] * (N_INPUT_GENES - 1) + [-3.0]),
        400,
        "bulk_rna",
        "negative",
    ),
    "bulk_rna for h1": (
        _with("h1", "embedding", bulk_rna=[1.0] * N_INPUT_GENES),
        400,
        "bulk_rna",
        "takes no bulk RNA",
    ),
    "bulk_rna not numbers": (
        _with("m-optimus", "prediction", bulk_rna=["a"] * 3),
        400,
        "bulk_rna.0",
        "number",
    ),
    "unknown model": (_with("h1", "embedding", model_name="h9"), 400, "model_name", "unknown model 'h9'"),
    "unknown mode": (_with("h1", "embedding", mode="segment"), 400, "mode", "embedding"),
    "mode of another model": (_with("h1", "prediction"), 400, "mode", "has no mode 'prediction'"),
    "missing model_name": ({"image_data": "", "mode": "embedding"}, 400, "model_name", "required"),
    "not an object": ([1, 2, 3], 400, "body", "JSON object"),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_bad_record_raises_client_error_naming_field(models: Models, case: str) -> None:
    record, status, field, words = BAD_RECORDS[case]
    payload = record if isinstance(record, dict) else orjson.dumps(record)
    if not isinstance(record, dict):  # a JSON list whose entry is not an object: an error entry, not a raise
        answers = orjson.loads(invoke(models, payload)[0])
        assert answers[0]["status"] == status and answers[0]["field"] == field and answers[0]["record"] == 0
        return
    with pytest.raises(ClientError) as caught:
        invoke(models, payload)
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.status_code, error.field, error.record) == (status, field, 0)
    assert words in error.reason


def test_non_finite_bulk_rna_is_refused(models: Models) -> None:
    record = wire_record("m-optimus", "prediction", bulk_rna=[1.0] * N_INPUT_GENES)
    body = json.dumps(record).replace("1.0]", "NaN]").encode()  # what Python's json writes for nan
    with pytest.raises(ClientError, match="not finite") as caught:
        invoke(models, body)
    assert caught.value.field == "bulk_rna"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field"),
    [
        (b"", "application/json", 400, "body"),
        (b"{not json", "application/json", 400, "body"),
        (b"[]", "application/json", 400, "body"),
        (b"{}", "text/csv", 415, "content_type"),
    ],
)
def test_bad_bodies(models: Models, body: bytes, content_type: str, status: int, field: str) -> None:
    with pytest.raises(ClientError) as caught:
        input_fn(body, content_type)
    assert (caught.value.status_code, caught.value.field) == (status, field)


def test_unsupported_accept_is_406(models: Models) -> None:
    with pytest.raises(ClientError) as caught:
        invoke(models, wire_record("h1", "metadata"), accept="text/csv")
    assert caught.value.status_code == 406 and caught.value.field == "accept"


def test_one_bad_record_in_a_list_fails_only_its_entry(models: Models) -> None:
    good = wire_record("h1", "embedding")
    bad = _with("h1", "embedding", image_data="@@@")
    answers = invoke_json(models, [good, bad, good])
    assert len(answers[0]["output"]) == len(answers[2]["output"]) == 1536
    assert answers[1]["status"] == 400 and answers[1]["field"] == "image_data" and answers[1]["record"] == 1
    assert "record 1, field 'image_data'" in answers[1]["error"]


def test_one_bad_line_in_jsonlines_fails_only_its_line(models: Models) -> None:
    good = orjson.dumps(wire_record("h1", "embedding"))
    body = b"\n".join([good, b"{broken", good, orjson.dumps(_with("h1", "embedding", model_name="nope"))]) + b"\n"
    out, _ = invoke(models, body, "application/jsonlines", "application/jsonlines")
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [("output" in line) for line in lines] == [True, False, True, False]
    assert (lines[1]["record"], lines[1]["field"]) == (1, "body")
    assert (lines[3]["record"], lines[3]["field"]) == (3, "model_name")


@pytest.fixture(scope="module")
def h1_only(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return model_fn(package(["h1"], tmp_path_factory.mktemp("h1only"), demo=True))


def test_model_not_in_artifact_is_404(h1_only: Models) -> None:
    with pytest.raises(ClientError, match="not hosted by this endpoint") as caught:
        invoke(h1_only, wire_record("tissue-seg", "prediction"))
    assert caught.value.status_code == 404 and caught.value.field == "model_name"


def _count_forwards(models: Models, name: str) -> list[int]:
    sizes: list[int] = []
    models.runners[name].module.register_forward_hook(lambda _m, args, _o: sizes.append(int(args[0].shape[0])))
    return sizes


def test_records_run_as_batched_forwards(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_BATCH_SIZE", "8")
    models = model_fn(artifact)
    sizes = _count_forwards(models, "h1")
    seg_sizes = _count_forwards(models, "tissue-seg")
    records = [wire_record("h1", "embedding", png_bytes(random_tile(224, i))) for i in range(20)]
    records.insert(3, wire_record("tissue-seg", "prediction"))
    answers = invoke_json(models, records)
    assert len(answers) == 21
    assert sizes == [8, 8, 4] and seg_sizes == [1]


def test_forward_failure_is_a_503_forward_error(models: Models, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = models.runners["h1"]

    def explode(*_args: object) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(runner, "forward", explode)
    with pytest.raises(ForwardError) as caught:
        invoke(models, wire_record("h1", "embedding"))
    assert caught.value.status_code == 503 and "illegal memory access" in str(caught.value)
    monkeypatch.undo()
    assert len(invoke_json(models, wire_record("h1", "embedding"))["output"]) == 1536


def test_artifact_must_hold_the_models_the_endpoint_is_configured_for(
    artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_code.errors import ArtifactError

    monkeypatch.setenv("OPTIMUS_MODELS", "m-optimus,h1,tissue-seg")
    assert set(model_fn(artifact).runners) == {"h1", "m-optimus", "tissue-seg"}
    monkeypatch.setenv("OPTIMUS_MODELS", "h1,tissue-seg")
    with pytest.raises(ArtifactError, match="configured for models h1,tissue-seg but the artifact holds"):
        model_fn(artifact)


def test_bulk_rna_minus_one_marks_a_gene_not_measured_and_reaches_the_model_as_minus_one(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vendor SDK fills genes missing from a sample's RNA file with -1; its server hands -1 to the model
    (every other count as log1p). Any other negative value is still refused."""
    seen: list[np.ndarray] = []
    runner = models.runners["m-optimus"]
    real_module = runner.module

    def recording(tiles, bulk, probe_groups):  # type: ignore[no-untyped-def]
        seen.append(bulk.cpu().numpy().copy())
        return real_module(tiles, bulk, probe_groups)

    counts = [float(i % 7) for i in range(N_INPUT_GENES)]
    counts[0] = counts[5] = -1.0
    monkeypatch.setattr(runner, "module", recording)
    answer = invoke_json(models, wire_record("m-optimus", "prediction", bulk_rna=counts))
    assert len(answer["output"]) == N_OUTPUT_GENES
    expected = np.log1p(np.maximum(counts, 0)).astype(np.float32)
    expected[[0, 5]] = -1.0
    np.testing.assert_array_equal(seen[0][0], expected)
    for bad in (-2.0, -0.5, -1.0000001):
        counts[3] = bad
        with pytest.raises(ClientError, match="negative") as caught:
            invoke(models, wire_record("m-optimus", "prediction", bulk_rna=counts))
        assert caught.value.field == "bulk_rna" and "value 3" in caught.value.reason


def test_a_route_mode_contradicting_the_record_mode_is_refused(models: Models) -> None:
    from model_code.inference import parse_request
    from model_code.slides.options import slide_options

    record = wire_record("m-optimus", "embedding")
    with pytest.raises(ClientError, match="contradicts 'prediction' in the route") as caught:
        parse_request(orjson.dumps(record), "application/json", {"model_name": "m-optimus", "mode": "prediction"})
    assert caught.value.field == "mode"
    route = {"model_name": "m-optimus-stx", "mode": "embedding"}
    alias = parse_request(orjson.dumps(record), "application/json", route)
    assert alias.records[0].model == "m-optimus"  # type: ignore[union-attr]
    unknown = orjson.dumps({"model_name": "nope", "mode": "embedding"})  # was: agreed (both unknown names)
    with pytest.raises(ClientError, match="'nope' contradicts 'other' in the route"):
        parse_request(unknown, "application/json", {"model_name": "other", "mode": "embedding"})
    with pytest.raises(ClientError, match="'nope' contradicts 'other' in the route"):
        slide_options({}, [("model", "nope")], {"model": "other", "mode": "embedding"})


def test_a_record_for_a_model_not_hosted_gets_its_own_404_in_a_list(h1_only: Models) -> None:
    answers = invoke_json(h1_only, [wire_record("h1", "embedding"), wire_record("tissue-seg", "prediction")])
    assert len(answers[0]["output"]) == 1536
    assert (answers[1]["status"], answers[1]["field"], answers[1]["record"]) == (404, "model_name", 1)


def test_a_failing_tile_is_isolated_by_bisection_and_its_neighbours_answered(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = models.runners["h1"]
    real_forward = runner.forward
    passes: list[int] = []

    def fails_with_tile_3(tiles, chunk):  # type: ignore[no-untyped-def]
        passes.append(len(chunk))
        if any(record.echo["patch_idx"] == 3 for record in chunk):
            raise RuntimeError("CUDA error: device-side assert triggered")
        return real_forward(tiles, chunk)

    monkeypatch.setattr(runner, "forward", fails_with_tile_3)
    answers = invoke_json(models, [wire_record("h1", "embedding", patch_idx=i) for i in range(8)])
    assert [a.get("patch_idx") for a in answers] == [0, 1, 2, None, 4, 5, 6, 7]
    assert answers[3]["status"] == 503 and answers[3]["retryable"] and "device-side assert" in answers[3]["error"]
    assert passes == [8, 4, 2, 2, 1, 1, 4]  # 8 fails; 0-3 fails; 0-1 ok; 2-3 fails; 2 ok; 3 fails alone; 4-7 ok
    with pytest.raises(ForwardError):
        invoke(models, wire_record("h1", "embedding", patch_idx=3))

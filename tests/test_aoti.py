"""AOTInductor packages (the vendor's `.pt2` format), compiled on the CPU from the demo models: packaged,
described, and served through the same handler and server as the other formats; CUDA packages simulated
for the refusal paths (a real one needs a GPU: see bench/ and shared/GPU.md)."""

from __future__ import annotations

import json
import struct
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from kit import KitError
from kit.__main__ import main
from kit.artifacts.builder import Sources, package
from kit.artifacts.demo_models import TinyTissueSeg
from kit.artifacts.exporting import compile_aoti_package, vendor_metadata
from kit.endpoints.checks import smoke
from kit.endpoints.samples import wire_record
from model_code.aoti import cubin_arch, detect_format, read_facts
from model_code.catalogue import ECHO_FIELDS, arch_runs_on, instance_gpu, instances_for
from model_code.errors import ArtifactError
from model_code.inference import Models, input_fn, model_fn, output_fn, predict_fn
from model_code.manifest import read_manifest
from model_code.settings import Settings
from tests.support.images import png_bytes, random_tile
from tests.support.serving import Running, free_port, serve_in_thread

MODELS = ["h1", "m-optimus", "tissue-seg"]


@pytest.fixture(scope="module")
def aoti_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo models as CPU AOTInductor packages, as `kit package --demo --format aoti` writes them."""
    return package(MODELS, tmp_path_factory.mktemp("aoti"), demo=True, demo_format="aoti")


@pytest.fixture(scope="module")
def aoti_models(aoti_artifact: Path) -> Models:
    return model_fn(aoti_artifact)


@pytest.fixture(scope="module")
def aoti_running(aoti_artifact: Path) -> Iterator[Running]:
    with serve_in_thread(Settings(model_dir=aoti_artifact, port=free_port(), decode_workers=2)) as running:
        yield running


def invoke(models: Models, payload: object, content_type: str = "application/json") -> object:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    out, _ = output_fn(predict_fn(input_fn(body, content_type), models), content_type)
    if content_type == "application/jsonlines":
        return [orjson.loads(line) for line in out.splitlines()]
    return orjson.loads(out)


def test_manifest_records_the_format_device_precision_and_batch_bounds(aoti_artifact: Path) -> None:
    for entry in read_manifest(aoti_artifact).models:
        assert entry.format == "aoti-package" and entry.dtype == "float32" and entry.package is not None
        assert detect_format(aoti_artifact / entry.files["program"]) == "aoti-package"
        package_ = entry.package
        assert (package_.device, package_.cuda_arch, package_.shapes_from) == ("cpu", None, "probe")
        # Inductor may still assume a dynamic axis is 2 or more: single tiles are then padded (tests below).
        assert package_.batch_min in (1, 2) and package_.probed_with_torch == torch.__version__


def test_every_mode_of_every_model_answers_like_the_eager_demo(aoti_models: Models, models: Models) -> None:
    """The packages are compiled from the same seeded demo models as the default artifact: same answers."""
    png = png_bytes(random_tile(224, seed=3))
    seg_png = png_bytes(random_tile(512, seed=4))
    rna = [float(i % 7) for i in range(19374)]
    for model, mode in [
        ("h1", "embedding"),
        ("m-optimus", "embedding"),
        ("m-optimus", "prediction"),
        ("m-optimus", "prediction_with_embedding"),
        ("tissue-seg", "prediction"),
    ]:
        record = wire_record(model, mode, seg_png if model == "tissue-seg" else png)
        if model == "m-optimus":
            record["bulk_rna"] = rna
        compiled, eager = invoke(aoti_models, record), invoke(models, record)
        assert isinstance(compiled, dict) and isinstance(eager, dict)
        assert list(compiled) == list(eager) and {k: compiled[k] for k in ECHO_FIELDS} == {
            k: record[k] for k in ECHO_FIELDS
        }
        np.testing.assert_allclose(compiled["output"], eager["output"], rtol=1e-3, atol=1e-3)
        if mode == "prediction_with_embedding":
            np.testing.assert_allclose(compiled["embedding"], eager["embedding"], rtol=1e-3, atol=1e-3)


def test_metadata_states_format_and_precision(aoti_models: Models) -> None:
    answer = invoke(aoti_models, {**wire_record("h1", "metadata"), "image_data": ""})
    assert isinstance(answer, dict)
    assert answer["format"] == "aoti-package" and answer["dtype"] == "float32" and answer["embedding_dim"] == 1536


def test_vendor_batch_file_answers_every_line_in_order(aoti_models: Models, vendor: Path) -> None:
    body = (vendor / "batch" / "m_embed_inputs.jsonl").read_bytes()
    lines = invoke(aoti_models, body, "application/jsonlines")
    assert isinstance(lines, list) and len(lines) == 20
    requests = [json.loads(line) for line in body.decode().splitlines()]
    assert [line["patch_idx"] for line in lines] == [r["patch_idx"] for r in requests]
    assert all(len(line["output"]) == 1536 for line in lines)


def test_server_and_smoke_test_on_packages(aoti_running: Running) -> None:
    report = smoke({"optimus-aoti": MODELS}, endpoint_url=aoti_running.url, requests=3, region="us-east-1")
    assert report.passed, report.text()


def test_tile_api_route_on_a_package(aoti_running: Running) -> None:
    import httpx

    record = wire_record("tissue-seg", "prediction", png_bytes(random_tile(512, seed=1)))
    answer = httpx.post(f"{aoti_running.url}/api/predict/tissue-seg", json=record, timeout=60)
    assert answer.status_code == 200, answer.text
    assert set(answer.json()["output"]) <= {0.0, 1.0} and len(answer.json()["output"]) == 512 * 512


@pytest.fixture(scope="module")
def fixed_batch_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tissue-seg package with its batch axis fixed at 3 and no model_metadata.json (a plain package)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fixed") / "tissue_seg_aoti.pt2"
    return compile_aoti_package(TinyTissueSeg(), (torch.rand(3, 3, 512, 512),), path, batch=None)


def test_fixed_batch_package_is_probed_and_padded(tmp_path: Path, fixed_batch_package: Path) -> None:
    model_dir = package(["tissue-seg"], tmp_path, demo=False, sources=Sources(tissue_seg_program=fixed_batch_package))
    entry = read_manifest(model_dir).entry("tissue-seg")
    assert entry is not None and entry.package is not None
    assert (entry.package.batch_min, entry.package.batch_max, entry.package.shapes_from) == (3, 3, "probe")
    assert entry.source == "program file tissue_seg_aoti.pt2"
    models = model_fn(model_dir)
    assert models.runners["tissue-seg"].max_batch == 3
    records = [wire_record("tissue-seg", "prediction", png_bytes(random_tile(512, seed=i))) for i in range(4)]
    body = b"".join(orjson.dumps(r) + b"\n" for r in records)
    lines = invoke(models, body, "application/jsonlines")  # chunks of 3 and of 1 (padded to 3)
    assert isinstance(lines, list) and [len(line["output"]) for line in lines] == [512 * 512] * 4
    single = invoke(models, records[3])
    assert isinstance(single, dict) and single["output"] == lines[3]["output"]


# Simulated CUDA packages: a CPU package's archive with its wrapper metadata saying cuda and a cubin added.


def cubin(sm: int, abi: int = 7) -> bytes:
    """An ELF64 header as NVIDIA writes it for a cubin of architecture sm (e_flags at byte 48)."""
    flags = (sm << 8) if abi >= 8 else sm | 0x500
    header = b"\x7fELF\x02\x01\x01" + bytes([0x33, abi]) + bytes(7)
    return header + struct.pack("<HHIQQQI", 2, 190, 1, 0, 0, 0, flags) + bytes(12)


def as_cuda(source: Path, target: Path, sm: int, metadata: dict[str, object] | None = None) -> Path:
    """A copy of a CPU package that says it was compiled for CUDA sm_XY (with or without model_metadata.json)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename.endswith("wrapper_metadata.json"):
                wrapper = json.loads(data) | {"AOTI_DEVICE_KEY": "cuda", "AOTI_COMPUTE_CAPABILITY": str(sm)}
                data = json.dumps(wrapper).encode()
                new.writestr(item.filename.replace("wrapper_metadata.json", "kernel0.cubin"), cubin(sm))
            if not item.filename.endswith("model_metadata.json"):
                new.writestr(item, data)
        if metadata is not None:
            new.writestr(f"{target.stem}/extra/model_metadata.json", json.dumps(metadata))
    return target


def test_cubin_architecture_from_both_elf_layouts() -> None:
    assert cubin_arch(cubin(86)) == "sm_86" and cubin_arch(cubin(90, abi=8)) == "sm_90"
    assert cubin_arch(cubin(100, abi=8)) == "sm_100"
    with pytest.raises(ArtifactError, match="not an ELF object"):
        cubin_arch(b"MZ" + bytes(60))


def test_architecture_table_and_binary_compatibility() -> None:
    assert instance_gpu("ml.g5.xlarge") == ("NVIDIA A10G", "sm_86") and instance_gpu("ml.p5.48xlarge")[1] == "sm_90"  # type: ignore[index]
    assert instance_gpu("ml.m5.xlarge") is None
    assert arch_runs_on("sm_86", "sm_89") and arch_runs_on("sm_80", "sm_86") and not arch_runs_on("sm_86", "sm_80")
    assert (
        not arch_runs_on("sm_86", "sm_90") and not arch_runs_on("sm_90a", "sm_100") and arch_runs_on("sm_90a", "sm_90")
    )
    assert instances_for("sm_86") == ["ml.g5", "ml.g6", "ml.g6e"]


def test_cuda_package_refuses_to_load_on_a_cpu_host(
    tmp_path: Path, aoti_artifact: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = as_cuda(
        aoti_artifact / "h1" / "program.pt2", tmp_path / "h1_optimus_cls_token.pt2", 86, vendor_metadata("encoder")
    )
    facts = read_facts(fake)
    assert (facts.device, facts.cuda_arch) == ("cuda", "sm_86") and facts.declared is not None
    model_dir = package(["h1"], tmp_path / "out", demo=False, sources=Sources(h_optimus_program=fake))
    entry = read_manifest(model_dir).entry("h1")
    assert entry is not None and entry.package is not None
    assert (entry.package.shapes_from, entry.package.probed_with_torch, entry.package.cuda_arch) == (
        "model_metadata.json",
        None,
        "sm_86",
    )
    monkeypatch.setenv("OPTIMUS_DEVICE", "cpu")
    with pytest.raises(ArtifactError, match=r"compiled for CUDA \(sm_86\) and this host serves on 'cpu'"):
        model_fn(model_dir)
    assert main(["verify", str(model_dir), "--json", str(tmp_path / "report.json")]) == 0
    assert "skip h1          aoti-package float32 cuda sm_86: not run here" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["h1"]["cuda_arch"] == "sm_86" and report["h1"]["outputs"] == "not run here: needs a CUDA GPU (sm_86)"


def test_cuda_package_for_another_gpu_is_refused_naming_both(tmp_path: Path, aoti_artifact: Path) -> None:
    fake = as_cuda(
        aoti_artifact / "tissue-seg" / "program.pt2", tmp_path / "seg.pt2", 90, vendor_metadata("tissue-seg")
    )
    sources = Sources(tissue_seg_program=fake, instance_type="ml.g5.2xlarge")
    with pytest.raises(KitError, match=r"kernels for sm_90, the NVIDIA A10G of ml.g5.2xlarge is sm_86.*ml\.p5 "):
        package(["tissue-seg"], tmp_path / "out", demo=False, sources=sources)
    with pytest.raises(KitError, match=r"ml.m5.xlarge has none"):
        package(
            ["tissue-seg"],
            tmp_path / "out",
            demo=False,
            sources=Sources(tissue_seg_program=fake, instance_type="ml.m5.xlarge"),
        )
    assert package(
        ["tissue-seg"],
        tmp_path / "p5",
        demo=False,
        sources=Sources(tissue_seg_program=fake, instance_type="ml.p5.48xlarge"),
    )


def test_cuda_package_without_metadata_cannot_be_checked_without_a_gpu(tmp_path: Path, aoti_artifact: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU here runs the package instead")  # the CPU-only refusal path
    fake = as_cuda(aoti_artifact / "tissue-seg" / "program.pt2", tmp_path / "seg.pt2", 86)
    with pytest.raises(KitError, match=r"has no model_metadata.json.*GPU of that architecture"):
        package(["tissue-seg"], tmp_path / "out", demo=False, sources=Sources(tissue_seg_program=fake))


def test_metadata_contradicting_the_catalogue_is_refused(tmp_path: Path, aoti_artifact: Path) -> None:
    wrong = vendor_metadata("encoder")
    wrong["outputs"][0]["shape"] = ["batch", 768]  # type: ignore[index]
    fake = as_cuda(aoti_artifact / "h1" / "program.pt2", tmp_path / "h1.pt2", 86, wrong)
    with pytest.raises(
        ArtifactError, match=r"declares outputs \[\(768,\)\] per tile, the catalogue needs \[\(1536,\)\]"
    ):
        package(["h1"], tmp_path / "out", demo=False, sources=Sources(h_optimus_program=fake))


def test_package_for_the_wrong_model_is_refused_by_the_probe(tmp_path: Path, fixed_batch_package: Path) -> None:
    program = fixed_batch_package  # tissue-seg's, without model_metadata.json
    with pytest.raises(ArtifactError, match=r"'h1': the package does not take the catalogue's inputs") as refused:
        package(["h1"], tmp_path, demo=False, sources=Sources(h_optimus_program=program))
    assert "does not take the catalogue's inputs: input_handles[0]: unmatched dim value at 2" in str(refused.value)


def test_cli_demo_aoti_for_cuda_needs_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU here compiles the CUDA demo")
    args = ["package", "--demo", "--format", "aoti", "--aoti-device", "cuda", "--models", "tissue-seg"]
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert "compiling an AOTInductor package for CUDA needs a GPU on this machine" in capsys.readouterr().err


def test_package_that_crashes_the_loader_is_refused_not_fatal(tmp_path: Path, fixed_batch_package: Path) -> None:
    """A CUDA package segfaulted aoti_load_package on an H200: the load runs in a child process, so a crash
    becomes a refusal. Simulated with a CPU package whose kernel library crashes when it is loaded."""
    source = tmp_path / "crash.c"
    source.write_text("#include <signal.h>\n__attribute__((constructor)) static void crash(void) { raise(SIGSEGV); }\n")
    library = tmp_path / "crash.so"
    subprocess.run(["gcc", "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    crashing = tmp_path / "tissue_seg_aoti.pt2"
    with zipfile.ZipFile(fixed_batch_package) as old, zipfile.ZipFile(crashing, "w") as new:
        libraries = [item for item in old.infolist() if item.filename.endswith(".so")]
        assert libraries, "a CPU package holds its kernels as a shared library"
        for item in old.infolist():
            new.writestr(item, library.read_bytes() if item in libraries else old.read(item))
    with pytest.raises(KitError, match=r"crashed the process under torch .* on the CPU"):
        package(["tissue-seg"], tmp_path / "out", demo=False, sources=Sources(tissue_seg_program=crashing))
    assert not (tmp_path / "out" / "model").exists()

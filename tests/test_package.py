"""`python -m kit package` / `verify`: artifact layout, checksums, real-weight paths (timm, programs)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from kit import KitError
from kit.__main__ import main
from kit.artifacts.builder import Sources, package
from kit.artifacts.demo_models import TinyMOptimus, TinyTissueSeg, demo_gene_ids, write_gene_csv
from kit.artifacts.exporting import export_program
from kit.endpoints.samples import sample_png
from model_code.catalogue import N_INPUT_GENES, N_OUTPUT_GENES
from model_code.errors import ArtifactError
from model_code.inference import model_fn
from model_code.loaders import build_vit
from model_code.manifest import read_manifest, sha256_file
from tests.support.handler import embed
from tests.support.paths import REPO
from tests.support.tiny_vit import TINY_VIT, normalised


def test_demo_artifact_layout_manifest_and_tarball(artifact: Path) -> None:
    manifest = read_manifest(artifact)
    assert [m.name for m in manifest.models] == ["h1", "m-optimus", "tissue-seg"]
    files = sorted(str(p.relative_to(artifact)) for p in artifact.rglob("*") if p.is_file())
    assert files == sorted([*manifest.sha256, "manifest.json"])
    for rel, digest in manifest.sha256.items():
        assert sha256_file(artifact / rel) == digest
    seg = manifest.entry("tissue-seg")
    assert seg is not None and seg.tile_size == 512 and seg.normalisation is None and seg.demo
    m = manifest.entry("m-optimus")
    assert m is not None and m.outputs == {"embedding": 1536, "prediction": N_OUTPUT_GENES}
    with tarfile.open(artifact.parent / "model.tar.gz") as archive:
        members = archive.getmembers()
    assert sorted(m.name for m in members) == files
    assert all(m.mode == 0o644 and m.uid == 0 for m in members)


def test_demo_packaging_is_reproducible(tmp_path: Path, artifact: Path) -> None:
    again = package(["h1", "m-optimus", "tissue-seg"], tmp_path, demo=True)
    assert read_manifest(again).sha256 == read_manifest(artifact).sha256


def test_models_picks_a_subset(tmp_path: Path) -> None:
    model_dir = package(["tissue-seg", "h1"], tmp_path, demo=True)
    assert [m.name for m in read_manifest(model_dir).models] == ["tissue-seg", "h1"]
    assert not (model_dir / "m-optimus").exists()


def test_tampered_file_is_refused_at_load(tmp_path: Path) -> None:
    model_dir = package(["h1"], tmp_path, demo=True)
    weights = model_dir / "h1" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        model_fn(model_dir)
    assert main(["verify", str(model_dir)]) == 1


def test_missing_file_is_refused_at_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = package(["tissue-seg"], tmp_path, demo=True)
    (model_dir / "tissue-seg" / "program.pt2").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        model_fn(model_dir)
    assert main(["verify", str(model_dir)]) == 1
    assert "program.pt2 is listed in the manifest but missing" in capsys.readouterr().err


def test_directory_without_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"manifest.json is missing"):
        model_fn(tmp_path)


def test_cli_package_and_verify(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kit",
            "package",
            "--demo",
            "--models",
            "h1,tissue-seg",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "model.tar.gz" in done.stdout
    verified = subprocess.run(
        [sys.executable, "-m", "kit", "verify", str(tmp_path / "model"), "--json", str(tmp_path / "report.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stderr
    assert "ok   tissue-seg  torch-export float32: prediction 262144 values" in verified.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert {name: row["outputs"] for name, row in report.items()} == {
        "h1": {"embedding": 1536},
        "tissue-seg": {"prediction": 262144},
    }
    assert report["h1"]["format"] == "timm-safetensors" and report["tissue-seg"]["format"] == "torch-export"
    assert report["h1"]["precision"] == "float32" and report["h1"]["ran_with_torch"] == torch.__version__


def test_cli_refuses_unknown_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["package", "--demo", "--models", "h1,h42", "--out", str(tmp_path)]) == 2
    assert "--models: unknown model 'h42'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_vit() -> torch.nn.Module:
    from model_code.catalogue import H_OPTIMUS_TIMM

    torch.manual_seed(7)
    model = build_vit({**H_OPTIMUS_TIMM, **TINY_VIT}).eval()
    with torch.no_grad():  # timm zero-initialises some tensors; give every weight a value
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def reference_embedding(model: torch.nn.Module, png: bytes) -> np.ndarray:
    """What timm itself gives for the tile."""
    with torch.no_grad():
        return model(normalised(png))[0].numpy()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_checkpoint_round_trip_matches_timm(tmp_path: Path, tiny_vit: torch.nn.Module, suffix: str) -> None:
    checkpoint = tmp_path / f"checkpoint{suffix}"
    state = {k: v.contiguous() for k, v in tiny_vit.state_dict().items()}
    if suffix == ".pth":
        torch.save(state, checkpoint)
    else:
        save_file(state, str(checkpoint))
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_VIT))
    sources = Sources(timm_checkpoint=checkpoint, timm_config=config, dtype="float32")
    model_dir = package(["h1"], tmp_path / "out", demo=False, sources=sources)
    entry = read_manifest(model_dir).entry("h1")
    assert entry is not None and not entry.demo and entry.timm_config is not None
    assert entry.timm_config["reg_tokens"] == 4 and entry.timm_config["mlp_layer"] == "SwiGLUPacked"
    png = sample_png(224)
    np.testing.assert_allclose(embed(model_dir, "h1", png), reference_embedding(tiny_vit, png), rtol=1e-4, atol=1e-5)


def test_float16_weights_are_stored_half_and_served_close(tmp_path: Path, tiny_vit: torch.nn.Module) -> None:
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save(tiny_vit.state_dict(), checkpoint)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_VIT))
    model_dir = package(["h0"], tmp_path / "out", demo=False, sources=Sources(checkpoint, config, dtype="float16"))
    assert {t.dtype for t in load_file(str(model_dir / "h0" / "weights.safetensors")).values()} == {torch.float16}
    png = sample_png(224)
    np.testing.assert_allclose(embed(model_dir, "h0", png), reference_embedding(tiny_vit, png), rtol=2e-2, atol=2e-2)


def test_checkpoint_that_does_not_fit_is_refused(tmp_path: Path, tiny_vit: torch.nn.Module) -> None:
    checkpoint = tmp_path / "checkpoint.pth"
    state = dict(tiny_vit.state_dict())
    del state["reg_token"]
    torch.save(state, checkpoint)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_VIT))
    with pytest.raises(ArtifactError, match=r"(?s)does not fit the architecture.*reg_token"):
        package(["h1"], tmp_path / "out", demo=False, sources=Sources(checkpoint, config, dtype="float32"))


def test_real_weights_need_their_files(tmp_path: Path) -> None:
    with pytest.raises(KitError, match="--timm-checkpoint is required"):
        package(["h1"], tmp_path, demo=False)
    with pytest.raises(KitError, match="does not exist"):
        package(["tissue-seg"], tmp_path, demo=False, sources=Sources(tissue_seg_program=tmp_path / "nope.pt2"))


@pytest.fixture(scope="module")
def vendor_like_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Exported programs and gene CSVs in the vendor's formats (made from the tiny models)."""
    root = tmp_path_factory.mktemp("vendor-files")
    example = (torch.rand(2, 3, 224, 224), torch.rand(2, N_INPUT_GENES), torch.zeros(2, dtype=torch.int64))
    export_program(TinyMOptimus(), example, root / "m.pt2")
    export_program(TinyTissueSeg(), (torch.rand(2, 3, 512, 512),), root / "seg.pt2")
    write_gene_csv(root / "in.csv", demo_gene_ids(N_INPUT_GENES, "input_genes"))
    write_gene_csv(root / "out.csv", demo_gene_ids(N_OUTPUT_GENES, "output_genes"))
    write_gene_csv(root / "short.csv", demo_gene_ids(100, "input_genes"))
    return {
        "m": root / "m.pt2",
        "seg": root / "seg.pt2",
        "in": root / "in.csv",
        "out": root / "out.csv",
        "short": root / "short.csv",
    }


def test_exported_programs_and_gene_sets_package(tmp_path: Path, vendor_like_files: dict[str, Path]) -> None:
    files = vendor_like_files
    sources = Sources(
        m_optimus_program=files["m"],
        input_genes=files["in"],
        output_genes=files["out"],
        tissue_seg_program=files["seg"],
    )
    model_dir = package(["m-optimus", "tissue-seg"], tmp_path, demo=False, sources=sources)
    assert sha256_file(model_dir / "m-optimus" / "program.pt2") == sha256_file(files["m"])
    assert len(embed(model_dir, "m-optimus", sample_png(224))) == 1536


def test_gene_set_of_wrong_length_is_refused(tmp_path: Path, vendor_like_files: dict[str, Path]) -> None:
    files = vendor_like_files
    sources = Sources(m_optimus_program=files["m"], input_genes=files["short"], output_genes=files["out"])
    with pytest.raises(ArtifactError, match="100 genes after the header, expected 19374"):
        package(["m-optimus"], tmp_path, demo=False, sources=sources)
    with pytest.raises(KitError, match="--output-genes is required"):
        package(
            ["m-optimus"],
            tmp_path,
            demo=False,
            sources=Sources(m_optimus_program=files["m"], input_genes=files["in"]),
        )


def test_program_that_is_not_an_archive_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fake.pt2"
    fake.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match=r"is not a \.pt2 archive \(a zip file\)"):
        package(["tissue-seg"], tmp_path / "out", demo=False, sources=Sources(tissue_seg_program=fake))


def test_h0_mini_pools_cls_and_mean_patch_tokens(tmp_path: Path) -> None:
    model_dir = package(["h0-mini"], tmp_path, demo=True)
    models = model_fn(model_dir)
    vit = models.runners["h0-mini"].module
    png = sample_png(224)
    with torch.no_grad():
        tokens = vit.forward_features(normalised(png))  # type: ignore[operator]
    expected = torch.cat([tokens[0, 0], tokens[0, 5:].mean(0)]).numpy()  # CLS, then patches after 4 registers
    out = embed(model_dir, "h0-mini", png)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)

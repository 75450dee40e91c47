"""Real weights as published (issue 12): the catalogue's architectures against timm's registry (on the meta
device), snapshot directories as downloaded, configs that contradict the catalogue, H0-mini at real size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import SwiGLUPacked

from kit import KitError
from kit.artifacts.builder import Sources, package
from kit.endpoints.samples import sample_png
from model_code.catalogue import H0_MINI_TIMM, H_OPTIMUS_NORMALISATION, H_OPTIMUS_TIMM
from model_code.inference import model_fn
from model_code.loaders import build_vit
from model_code.manifest import read_manifest
from tests.support.handler import embed
from tests.support.tiny_vit import TINY_VIT, normalised


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def test_h_optimus_architecture_is_timms_registry_entry() -> None:
    with torch.device("meta"):
        ours = build_vit(H_OPTIMUS_TIMM)
        timms = timm.create_model(
            "vit_giant_patch14_reg4_dinov2", pretrained=False, init_values=1e-5, img_size=224, num_classes=0
        )
    assert shapes(ours) == shapes(timms)
    assert ours.blocks[0].ls1.gamma.shape == (1536,)  # type: ignore[union-attr]  # layer scale (init_values)
    assert type(ours.blocks[0].mlp) is type(timms.blocks[0].mlp)  # type: ignore[index]
    count = sum(p.numel() for p in ours.parameters())
    assert 1.12e9 < count < 1.14e9, count


def test_h0_mini_architecture_is_vit_b_with_swiglu_and_about_86m_parameters() -> None:
    with torch.device("meta"):
        ours = build_vit(H0_MINI_TIMM)
        timms = timm.create_model(
            "vit_base_patch14_reg4_dinov2",
            pretrained=False,
            img_size=224,
            num_classes=0,
            init_values=1e-5,
            mlp_ratio=5.33334,
            mlp_layer=SwiGLUPacked,
            act_layer=torch.nn.SiLU,
        )
    assert shapes(ours) == shapes(timms)
    assert ours.blocks[0].mlp.fc1.weight.shape == (4096, 768)  # type: ignore[union-attr]  # SwiGLU: 2 x 2048
    assert ours.num_prefix_tokens == 5 and ours.patch_embed.num_patches == 256  # type: ignore[union-attr]
    count = sum(p.numel() for p in ours.parameters())
    assert 85e6 < count < 87e6, count


def published_config(architecture: str, embed_dim: int, **extra: Any) -> dict[str, Any]:
    """config.json as the model hub serves it for H-optimus-0 (and, with its names, H0-mini)."""
    return {
        "architecture": architecture,
        "num_classes": 0,
        "num_features": embed_dim,
        "global_pool": "token",
        "pretrained_cfg": {
            "input_size": [3, 224, 224],
            "fixed_input_size": True,
            "mean": list(H_OPTIMUS_NORMALISATION["mean"]),
            "std": list(H_OPTIMUS_NORMALISATION["std"]),
            "num_classes": 0,
            "license": "apache-2.0",
        },
        **extra,
    }


@pytest.fixture(scope="module")
def tiny_snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.nn.Module]:
    """An H-optimus-0 snapshot directory (config.json + pytorch_model.bin) holding a tiny ViT, and its config."""
    root = tmp_path_factory.mktemp("snapshot")
    torch.manual_seed(3)
    model = build_vit({**H_OPTIMUS_TIMM, **TINY_VIT}).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    snapshot = root / "H-optimus-0"
    snapshot.mkdir()
    torch.save(model.state_dict(), snapshot / "pytorch_model.bin")
    (snapshot / "config.json").write_text(json.dumps(published_config("vit_giant_patch14_reg4_dinov2", 1536)))
    override = root / "tiny.json"
    override.write_text(json.dumps(TINY_VIT))
    return snapshot, override, model


def test_snapshot_directory_packages_and_serves_like_timm(
    tmp_path: Path, tiny_snapshot: tuple[Path, Path, torch.nn.Module]
) -> None:
    snapshot, override, model = tiny_snapshot
    sources = Sources(timm_checkpoint=snapshot, timm_config=override, dtype="float32")
    model_dir = package(["h0"], tmp_path, demo=False, sources=sources)
    entry = read_manifest(model_dir).entry("h0")
    assert entry is not None
    assert (
        entry.licence == "apache-2.0" and entry.source == "timm checkpoint H-optimus-0 (vit_giant_patch14_reg4_dinov2)"
    )
    png = sample_png(224)
    with torch.no_grad():
        expected = model(normalised(png))[0].numpy()
    np.testing.assert_allclose(embed(model_dir, "h0", png), expected, rtol=1e-4, atol=1e-5)
    metadata = model_fn(model_dir).runners["h0"].metadata()
    assert (metadata["licence"], metadata["pooling"]) == ("apache-2.0", "cls")
    assert metadata["weights_source"].startswith("timm checkpoint H-optimus-0")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "vit_large_patch14_reg4_dinov2"}, "architecture is 'vit_large_patch14_reg4_dinov2', the "
         "catalogue's 'h0' needs 'vit_giant_patch14_reg4_dinov2'"),
        ({"num_features": 1024}, "num_features is 1024, the catalogue's 'h0' needs 1536"),
        ({"global_pool": "avg"}, "global_pool is 'avg', the catalogue's 'h0' needs 'token'"),
        ({"model_args": {"mlp_ratio": 4.0}}, "model_args.mlp_ratio is 4.0, the catalogue's 'h0' needs 5.33334"),
        ({"pretrained_cfg": {"mean": [0.485, 0.456, 0.406]}}, "pretrained_cfg.mean is [0.485, 0.456, 0.406]"),
        ({"pretrained_cfg": {"input_size": [3, 518, 518]}}, "pretrained_cfg.input_size is [3, 518, 518], the "
         "catalogue's 'h0' needs [3, 224, 224]"),
    ],
)  # fmt: skip
def test_config_contradicting_the_catalogue_is_refused_naming_both(
    tmp_path: Path, tiny_snapshot: tuple[Path, Path, torch.nn.Module], change: dict[str, Any], message: str
) -> None:
    snapshot, override, _ = tiny_snapshot
    bad = tmp_path / "snapshot"
    bad.mkdir()
    (bad / "pytorch_model.bin").symlink_to(snapshot / "pytorch_model.bin")
    (bad / "config.json").write_text(json.dumps({**json.loads((snapshot / "config.json").read_text()), **change}))
    with pytest.raises(KitError) as refused:
        package(["h0"], tmp_path / "out", demo=False, sources=Sources(timm_checkpoint=bad, timm_config=override))
    assert message in str(refused.value)


def test_snapshot_without_weights_or_config_is_refused(tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "README.md").write_text("hub card")
    with pytest.raises(KitError, match=r"no model.safetensors or pytorch_model.bin \(it holds \['README.md'\]\)"):
        package(["h0"], tmp_path / "out", demo=False, sources=Sources(timm_checkpoint=snapshot))
    save_file({"x": torch.zeros(1)}, str(snapshot / "model.safetensors"))
    with pytest.raises(KitError, match=r"no config\.json naming its timm architecture"):
        package(["h0"], tmp_path / "out", demo=False, sources=Sources(timm_checkpoint=snapshot))


def test_h0_mini_snapshot_packages_loads_and_pools_cls_and_mean_patch(tmp_path: Path) -> None:
    """H0-mini's blocks at their real size, two of the twelve (packaging 86 M parameters takes a minute here)."""
    torch.manual_seed(5)
    model = build_vit({**H0_MINI_TIMM, "depth": 2}).eval()
    snapshot = tmp_path / "H0-mini"
    snapshot.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))
    config = published_config("vit_base_patch14_reg4_dinov2", 768)
    config["pretrained_cfg"]["license"] = "cc-by-nc-nd-4.0"
    (snapshot / "config.json").write_text(json.dumps(config))
    depth = tmp_path / "depth.json"
    depth.write_text('{"depth": 2}')
    model_dir = package(["h0-mini"], tmp_path / "out", demo=False, sources=Sources(snapshot, depth, dtype="float32"))
    png = sample_png(224)
    with torch.no_grad():
        tokens = model.forward_features(normalised(png))
    expected = torch.cat([tokens[0, 0], tokens[0, 5:].mean(0)]).numpy()
    np.testing.assert_allclose(embed(model_dir, "h0-mini", png), expected, rtol=1e-3, atol=1e-4)
    metadata = model_fn(model_dir).runners["h0-mini"].metadata()
    assert metadata["pooling"] == "cls+mean_patch" and metadata["licence"] == "cc-by-nc-nd-4.0"


def test_vit_loads_on_the_meta_device_into_the_stored_dtype(tmp_path: Path) -> None:
    """model_fn builds no random weights and makes no fp32 copy: parameters are the file's fp16 tensors."""
    model_dir = package(["h0-mini"], tmp_path, demo=True)
    entry = read_manifest(model_dir).entry("h0-mini")
    assert entry is not None
    path = model_dir / entry.files["weights"]
    half = tmp_path / "half.safetensors"
    from safetensors.torch import load_file

    save_file({k: v.half() for k, v in load_file(str(path)).items()}, str(half))
    from model_code.loaders import load_vit

    vit = load_vit(dict(entry.timm_config or {}), half, torch.device("cpu"))
    assert {p.dtype for p in vit.parameters()} == {torch.float16}
    assert not any(p.is_meta for p in vit.parameters())

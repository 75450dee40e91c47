"""Tiny stand-ins for the real models: the real input and output shapes and file formats, small insides.

They go through exactly the loading and serving code real weights go through, so the demo and the
tests exercise the real path on a CPU in seconds. Their outputs mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kit.artifacts.exporting import compile_aoti_package, export_program, save_state_dict, vendor_metadata
from kit.artifacts.programs import describe_program
from model_code.catalogue import MODELS, N_INPUT_GENES, N_OUTPUT_GENES
from model_code.loaders import build_vit, embed
from model_code.manifest import ModelEntry
from stacks.names import DEFAULT_INSTANCE_TYPE

# A one-block ViT keeping H-Optimus's features (registers, SwiGLU, layer scale) with a head to 1536.
DEMO_VIT = {"embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "num_classes": 1536}
# H0-mini's output is CLS + mean patch token, so its width must stay 768.
DEMO_VIT_MEAN_POOLED = {"embed_dim": 768, "depth": 1, "num_heads": 12, "mlp_ratio": 0.5, "num_classes": 0}


class TinyMOptimus(nn.Module):
    """(tiles [N,3,224,224], log1p RNA [N,19374], probe groups [N]) -> (log1p counts [N,6002], embedding [N,1536])."""

    def __init__(self) -> None:
        super().__init__()
        self.tile = nn.Linear(3 * 8 * 8, 64)
        self.rna = nn.Linear(N_INPUT_GENES, 64)
        self.embed = nn.Linear(128, 1536)
        self.predict = nn.Linear(128, N_OUTPUT_GENES)

    def forward(
        self, tiles: torch.Tensor, bulk_rna: torch.Tensor, probe_groups: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = F.avg_pool2d(tiles, 28).flatten(1)
        hidden = torch.tanh(torch.cat([self.tile(pooled), self.rna(bulk_rna)], dim=1))
        return F.softplus(self.predict(hidden)), self.embed(hidden)


class TinyTissueSeg(nn.Module):
    """tiles [N,3,512,512] in [0, 1] -> logits [N,1,512,512]: a fixed colour rule that finds real H&E tissue.

    Stained tissue is coloured (HSV saturation well above 0.1 at 8 um/px) while glass, background and
    dust are grey (saturation near 0): the logit is the saturation, smoothed over 7x7 pixels (as CLAM
    smooths before thresholding), minus 0.05, scaled so the sigmoid is sharp.
    """

    threshold = 0.05
    smoothing = 7

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        brightest = tiles.amax(dim=1, keepdim=True)
        saturation = (brightest - tiles.amin(dim=1, keepdim=True)) / (brightest + 1e-3)
        smooth = F.avg_pool2d(saturation, self.smoothing, 1, self.smoothing // 2, count_include_pad=False)
        return (smooth - self.threshold) * 100


class EncoderProgram(nn.Module):
    """A timm ViT as an encoder program: tiles [N,3,224,224] -> embedding [N,1536] (CLS, or CLS and mean
    patch token), the shape of the vendor's h1_optimus_cls_token.pt2."""

    def __init__(self, vit: nn.Module, pooling: str = "cls"):
        super().__init__()
        self.vit = vit
        self.pooling = pooling

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return embed(self.vit, tiles, self.pooling)


def demo_gene_ids(count: int, role: str) -> list[str]:
    """Placeholder Ensembl-shaped IDs (ENSG99... does not exist in Ensembl)."""
    offset = 0 if role == "input_genes" else 500_000
    return [f"ENSG99{offset + i:09d}" for i in range(count)]


def write_gene_csv(path: Path, genes: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("ensembl_gene_id\n" + "".join(f"{gene}\n" for gene in genes))


def build_demo_model(
    name: str,
    model_dir: Path,
    format: str = "native",
    device: str = "cpu",
    instance_type: str = DEFAULT_INSTANCE_TYPE,
) -> ModelEntry:
    """Write a tiny model `name` under model_dir (seeded: the same files every time) and describe it.

    format "native": encoders as timm safetensors, the others as torch.export programs; "aoti": every
    model as an AOTInductor package compiled for `device`, with the vendor's model_metadata.json.
    """
    torch.manual_seed(0)
    spec = MODELS[name]
    program = f"{name}/program.pt2"
    files = {"program": program}
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    if spec.family == "encoder":
        assert spec.timm_config is not None
        tiny = DEMO_VIT_MEAN_POOLED if spec.pooling == "cls+mean_patch" else DEMO_VIT
        config = {**spec.timm_config, **tiny}
        vit = build_vit(config)
        if format == "native":
            weights = f"{name}/weights.safetensors"
            save_state_dict(vit, model_dir / weights, "float32")
            return ModelEntry.for_model(
                name,
                format="timm-safetensors",
                files={"weights": weights},
                dtype="float32",
                demo=True,
                timm_config=config,
            )
        module, example = EncoderProgram(vit.eval(), spec.pooling), (torch.rand(2, 3, 224, 224),)
    elif spec.family == "m-optimus":
        module = TinyMOptimus()
        example = (torch.rand(2, 3, 224, 224), torch.rand(2, N_INPUT_GENES), torch.zeros(2, dtype=torch.int64))
        for role, count in {"input_genes": N_INPUT_GENES, "output_genes": N_OUTPUT_GENES}.items():
            files[role] = f"{name}/{role}.csv"
            write_gene_csv(model_dir / files[role], demo_gene_ids(count, role))
    else:
        module, example = TinyTissueSeg(), (torch.rand(2, 3, 512, 512),)
    if format == "aoti":
        metadata = vendor_metadata(spec.family)
        compile_aoti_package(module, example, model_dir / program, device=device, metadata=metadata)
    else:
        export_program(module, example, model_dir / program)
    described = describe_program(name, model_dir / program, instance_type)
    return ModelEntry.for_model(name, files=files, demo=True, **described)

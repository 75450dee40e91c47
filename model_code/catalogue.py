"""The models the kit serves: wire names, modes, tile geometry and output sizes (see DESIGN.md).

This module has no heavy imports so that `stacks/` and `kit/` can read it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

EMBEDDING = "embedding"
PREDICTION = "prediction"
PREDICTION_WITH_EMBEDDING = "prediction_with_embedding"
METADATA = "metadata"
MODES = (EMBEDDING, PREDICTION, PREDICTION_WITH_EMBEDDING, METADATA)

# Tile fields the vendor's client sends and every response echoes, in the vendor's order.
ECHO_FIELDS = ("slide_name", "x", "y", "width", "height", "tissue_ratio", "patch_idx", "resolution")

H_OPTIMUS_NORMALISATION = {"mean": (0.707223, 0.578729, 0.703617), "std": (0.211883, 0.230117, 0.177517)}

N_INPUT_GENES = 19374
N_OUTPUT_GENES = 6002

# timm VisionTransformer keyword arguments; layer classes are named and resolved by model_code.loaders.
H_OPTIMUS_TIMM = {
    "img_size": 224,
    "patch_size": 14,
    "embed_dim": 1536,
    "depth": 40,
    "num_heads": 24,
    "init_values": 1e-5,
    "mlp_ratio": 5.33334,
    "mlp_layer": "SwiGLUPacked",
    "act_layer": "SiLU",
    "reg_tokens": 4,
    "no_embed_class": True,
    "num_classes": 0,
    "dynamic_img_size": False,
}
H0_MINI_TIMM = {
    **H_OPTIMUS_TIMM,
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "mlp_ratio": 5.33334,  # SwiGLU hidden 2048: about 86 M parameters (4.0 would give about 72 M)
}


@dataclass(frozen=True)
class ModelSpec:
    """What the wire protocol promises about one model, whatever weights it is packaged with."""

    name: str
    family: str  # "encoder" (timm ViT), "m-optimus" or "tissue-seg" (exported programs)
    modes: tuple[str, ...]
    tile_size: int
    resolution: float  # micrometres per pixel
    outputs: dict[str, int]  # output name -> length per tile
    normalisation: dict[str, tuple[float, float, float]] | None
    timm_config: dict[str, object] | None = None
    timm_architecture: str | None = None  # the name in timm's registry a checkpoint's config.json gives
    pooling: str = "cls"  # encoders: "cls" or "cls+mean_patch"
    bulk_rna_genes: int = 0  # length of the optional bulk_rna input; 0: the model takes none
    aliases: tuple[str, ...] = field(default=())
    licence: str = "the vendor's licence agreement"
    weights_source: str = "delivered by Bioptimus under contract"

    @property
    def embedding_dim(self) -> int | None:
        return self.outputs.get(EMBEDDING)


H1 = ModelSpec(
    name="h1",
    family="encoder",
    modes=(EMBEDDING, METADATA),
    tile_size=224,
    resolution=0.5,
    outputs={EMBEDDING: 1536},
    normalisation=H_OPTIMUS_NORMALISATION,
    timm_config=H_OPTIMUS_TIMM,
    timm_architecture="vit_giant_patch14_reg4_dinov2",
    licence="CC-BY-NC-ND-4.0 for the public weights (non-commercial); commercial use under the vendor's licence",
    weights_source="https://huggingface.co/bioptimus/H-optimus-1, or the vendor's delivery (AWS Marketplace)",
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        H1,
        replace(H1, name="h0", licence="Apache-2.0", weights_source="https://huggingface.co/bioptimus/H-optimus-0"),
        replace(
            H1,
            name="h0-mini",
            timm_config=H0_MINI_TIMM,
            timm_architecture="vit_base_patch14_reg4_dinov2",
            pooling="cls+mean_patch",
            licence="CC-BY-NC-ND-4.0",
            weights_source="https://huggingface.co/bioptimus/H0-mini",
        ),
        ModelSpec(
            name="m-optimus",
            family="m-optimus",
            modes=(EMBEDDING, PREDICTION, PREDICTION_WITH_EMBEDDING, METADATA),
            tile_size=224,
            resolution=0.5,
            outputs={EMBEDDING: 1536, PREDICTION: N_OUTPUT_GENES},
            normalisation=H_OPTIMUS_NORMALISATION,
            bulk_rna_genes=N_INPUT_GENES,
            aliases=("m-optimus-stx",),
        ),
        ModelSpec(
            name="tissue-seg",
            family="tissue-seg",
            modes=(PREDICTION, METADATA),
            tile_size=512,
            resolution=8.0,
            outputs={PREDICTION: 512 * 512},
            normalisation=None,  # the program takes RGB scaled to [0, 1]
        ),
    )
}

ALIASES: dict[str, str] = {alias: spec.name for spec in MODELS.values() for alias in (spec.name, *spec.aliases)}

# The vendor's two model packages; one endpoint hosts one package.
PACKAGES: dict[str, tuple[str, ...]] = {"H1": ("h1", "tissue-seg"), "M": ("m-optimus", "tissue-seg")}


# What a program (torch.export or AOTInductor package) of each family takes and returns, per tile: the
# batch axis comes first and is left out here. Kinds: "float" (the package's precision) or "int64".
PROGRAM_INPUTS: dict[str, tuple[tuple[str, tuple[int, ...], str], ...]] = {
    "encoder": (("tiles", (3, 224, 224), "float"),),
    "m-optimus": (
        ("tiles", (3, 224, 224), "float"),
        ("bulk_rna", (N_INPUT_GENES,), "float"),
        ("probe_groups", (), "int64"),
    ),
    "tissue-seg": (("tiles", (3, 512, 512), "float"),),
}
PROGRAM_OUTPUTS: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {
    "encoder": (("embedding", (1536,)),),
    "m-optimus": (("predictions", (N_OUTPUT_GENES,)), ("embedding", (1536,))),
    "tissue-seg": (("logits", (1, 512, 512)),),
}

# The GPU of each SageMaker instance family and its CUDA architecture (compute capability).
INSTANCE_GPUS: dict[str, tuple[str, str]] = {
    "ml.g4dn": ("NVIDIA T4", "sm_75"),
    "ml.g5": ("NVIDIA A10G", "sm_86"),
    "ml.g6": ("NVIDIA L4", "sm_89"),
    "ml.g6e": ("NVIDIA L40S", "sm_89"),
    "ml.p3": ("NVIDIA V100", "sm_70"),
    "ml.p4d": ("NVIDIA A100", "sm_80"),
    "ml.p4de": ("NVIDIA A100", "sm_80"),
    "ml.p5": ("NVIDIA H100", "sm_90"),
    "ml.p5e": ("NVIDIA H200", "sm_90"),
    "ml.p5en": ("NVIDIA H200", "sm_90"),
    "ml.p6-b200": ("NVIDIA B200", "sm_100"),
}


def instance_gpu(instance_type: str) -> tuple[str, str] | None:
    """(GPU name, CUDA architecture) of an instance type such as ml.g5.xlarge; None for CPU instances."""
    return INSTANCE_GPUS.get(instance_type.rsplit(".", 1)[0])


def arch_runs_on(compiled: str, gpu: str) -> bool:
    """Whether kernels compiled for `compiled` (sm_86, sm_90a) run on a `gpu` (sm_89): CUDA binaries run on
    the same major architecture at an equal or higher minor; arch-specific ("a") code only on its own."""
    code, here = compiled.removeprefix("sm_"), gpu.removeprefix("sm_")
    if code.endswith("a"):
        return code[:-1] == here.rstrip("a")
    want, have = int(code), int(here.rstrip("a"))
    return want // 10 == have // 10 and want % 10 <= have % 10


def instances_for(arch: str) -> list[str]:
    """Instance families whose GPU runs kernels compiled for `arch`."""
    return [family for family, (_, gpu) in INSTANCE_GPUS.items() if arch_runs_on(arch, gpu)]


def canonical_name(name: str) -> str | None:
    """The catalogue name for a wire name or alias, or None when the kit does not know it."""
    return ALIASES.get(name)

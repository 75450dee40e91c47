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
    "mlp_ratio": 4.0,
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
    pooling: str = "cls"  # encoders: "cls" or "cls+mean_patch"
    bulk_rna_genes: int = 0  # length of the optional bulk_rna input; 0: the model takes none
    aliases: tuple[str, ...] = field(default=())

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
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        H1,
        replace(H1, name="h0"),  # H-optimus-0: the same architecture, public weights
        replace(H1, name="h0-mini", timm_config=H0_MINI_TIMM, pooling="cls+mean_patch"),
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


def canonical_name(name: str) -> str | None:
    """The catalogue name for a wire name or alias, or None when the kit does not know it."""
    return ALIASES.get(name)

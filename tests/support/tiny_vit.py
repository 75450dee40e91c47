"""A small ViT with every H-Optimus feature, and tiles normalised as the H-Optimus model card says: what the
packaging and weights tests compare the served embeddings with."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import torch
from PIL import Image

from model_code.catalogue import H_OPTIMUS_NORMALISATION

# 4 registers, SwiGLU packed MLP, layer scale, no class embedding (H-Optimus's, from the catalogue's timm
# arguments) and a head to 1536 so it meets the h1 wire contract: build_vit({**H_OPTIMUS_TIMM, **TINY_VIT}).
TINY_VIT = {"embed_dim": 48, "depth": 2, "num_heads": 3, "mlp_ratio": 2.0, "num_classes": 1536}


def normalised(png: bytes) -> torch.Tensor:
    """[1, 3, H, W] float tile, normalised as the H-Optimus model card says."""
    pixels = np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.float32) / 255
    mean, std = (np.array(H_OPTIMUS_NORMALISATION[k], dtype=np.float32) for k in ("mean", "std"))
    return torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1)).unsqueeze(0)

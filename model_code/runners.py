"""Batched forward passes: uint8 tiles in, per-tile numpy outputs out, one forward per chunk of tiles.

Tiles travel to the device as uint8 (a quarter of float32's bytes) and are normalised there. On a GPU
the forward runs under fp16 autocast (the vendor's advice); on a CPU in the weights' dtype. An
AOTInductor package runs in the precision compiled into it (no autocast), on the device it was built for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model_code.catalogue import EMBEDDING, MODELS, PREDICTION
from model_code.errors import ForwardError
from model_code.loaders import embed
from model_code.manifest import ModelEntry
from model_code.records import Record

# The vendor's names for the outputs in the metadata answer.
VENDOR_OUTPUT_NAMES = {EMBEDDING: "embeddings", PREDICTION: "predictions"}


@dataclass(frozen=True)
class ForwardHooks:
    """The server's callbacks around each forward pass (metrics; bench/simulated_device.py)."""

    # (model, records, seconds) after a pass, inside it: an exception here fails the pass, as a device would
    after: Callable[[str, Sequence[Record], float], None] | None = None
    failed: Callable[[str, int], None] | None = None  # (model, tiles) of a pass that failed


class Runner:
    """One loaded model: stacks records into tensors, runs them in chunks of `max_batch` tiles."""

    def __init__(
        self,
        entry: ModelEntry,
        module: torch.nn.Module,
        device: torch.device,
        max_batch: int,
        hooks: ForwardHooks | None = None,
    ):
        self.entry = entry
        self.spec = MODELS[entry.name]
        self.device = device
        self.max_batch = max_batch
        self.module = module.to(device)  # loaders hand over modules already in eval mode
        self.autocast = device.type == "cuda" and entry.format != "aoti-package"
        weights = next(iter(module.parameters()), None)
        self.input_dtype = weights.dtype if weights is not None and not self.autocast else torch.float32
        norm = entry.normalisation
        mean, std = (norm.mean, norm.std) if norm else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        # Applied to N,3,H,W pixels in 0..255.
        self.mean = (torch.tensor(mean, device=device) * 255).view(1, 3, 1, 1)
        self.std = (torch.tensor(std, device=device) * 255).view(1, 3, 1, 1)
        self.extra_metadata: dict[str, Any] = {}
        self.hooks = hooks or ForwardHooks()

    def metadata(self) -> dict[str, Any]:
        """What `mode: metadata` answers, in the vendor's layout: `tile_size` as [height, width], outputs
        named `embeddings` / `predictions`, and no `embedding_dim` for a model without an embedding."""
        size = self.entry.tile_size
        answer: dict[str, Any] = {"model_name": self.entry.name, "tile_size": [size, size]}
        if self.spec.embedding_dim is not None:
            answer["embedding_dim"] = self.spec.embedding_dim
        return {
            **answer,
            "resolution": self.entry.resolution,
            "modes": list(self.spec.modes),
            "outputs": {
                VENDOR_OUTPUT_NAMES.get(name, name): {"shape": ["B", length]}
                for name, length in self.entry.outputs.items()
            },
            "normalisation": self.entry.normalisation.model_dump() if self.entry.normalisation else None,
            "dtype": self.entry.dtype,
            "format": self.entry.format,
            **({"pooling": self.entry.pooling} if self.spec.family == "encoder" else {}),
            "licence": self.entry.licence,
            "weights_source": self.entry.source,
            "demo": self.entry.demo,
            **self.extra_metadata,
        }

    def __call__(self, records: Sequence[Record]) -> list[dict[str, np.ndarray]]:
        """Per-record outputs (name -> 1-D array), in the order given. Raises ForwardError."""
        results: list[dict[str, np.ndarray]] = []
        for start in range(0, len(records), self.max_batch):
            chunk = records[start : start + self.max_batch]
            began = time.perf_counter()
            try:
                outputs = self._run_chunk(chunk)
                if self.hooks.after is not None:
                    self.hooks.after(self.entry.name, chunk, time.perf_counter() - began)
            except Exception as exc:
                if self.hooks.failed is not None:
                    self.hooks.failed(self.entry.name, len(chunk))
                raise ForwardError(self.entry.name, exc) from exc
            results.extend({name: array[i] for name, array in outputs.items()} for i in range(len(chunk)))
        return results

    @torch.inference_mode()
    def _run_chunk(self, chunk: Sequence[Record]) -> dict[str, np.ndarray]:
        pixels = torch.from_numpy(np.stack([r.pixels for r in chunk if r.pixels is not None]))  # N,H,W,3 uint8
        # Laid out N,3,H,W while still uint8 (a quarter of float's bytes), then normalised over contiguous
        # memory: a third of the time of normalising channels-last floats (docs/performance.md).
        tiles = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous()
        tiles = tiles.float().sub_(self.mean).div_(self.std).to(self.input_dtype)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.autocast):
            outputs = self.forward(tiles, chunk)
        return {name: value.float().cpu().numpy() for name, value in outputs.items()}

    def forward(self, tiles: torch.Tensor, chunk: Sequence[Record]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class EncoderRunner(Runner):
    """H-Optimus family: a timm ViT; the CLS token, or CLS and mean patch token (H0-mini)."""

    def forward(self, tiles: torch.Tensor, chunk: Sequence[Record]) -> dict[str, torch.Tensor]:
        pooling = self.entry.pooling if self.entry.format == "timm-safetensors" else "cls"  # a program pools itself
        return {EMBEDDING: embed(self.module, tiles, pooling)}


class MOptimusRunner(Runner):
    """M-Optimus: tile + log1p bulk RNA (zeros when absent) -> gene counts and embedding."""

    def forward(self, tiles: torch.Tensor, chunk: Sequence[Record]) -> dict[str, torch.Tensor]:
        n_genes = len(self.extra_metadata["input_genes"])
        rna = np.zeros((len(chunk), n_genes), dtype=np.float32)
        for i, record in enumerate(chunk):
            if record.bulk_rna is not None:
                rna[i] = record.bulk_rna
        bulk = torch.from_numpy(rna).to(self.device)
        probe_groups = torch.zeros(len(chunk), dtype=torch.int64, device=self.device)
        log_counts, embedding = self.module(tiles, bulk, probe_groups)
        counts = torch.expm1(log_counts.float()).round()
        counts = torch.where(torch.isfinite(counts), counts, torch.zeros_like(counts))
        return {PREDICTION: counts, EMBEDDING: embedding}


class TissueSegRunner(Runner):
    """tissue-seg: logits -> {0, 1} mask (sigmoid > 0.5, i.e. logit > 0), flattened row-major."""

    def forward(self, tiles: torch.Tensor, chunk: Sequence[Record]) -> dict[str, torch.Tensor]:
        logits = self.module(tiles)
        return {PREDICTION: (logits.float() > 0).float().flatten(start_dim=1)}


RUNNERS: dict[str, type[Runner]] = {
    "encoder": EncoderRunner,
    "m-optimus": MOptimusRunner,
    "tissue-seg": TissueSegRunner,
}

"""Real-size H-Optimus (ViT-g/14, 4 registers, random weights) under fp16 autocast over batch sizes, as
the server runs it (fp32 master weights): tiles/s and model FLOPs utilisation (MFU) against the GPU's
peak dense fp16 tensor throughput.

    python -m bench.gpu_bench                  # on a GPU: batch sizes 1..128
    python -m bench.gpu_bench --tiny           # anywhere: a tiny ViT on the CPU (what the tests run)

FLOPs per tile are counted by torch's FlopCounterMode on the meta device (no compute); MFU is
achieved FLOP/s over the peak in PEAK_TFLOPS (or --peak-tflops).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import write_figures
from model_code.catalogue import H_OPTIMUS_TIMM
from model_code.loaders import build_vit

# Dense fp16/bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s (no sparsity).
PEAK_TFLOPS = {
    "H100 80GB HBM3": 989.0,  # SXM
    "H100 PCIe": 756.0,
    "H200": 989.0,
    "A100": 312.0,
    "A10G": 70.0,  # AWS ml.g5 (an A10 variant at lower clocks than the A10's 125)
    "L4": 121.0,
    "L40S": 362.0,
}
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


def flops_per_tile(config: dict[str, object]) -> float:
    with torch.device("meta"):
        model = build_vit(config)
        tile = torch.empty(1, 3, 224, 224)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(tile)
    return float(counter.get_total_flops())


def peak_for(name: str) -> float | None:
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def mfu(tiles_per_s: float, flops: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: the FLOPs done per second over the GPU's dense fp16 peak (None: peak unknown)."""
    return round(tiles_per_s * flops / (peak_tflops * 1e12), 4) if peak_tflops else None


def measure(model: torch.nn.Module, batch: int, device: torch.device, repeats: int) -> float:
    """Tiles per second of forward passes at one batch size (after a warm-up)."""
    tiles = torch.randn(batch, 3, 224, 224, device=device)
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        for _ in range(2):
            model(tiles)
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        for _ in range(repeats):
            model(tiles)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny ViT on the CPU")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (default 1..128, tiny: 1,2,4)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, help="override the GPU's peak dense fp16 TFLOP/s")
    parser.add_argument("--json", type=Path, default=Path("build/bench/gpu.json"))
    args = parser.parse_args(argv)

    if not args.tiny and not torch.cuda.is_available():
        print("no GPU here: run on a GPU machine, or pass --tiny for the CPU check", file=sys.stderr)
        return 2
    config = {**H_OPTIMUS_TIMM, **TINY} if args.tiny else dict(H_OPTIMUS_TIMM)
    device = torch.device("cpu" if args.tiny else "cuda")
    name = "cpu" if args.tiny else torch.cuda.get_device_name(0)
    peak = args.peak_tflops or (None if args.tiny else peak_for(name))
    default_sizes = "1,2,4" if args.tiny else "1,2,4,8,16,32,64,128"
    sizes = [int(s) for s in (args.batch_sizes or default_sizes).split(",")]

    per_tile = flops_per_tile(config)
    model = build_vit(config).eval().to(device)
    rows = []
    for batch in sizes:
        tps = measure(model, batch, device, args.repeats)
        rows.append({"batch": batch, "tiles_per_s": round(tps, 2), "mfu": mfu(tps, per_tile, peak)})
    result = {
        "device": name,
        "model": "tiny ViT" if args.tiny else "ViT-g/14 reg4 (H-Optimus), fp16 autocast",
        "gflops_per_tile": round(per_tile / 1e9, 3),
        "peak_tflops": peak,
        "rows": rows,
    }
    print(f"{result['model']} on {name}: {result['gflops_per_tile']} GFLOP per tile, peak {peak} TFLOP/s")
    print(f"{'batch':>6} {'tiles/s':>10} {'MFU':>7}")
    for row in rows:
        mfu_text = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
        print(f"{row['batch']:>6} {row['tiles_per_s']:>10} {mfu_text:>7}")
    write_figures(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Packaging and loading a real-size H-Optimus (ViT-g/14, 1.1 B parameters, random weights) through the real
path: `kit package --timm-checkpoint SNAPSHOT_DIR`, then model_fn alone, each in its own process, with wall
time and peak resident memory (the kernel's ru_maxrss of that process).

    python -m bench.load_bench                      # writes build/bench/load.json

The snapshot directory is made as the model hub serves H-optimus-0 (config.json + weights), here a 2.3 GB
fp16 model.safetensors; it needs about 7 GB of disk under --workdir. model_fn maps the weights file: its
pages become resident (file-backed, shared with the page cache) as the first forward pass reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import write_figures

MODEL_FN = """
import sys, time
began = time.perf_counter()
import torch
from model_code.inference import model_fn
imported = time.perf_counter()
models = model_fn(sys.argv[1])
print(f"{imported - began:.3f} {time.perf_counter() - imported:.3f} {models.runners['h0'].device}")
"""
# This process stays small and imports no torch: a child's peak RSS counts what it inherits at fork.


def write_snapshot(directory: Path) -> None:
    """config.json and a random fp16 model.safetensors of H-optimus-0's architecture, one tensor at a time."""
    import torch
    from safetensors.torch import save_file

    from model_code.catalogue import H_OPTIMUS_NORMALISATION, H_OPTIMUS_TIMM
    from model_code.loaders import build_vit

    directory.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        shapes = {key: value.shape for key, value in build_vit(H_OPTIMUS_TIMM).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {key: (torch.randn(shape, generator=generator) * 0.02).half() for key, shape in shapes.items()}
    save_file(state, str(directory / "model.safetensors"))
    config = {
        "architecture": "vit_giant_patch14_reg4_dinov2",
        "num_classes": 0,
        "num_features": 1536,
        "global_pool": "token",
        "pretrained_cfg": {"input_size": [3, 224, 224], **H_OPTIMUS_NORMALISATION, "license": "apache-2.0"},
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def measured(command: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in GB, stdout) of a child process."""
    began = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - began
    out = child.stdout.read() if child.stdout else ""
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {child.returncode}")
    return seconds, usage.ru_maxrss / 1024**2, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("build/bench/load-work"))
    parser.add_argument("--json", type=Path, default=Path("build/bench/load.json"))
    parser.add_argument("--write-snapshot", type=Path, help=argparse.SUPPRESS)  # the child that makes it
    args = parser.parse_args(argv)
    if args.write_snapshot:
        write_snapshot(args.write_snapshot)
        return 0

    snapshot = args.workdir / "H-optimus-0"
    if not (snapshot / "model.safetensors").is_file():
        measured([sys.executable, "-m", "bench.load_bench", "--write-snapshot", str(snapshot)])
    out = args.workdir / "artifact"
    package = [sys.executable, "-m", "kit", "package", "--models", "h0", "--timm-checkpoint", str(snapshot)]
    package_s, package_gb, _ = measured([*package, "--out", str(out)])
    load_s, load_gb, timings = measured([sys.executable, "-c", MODEL_FN, str(out / "model")])
    imports, model_fn_seconds, device = timings.split()
    imports_s, model_fn_s = float(imports), float(model_fn_seconds)
    result = {
        "model": "h0 (ViT-g/14 reg4, 1.13 B parameters, random weights), fp16 safetensors snapshot directory",
        "device": device,
        "cpus": os.cpu_count(),
        "kit_package": {"seconds": round(package_s, 1), "peak_rss_gb": round(package_gb, 2)},
        "model_fn": {
            "seconds": round(model_fn_s, 2),
            "imports_seconds": round(imports_s, 2),
            "process_peak_rss_gb": round(load_gb, 2),
        },
        "process_seconds": round(load_s, 1),
    }
    print(json.dumps(result, indent=2))
    write_figures(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU checks of shared/GPU.md in one run, on a CUDA machine: fp16 correctness, forward-pass
variants, the server under load on a real-size model, AOTInductor CUDA packages. Every figure goes to one
JSON file, rewritten after each step so that a run cut short still leaves what it measured.

    python -m bench.gpu_check --out DIR [--budget-s 420]

Steps (each skipped, with the reason recorded, once the time budget is spent):
  correctness  fp16 autocast vs fp32 on ViT-g/14 and H0-mini's architecture (random weights, fixed seed):
               per-tile cosine, finiteness; the same tile in batches of different make-up.
  forward      bench.gpu_bench's measurement at batch 1..128 (tiles/s, MFU, peak memory), then the
               choices that could raise it, side by side at batch 8 (what one vendor-SDK client gives)
               and 64: fp16 weights, channels-last input, SDPA backends.
  server       a random ViT-g checkpoint packaged through `kit package --timm-checkpoint`, served by
               `python -m model_code.serve`, loaded at concurrency 8 and 64: tiles/s against the
               forward-only figure at the batch size reached, p50/p95, GPU utilisation.
  aoti         the demo models (and ViT-g when time allows) compiled into CUDA AOTInductor packages,
               loaded with aoti_load_package, compared with the eager fp16 autocast forward.
  compile      torch.compile (batch 64) and CUDA graphs (batch 8) on fp16 weights, against eager.
  slides       a generated 40x slide (the benchmark's tissue 2 x 2 times over) through the server's slide path
               with random ViT-g (h0) and H0-mini weights: tiles/s against the forward pass alone at the
               server's batch, per stage, GPU utilisation, and the CPU's reading ceiling on all cores.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import write_figures
from bench.gpu_bench import flops_per_tile, mfu, peak_for
from kit.endpoints.checks import SAME_ATOL, SAME_RTOL
from kit.endpoints.samples import wire_record
from model_code.catalogue import H0_MINI_TIMM, H_OPTIMUS_NORMALISATION, H_OPTIMUS_TIMM
from model_code.loaders import build_vit, embed

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 1536}  # served width


class Target:
    """Where the checks run: "cuda", or "cpu" for a dry run with tiny architectures (to check this script
    where there is no GPU). Everything that differs between the two is here."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.cuda = device == "cuda"

    def name(self) -> str:
        return torch.cuda.get_device_name(0) if self.cuda else "cpu (dry run)"

    def arch(self, config: dict[str, Any]) -> dict[str, Any]:
        """The architecture as given on a GPU; a tiny one of the same kind and served width in a dry run."""
        if self.cuda:
            return dict(config)
        return {**config, "depth": 1} if config == H0_MINI_TIMM else {**config, **TINY}

    def build(self, config: dict[str, Any]) -> torch.nn.Module:
        """A ViT with random weights (seeded), initialised on the device itself (fast for 1.1 B parameters)."""
        torch.manual_seed(0)
        with torch.device(self.device):
            return build_vit(self.arch(config)).eval()

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device, dtype=torch.float16)

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def tiles(self, count: int, seed: int) -> torch.Tensor:
        """Random RGB tiles through H-Optimus's normalisation, N,3,224,224 on the device."""
        pixels = torch.randint(0, 256, (count, 224, 224, 3), generator=torch.Generator().manual_seed(seed))
        mean = torch.tensor(H_OPTIMUS_NORMALISATION["mean"]) * 255
        std = torch.tensor(H_OPTIMUS_NORMALISATION["std"]) * 255
        return ((pixels.float() - mean) / std).permute(0, 3, 1, 2).contiguous().to(self.device)

    def timed(self, fn: Callable[[torch.Tensor], Any], tiles: torch.Tensor, repeats: int) -> float:
        """Tiles/s of `fn` on `tiles` after two warm-up calls (synchronised)."""
        with torch.inference_mode():
            for _ in range(2):
                fn(tiles)
            self.synchronize()
            began = time.perf_counter()
            for _ in range(repeats):
                fn(tiles)
            self.synchronize()
        return len(tiles) * repeats / (time.perf_counter() - began)

    def peak_memory_gb(self, fn: Callable[[torch.Tensor], Any], tiles: torch.Tensor) -> float | None:
        if not self.cuda:
            return None
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            fn(tiles)
        torch.cuda.synchronize()
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)

    @contextlib.contextmanager
    def gpu_sampler(self) -> Iterator[list[float]]:
        """GPU utilisation (%) sampled by nvidia-smi every 200 ms while the block runs (none in a dry run)."""
        samples: list[float] = []
        if not self.cuda:
            yield samples
            return
        process = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
            stdout=subprocess.PIPE,
            text=True,
        )

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                with contextlib.suppress(ValueError):
                    samples.append(float(line.strip()))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            yield samples
        finally:
            process.terminate()
            process.wait()


class Check:
    """The JSON report, written after every step, and the time budget."""

    def __init__(self, out: Path, budget_s: float, target: Target):
        self.out = out
        self.deadline = time.monotonic() + budget_s
        self.report: dict[str, Any] = {"device": target.name(), "torch": torch.__version__}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def step(self, name: str, needs_s: float, fn: Callable[[], dict[str, Any]]) -> None:
        if self.left() < needs_s:
            self.report[name] = {"skipped": f"{self.left():.0f} s left, the step needs about {needs_s:.0f} s"}
        else:
            began = time.monotonic()
            try:
                self.report[name] = fn()
            except Exception:
                self.report[name] = {"error": traceback.format_exc()[-4000:]}
            self.report[name]["seconds"] = round(time.monotonic() - began, 1)
        print(f"== {name}: {json.dumps(self.report[name])[:3000]}", flush=True)
        write_figures(self.out, self.report)


def correctness(target: Target) -> dict[str, Any]:
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference is true fp32
    torch.backends.cudnn.allow_tf32 = False
    result: dict[str, Any] = {}
    for name, config, pooling in (("vit_g14", H_OPTIMUS_TIMM, "cls"), ("h0_mini", H0_MINI_TIMM, "cls+mean_patch")):
        model = target.build(config)
        tiles = target.tiles(32, seed=1)
        with torch.inference_mode():
            reference = embed(model, tiles[:16], pooling).float()
            with target.autocast():
                half = embed(model, tiles[:16], pooling).float()
                alone = embed(model, tiles[:1], pooling).float()
                in_8 = embed(model, tiles[:8], pooling).float()
                shuffled = torch.cat([tiles[1:6], tiles[:1], tiles[6:32]])  # tile 0 at position 5 of 32
                in_32 = embed(model, shuffled, pooling).float()
        cosine = torch.nn.functional.cosine_similarity(reference, half, dim=1)
        variants = [in_8[0], in_32[5]]
        result[name] = {
            "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "output_dim": int(half.shape[1]),
            "min_cosine_fp16_vs_fp32": round(float(cosine.min()), 6),
            "cosine_ok": bool(cosine.min() >= 0.999),
            "finite": bool(torch.isfinite(half).all()),
            "max_abs_diff_batch_makeup": float(max((v - alone[0]).abs().max() for v in variants)),
            "batch_makeup_within_smoke_tolerance": all(
                np.allclose(alone[0].cpu().numpy(), v.cpu().numpy(), rtol=SAME_RTOL, atol=SAME_ATOL) for v in variants
            ),
        }
        del model
    return result


def forward(target: Target) -> dict[str, Any]:
    per_tile = flops_per_tile(target.arch(H_OPTIMUS_TIMM))
    peak = peak_for(target.name())
    model = target.build(H_OPTIMUS_TIMM)

    def autocast_fp32_master(tiles: torch.Tensor) -> torch.Tensor:  # what the server runs
        with target.autocast():
            return model(tiles)

    rows = []
    for batch in (1, 2, 4, 8, 16, 32, 64, 128) if target.cuda else (1, 8):
        tiles = target.tiles(batch, seed=batch)
        tps = target.timed(autocast_fp32_master, tiles, repeats=10 if batch >= 16 else 20)
        rows.append(
            {
                "batch": batch,
                "tiles_per_s": round(tps, 1),
                "mfu": mfu(tps, per_tile, peak),
                "peak_gb": target.peak_memory_gb(autocast_fp32_master, tiles),
            }
        )
        print(rows[-1], flush=True)

    half = copy.deepcopy(model).half()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def with_backend(backend: SDPBackend) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(tiles: torch.Tensor) -> torch.Tensor:
            with sdpa_kernel([backend]):
                return half(tiles)

        return run

    variants: dict[str, Callable[[torch.Tensor], Any]] = {
        "fp32 master weights + fp16 autocast (served today)": autocast_fp32_master,
        "fp16 weights": half,
        "fp16 weights, channels-last input": lambda t: half(t.contiguous(memory_format=torch.channels_last)),
        "fp16 weights, SDPA flash": with_backend(SDPBackend.FLASH_ATTENTION),
        "fp16 weights, SDPA memory-efficient": with_backend(SDPBackend.EFFICIENT_ATTENTION),
        "fp16 weights, SDPA cuDNN": with_backend(SDPBackend.CUDNN_ATTENTION),
        "fp16 weights, SDPA math": with_backend(SDPBackend.MATH),
    }
    side_by_side: dict[str, dict[str, Any]] = {}
    for batch in (8, 64):
        tiles = target.tiles(batch, seed=100 + batch).half()
        for name, fn in variants.items():
            try:
                tps = target.timed(fn, tiles.float() if "autocast" in name else tiles, repeats=10)
                side_by_side.setdefault(name, {})[f"batch_{batch}"] = {
                    "tiles_per_s": round(tps, 1),
                    "mfu": mfu(tps, per_tile, peak),
                }
            except Exception as exc:  # a backend this GPU or shape cannot use
                side_by_side.setdefault(name, {})[f"batch_{batch}"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"gflops_per_tile": round(per_tile / 1e9, 1), "peak_tflops": peak, "rows": rows, "variants": side_by_side}


def compiled(target: Target, check: Check) -> dict[str, Any]:
    """torch.compile at batch 64 and CUDA graphs (reduce-overhead) at batch 8, where launches weigh most."""
    half = target.build(H_OPTIMUS_TIMM).half()
    peak = peak_for(target.name())
    per_tile = flops_per_tile(target.arch(H_OPTIMUS_TIMM))
    result: dict[str, Any] = {}
    for name, mode, batch in (
        ("fp16 weights, torch.compile", "default", 64),
        ("fp16 weights, CUDA graphs (torch.compile reduce-overhead)", "reduce-overhead", 8),
    ):
        if check.left() < 90:
            result[name] = {"skipped": "time budget"}
            continue
        torch._dynamo.reset()
        model = torch.compile(half, mode=mode)
        tiles = target.tiles(batch, seed=100 + batch).half()
        began = time.monotonic()
        with torch.inference_mode():
            model(tiles)
        compile_s = time.monotonic() - began
        eager = target.timed(half, tiles, repeats=10)
        tps = target.timed(model, tiles, repeats=10)
        result[name] = {
            "batch": batch,
            "tiles_per_s": round(tps, 1),
            "eager_fp16_weights_tiles_per_s": round(eager, 1),
            "mfu": mfu(tps, per_tile, peak),
            "compile_s": round(compile_s, 1),
        }
        print(name, result[name], flush=True)
    return result


def server(target: Target, work: Path, forward_rows: list[dict[str, Any]]) -> dict[str, Any]:
    from bench.http_load import build_request, run_load
    from kit.local import metric, serve_model

    result: dict[str, Any] = {"loads": []}
    model_dir, result["package_s"] = package_random(target, work, "h0", H_OPTIMUS_TIMM)
    began = time.monotonic()
    with serve_model(model_dir, {"OPTIMUS_DEVICE": target.device}) as local:
        result["start_to_healthy_s"] = round(time.monotonic() - began, 1)
        request = build_request(
            "127.0.0.1", local.port, "/invocations", json.dumps(wire_record("h0", "embedding")).encode()
        )
        for concurrency in (8, 64):
            before = [metric(local.url, f"optimus_batch_size_{part}") for part in ("sum", "count")]
            with target.gpu_sampler() as samples:
                load = run_load("127.0.0.1", local.port, request, concurrency, warmup_s=2.0, duration_s=10.0)
            after = [metric(local.url, f"optimus_batch_size_{part}") for part in ("sum", "count")]
            mean_batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
            nearest = min(forward_rows, key=lambda row: abs(row["batch"] - mean_batch))
            result["loads"].append(
                {
                    "concurrency": concurrency,
                    "tiles_per_s": round(load.per_second, 1),
                    "errors": load.errors,
                    "p50_ms": round(load.percentile(50), 1),
                    "p95_ms": round(load.percentile(95), 1),
                    "mean_batch": round(mean_batch, 1),
                    "forward_only_tiles_per_s_at_that_batch": nearest["tiles_per_s"],
                    "serving_efficiency": round(load.per_second / nearest["tiles_per_s"], 3),
                    "gpu_utilisation_mean_pct": round(float(np.mean(samples)), 1) if samples else None,
                }
            )
            print(result["loads"][-1], flush=True)
    return result


def package_random(target: Target, work: Path, name: str, config: dict[str, Any]) -> tuple[Path, float | None]:
    """A random-weight `name` (with the demo tissue-seg, which slides need) packaged through `kit package
    --timm-checkpoint`: the model directory and the seconds packaging took (None: reused from a rerun)."""
    from safetensors.torch import save_file

    out = work / name
    if (out / "model" / "manifest.json").is_file():
        return out / "model", None
    seg = work / "tissue-seg" / "model" / "tissue-seg" / "program.pt2"
    if not seg.is_file():
        subprocess.run([sys.executable, "-m", "kit", "package", "--models", "tissue-seg", "--demo", "--out",
                        str(work / "tissue-seg")], check=True)  # fmt: skip
    checkpoint = work / f"{name}_random.safetensors"
    model = target.build(config)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    del model
    command = [sys.executable, "-m", "kit", "package", "--models", f"{name},tissue-seg", "--timm-checkpoint",
               str(checkpoint), "--tissue-seg-program", str(seg)]  # fmt: skip
    if not target.cuda:  # the tiny architecture is not the catalogue's
        (work / f"{name}_tiny.json").write_text(json.dumps(target.arch(config)))
        command += ["--timm-config", str(work / f"{name}_tiny.json")]
    began = time.monotonic()
    subprocess.run([*command, "--out", str(out)], check=True)
    checkpoint.unlink()
    return out / "model", round(time.monotonic() - began, 1)


def big_slide(target: Target, work: Path) -> Path:
    """The slide benchmark's 40x tissue, 2 x 2 times over on a GPU (a 5.6 x 4 mm slide), once in a dry run."""
    from bench.slides import ORIGIN, SLIDE_UM
    from kit.slides.synthetic import slide_image, write_svs

    path = work / "gpu-slide.svs"
    if not path.is_file():
        repeats = 2 if target.cuda else 1
        write_svs(path, np.tile(slide_image(0.25, SLIDE_UM, ORIGIN), (repeats, repeats, 1)), 0.25)
    return path


def slides(target: Target, work: Path) -> dict[str, Any]:
    import h5py

    from bench.slides import ceiling, slide_mode
    from kit.local import serve_model
    from model_code.catalogue import MODELS
    from model_code.settings import DEFAULT_MAX_BATCH_SIZE

    began = time.monotonic()
    slide = big_slide(target, work)
    result: dict[str, Any] = {
        "slide": {"bytes": slide.stat().st_size, "mpp": 0.25, "make_s": round(time.monotonic() - began, 1)}
    }
    for name, config in (("h0", H_OPTIMUS_TIMM), ("h0-mini", H0_MINI_TIMM)):
        model_dir, package_s = package_random(target, work, name, config)
        model = target.build(config)
        pooling = MODELS[name].pooling
        batch = target.tiles(DEFAULT_MAX_BATCH_SIZE, seed=7)

        def served(tiles: torch.Tensor, model: torch.nn.Module = model, pooling: str = pooling) -> torch.Tensor:
            with target.autocast():  # fp32 master weights under fp16 autocast, as the server runs
                return embed(model, tiles, pooling)

        forward_tps = target.timed(served, batch, repeats=10)
        del model, batch, served
        if target.cuda:
            torch.cuda.empty_cache()
        runs = []
        with serve_model(model_dir, {"OPTIMUS_DEVICE": target.device}) as local:
            for _ in range(2):
                with target.gpu_sampler() as samples:
                    seconds, coords, extent = slide_mode(local.url, slide, work / f"{name}.h5", name)
                with h5py.File(work / f"{name}.h5") as features:
                    stages = json.loads(features.attrs["seconds"])
                runs.append(
                    {
                        "tiles": len(coords),
                        "wall_s": round(seconds, 2),
                        "tiles_per_s": round(len(coords) / seconds, 1),
                        "tiles_stage_tiles_per_s": round(len(coords) / stages["tiles"], 1),
                        "stages_s": stages,
                        "gpu_utilisation_mean_pct": round(float(np.mean(samples)), 1) if samples else None,
                    }
                )
                print(name, runs[-1], flush=True)
        best = max(runs, key=lambda run: run["tiles_per_s"])
        result[name] = {
            "package_s": package_s,
            "forward_only_tiles_per_s_batch": {"batch": DEFAULT_MAX_BATCH_SIZE, "tiles_per_s": round(forward_tps, 1)},
            "runs": runs,
            "slide_over_forward_only": round(best["tiles_per_s"] / forward_tps, 3),
            "tiles_stage_over_forward_only": round(best["tiles_stage_tiles_per_s"] / forward_tps, 3),
        }
    torch.set_num_threads(1)  # as reader threads run: torch's resize is single-threaded, OpenSlide scales
    cores = os.cpu_count() or 1
    result["ceiling"] = {"threads": cores, "tiles_per_s": round(ceiling(slide, coords, extent, cores), 1)}
    return result


def aoti(target: Target, work: Path, check: Check) -> dict[str, Any]:
    """Demo models (and ViT-g if time allows) as CUDA AOTInductor packages vs eager fp16 autocast."""
    from kit.artifacts.demo_models import DEMO_VIT, TinyMOptimus, TinyTissueSeg
    from model_code.catalogue import N_INPUT_GENES

    torch.manual_seed(0)
    rna = (torch.rand(8, N_INPUT_GENES, device=target.device), torch.zeros(8, dtype=torch.int64, device=target.device))
    cases: list[tuple[str, torch.nn.Module, tuple[torch.Tensor, ...]]] = [
        ("demo_vit", target.build({**H_OPTIMUS_TIMM, **DEMO_VIT}), (target.tiles(8, 3),)),
        ("demo_m_optimus", TinyMOptimus(), (target.tiles(8, 4), *rna)),
        ("demo_tissue_seg", TinyTissueSeg(), (torch.rand(8, 3, 512, 512, device=target.device),)),
    ]
    if check.left() > 300:
        cases.append(("vit_g14", target.build(H_OPTIMUS_TIMM), (target.tiles(8, 5),)))
    result: dict[str, Any] = {}
    for name, module, example in cases:
        if check.left() < 30:
            result[name] = {"skipped": "time budget"}
            continue
        module = module.eval().to(target.device)
        batch = torch.export.Dim("batch", min=1, max=128)
        began = time.monotonic()
        with torch.inference_mode():
            program = torch.export.export(module, example, dynamic_shapes=tuple({0: batch} for _ in example))
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(work / f"{name}.pt2"))
        compile_s = time.monotonic() - began
        loaded = torch._inductor.aoti_load_package(path)
        with torch.inference_mode():
            eager = module(*example)
            with target.autocast():
                eager_half = module(*example)
            compiled = loaded(*example)
        first = lambda out: (out[0] if isinstance(out, (tuple, list)) else out).float().flatten(1)  # noqa: E731
        cosine = torch.nn.functional.cosine_similarity(first(eager), first(compiled), dim=1)
        cosine_half = torch.nn.functional.cosine_similarity(first(eager_half), first(compiled), dim=1)
        tiles = example[0]

        def run_eager(_: torch.Tensor, module: torch.nn.Module = module, example: tuple = example) -> Any:
            with target.autocast():
                return module(*example)

        result[name] = {
            "compile_s": round(compile_s, 1),
            "package_mb": round(Path(path).stat().st_size / 1e6, 1),
            "min_cosine_vs_eager_fp32": round(float(cosine.min()), 6),
            "min_cosine_vs_eager_fp16_autocast": round(float(cosine_half.min()), 6),
            "aoti_tiles_per_s_batch8": round(target.timed(partial(run_package, loaded, example), tiles, repeats=10), 1),
            "eager_fp16_autocast_tiles_per_s_batch8": round(target.timed(run_eager, tiles, repeats=10), 1),
        }
        print(name, result[name], flush=True)
    return result


def run_package(package: Callable[..., Any], example: tuple[torch.Tensor, ...], _: torch.Tensor) -> Any:
    return package(*example)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "build/bench")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_check"))
    parser.add_argument("--budget-s", type=float, default=420)
    parser.add_argument("--steps", default="correctness,forward,server,slides,aoti,compile")
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny models on the CPU: check the script itself")
    args = parser.parse_args(argv)
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("no CUDA device: the GPU checks need one (or --cpu-dry-run)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    target = Target("cpu" if args.cpu_dry_run else "cuda")
    check = Check(args.out / "gpu_check.json", args.budget_s, target)
    steps = args.steps.split(",")
    if "correctness" in steps:
        check.step("correctness", 30, lambda: correctness(target))
    if "forward" in steps:
        check.step("forward", 60, lambda: forward(target))
    if "server" in steps:
        rows = check.report.get("forward", {}).get("rows") or [{"batch": 1, "tiles_per_s": float("nan")}]
        check.step("server", 120, lambda: server(target, args.work, rows))
    if "slides" in steps:
        check.step("slides", 150, lambda: slides(target, args.work))
    if "aoti" in steps:
        check.step("aoti", 60, lambda: aoti(target, args.work, check))
    if "compile" in steps:
        check.step("compile", 90, lambda: compiled(target, check))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m kit demo`: package the demo models of both vendor packages and run every mode through
the SageMaker handler, printing what came back."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from kit.package import package
from kit.samples import synthetic_counts, wire_record
from model_code.catalogue import METADATA, MODELS, PACKAGES
from model_code.inference import input_fn, model_fn, output_fn, predict_fn


def run_demo(workdir: Path) -> None:
    for package_name, models in PACKAGES.items():
        model_dir = package(list(models), workdir / package_name, demo=True)
        loaded = model_fn(model_dir)
        print(f"\npackage {package_name}: {', '.join(models)} -> {model_dir}")
        for model in models:
            for mode in MODELS[model].modes:
                counts = synthetic_counts() if model == "m-optimus" and mode != METADATA else None
                body = orjson.dumps(wire_record(model, mode, bulk_rna=counts))
                start = time.perf_counter()
                out, _ = output_fn(predict_fn(input_fn(body, "application/json"), loaded), "application/json")
                took = (time.perf_counter() - start) * 1000
                answer = orjson.loads(out)
                print(f"  {model:<11} {mode:<26} {_describe(answer):<48} {took:6.1f} ms")


def _describe(answer: dict) -> str:
    if "output" not in answer:
        return f"metadata: embedding_dim={answer['embedding_dim']}, tile={answer['tile_size']}"
    parts = [f"output[{len(answer['output'])}]"]
    if "embedding" in answer:
        parts.append(f"embedding[{len(answer['embedding'])}]")
    return ", ".join(parts) + f" first={answer['output'][0]:.4g}"

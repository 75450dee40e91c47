"""`kit verify`: check an artifact's checksums and run every mode of every model once, on this machine; per
model its format and precision, and for an AOTInductor package its device, CUDA architecture, batch bounds
and the torch releases that ran it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kit.artifacts import check_model_dir
from kit.cli import add_json, write_output

HELP = "check an artifact's checksums, run every mode once; report formats, precision, CUDA arch, torch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", type=Path, help="OUT/model, as `kit package` wrote it")
    add_json(parser, "the report by model (format, precision, package facts, output sizes)")


def run(args: argparse.Namespace) -> int:
    check_model_dir(args.model_dir)  # before torch is imported (seconds)
    from kit.artifacts.checking import verify_artifact

    report = verify_artifact(args.model_dir)
    for model, row in report.items():
        where = f" {row['device']} {row['cuda_arch'] or ''}".rstrip() if "device" in row else ""
        outputs = row["outputs"]
        ran = (
            ", ".join(f"{mode} {n} values" for mode, n in outputs.items()) + f" (torch {row['ran_with_torch']})"
            if isinstance(outputs, dict)
            else str(outputs)
        )
        status = "ok  " if isinstance(outputs, dict) else "skip"
        print(f"{status} {model:<11} {row['format']} {row['precision']}{where}: {ran}")
    write_output(args.json, json.dumps(report, indent=2).encode())
    return 0

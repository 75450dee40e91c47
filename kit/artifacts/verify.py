"""`kit verify`: check an artifact's checksums and run every mode of every model once, on this machine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kit.cli import add_json, write_output

HELP = "check an artifact's checksums and run every mode once"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", type=Path, help="OUT/model, as `kit package` wrote it")
    add_json(parser, "output sizes by model and mode")


def run(args: argparse.Namespace) -> int:
    from kit.artifacts.builder import check_artifact

    sizes = check_artifact(args.model_dir)
    for model, modes in sizes.items():
        print(f"ok   {model:<11} " + ", ".join(f"{mode}: {n} values" for mode, n in modes.items()))
    write_output(args.json, json.dumps(sizes, indent=2).encode())
    return 0

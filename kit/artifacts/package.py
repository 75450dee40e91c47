"""`kit package`: build a model artifact directory and its model.tar.gz (see kit/artifacts/builder.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kit.cli import add_models
from model_code.catalogue import N_INPUT_GENES, N_OUTPUT_GENES

HELP = "build a model artifact (OUT/model/ and OUT/model.tar.gz)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_models(parser, required=True, what="the models the artifact holds")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--demo", action="store_true", help="tiny models built by the kit (no weights needed)")
    parser.add_argument("--timm-checkpoint", type=Path, help="H-Optimus state dict (.pth or .safetensors)")
    parser.add_argument("--timm-config", type=Path, help="JSON overriding the catalogue's ViT arguments")
    parser.add_argument("--m-optimus-program", type=Path, help="the vendor's exported M-Optimus .pt2")
    parser.add_argument("--input-genes", type=Path, help=f"M-Optimus input gene set CSV ({N_INPUT_GENES} Ensembl IDs)")
    parser.add_argument(
        "--output-genes", type=Path, help=f"M-Optimus output gene set CSV ({N_OUTPUT_GENES} Ensembl IDs)"
    )
    parser.add_argument("--tissue-seg-program", type=Path, help="the vendor's exported tissue-seg .pt2")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored ViT weights")
    parser.add_argument(
        "--with-code", action="store_true", help="add code/ so AWS's PyTorch serving image can run the handler"
    )


def run(args: argparse.Namespace) -> int:
    from kit.artifacts.builder import Sources, package

    sources = Sources(
        timm_checkpoint=args.timm_checkpoint,
        timm_config=args.timm_config,
        m_optimus_program=args.m_optimus_program,
        input_genes=args.input_genes,
        output_genes=args.output_genes,
        tissue_seg_program=args.tissue_seg_program,
        dtype=args.dtype,
    )
    model_dir = package(args.models, args.out, demo=args.demo, sources=sources, with_code=args.with_code)
    print(f"wrote {model_dir} and {args.out / 'model.tar.gz'}")
    return 0

"""`kit package`: build a model artifact directory and its model.tar.gz (see kit/artifacts/builder.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kit.cli import add_models
from model_code.catalogue import N_INPUT_GENES, N_OUTPUT_GENES
from stacks import names

HELP = "build a model artifact (OUT/model/ and OUT/model.tar.gz)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_models(parser, required=True, what="the models the artifact holds")
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for the artifact: OUT/model/ and OUT/model.tar.gz"
    )
    parser.add_argument("--demo", action="store_true", help="tiny models built by the kit (no weights needed)")
    parser.add_argument(
        "--timm-checkpoint",
        type=Path,
        help="H-Optimus weights: a snapshot directory (config.json + model.safetensors or pytorch_model.bin) "
        "or a state dict file (.pth, .bin, .safetensors)",
    )
    parser.add_argument("--timm-config", type=Path, help="JSON overriding the catalogue's ViT arguments")
    parser.add_argument(
        "--h-optimus-program", type=Path, help="an H-Optimus encoder as a .pt2 (the vendor's h1_optimus_cls_token.pt2)"
    )
    parser.add_argument("--m-optimus-program", type=Path, help="the vendor's M-Optimus .pt2")
    parser.add_argument("--input-genes", type=Path, help=f"M-Optimus input gene set CSV ({N_INPUT_GENES} Ensembl IDs)")
    parser.add_argument(
        "--output-genes", type=Path, help=f"M-Optimus output gene set CSV ({N_OUTPUT_GENES} Ensembl IDs)"
    )
    parser.add_argument("--tissue-seg-program", type=Path, help="the vendor's tissue-seg .pt2")
    parser.add_argument(
        "--instance-type",
        default=names.DEFAULT_INSTANCE_TYPE,
        help="the endpoint's instance type: a CUDA package must have kernels for its GPU (default %(default)s)",
    )
    parser.add_argument(
        "--format",
        choices=("native", "aoti"),
        default="native",
        help="--demo only: aoti makes every demo model an AOTInductor package (needs a C++ compiler)",
    )
    parser.add_argument(
        "--aoti-device", choices=("cpu", "cuda"), default="cpu", help="--format aoti: the device to compile for"
    )
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored ViT weights")
    parser.add_argument(
        "--with-code", action="store_true", help="add code/ so AWS's PyTorch serving image can run the handler"
    )


def run(args: argparse.Namespace) -> int:
    from kit.artifacts.builder import Sources, package

    sources = Sources(
        timm_checkpoint=args.timm_checkpoint,
        timm_config=args.timm_config,
        h_optimus_program=args.h_optimus_program,
        m_optimus_program=args.m_optimus_program,
        input_genes=args.input_genes,
        output_genes=args.output_genes,
        tissue_seg_program=args.tissue_seg_program,
        dtype=args.dtype,
        instance_type=args.instance_type,
    )
    model_dir = package(
        args.models,
        args.out,
        demo=args.demo,
        sources=sources,
        with_code=args.with_code,
        demo_format=args.format,
        demo_device=args.aoti_device,
    )
    print(f"wrote {model_dir} and {args.out / 'model.tar.gz'}")
    return 0

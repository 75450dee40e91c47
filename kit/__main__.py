"""`python -m kit COMMAND`: package and verify model artifacts (more commands in kit/cli docs)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kit import KitError
from model_code.errors import ArtifactError


def _package(args: argparse.Namespace) -> None:
    from kit.package import Sources, package, parse_models

    sources = Sources(
        timm_checkpoint=args.timm_checkpoint,
        timm_config=args.timm_config,
        m_optimus_program=args.m_optimus_program,
        input_genes=args.input_genes,
        output_genes=args.output_genes,
        tissue_seg_program=args.tissue_seg_program,
        dtype=args.dtype,
    )
    model_dir = package(parse_models(args.models), args.out, demo=args.demo, sources=sources)
    print(f"wrote {model_dir} and {args.out / 'model.tar.gz'}")


def _verify(args: argparse.Namespace) -> None:
    from kit.package import check_artifact

    print(json.dumps(check_artifact(args.model_dir), indent=2))


def _demo(args: argparse.Namespace) -> None:
    from kit.demo import run_demo

    run_demo(args.workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    pack = commands.add_parser("package", help="build a model artifact (OUT/model/ and OUT/model.tar.gz)")
    pack.add_argument("--models", required=True, help="comma-separated: h1, h0, h0-mini, m-optimus, tissue-seg")
    pack.add_argument("--out", type=Path, required=True)
    pack.add_argument("--demo", action="store_true", help="tiny models built by the kit (no weights needed)")
    pack.add_argument("--timm-checkpoint", type=Path, help="H-Optimus state dict (.pth or .safetensors)")
    pack.add_argument("--timm-config", type=Path, help="JSON overriding the catalogue's ViT arguments")
    pack.add_argument("--m-optimus-program", type=Path, help="the vendor's exported M-Optimus .pt2")
    pack.add_argument("--input-genes", type=Path, help="M-Optimus input gene set CSV (19374 Ensembl IDs)")
    pack.add_argument("--output-genes", type=Path, help="M-Optimus output gene set CSV (6002 Ensembl IDs)")
    pack.add_argument("--tissue-seg-program", type=Path, help="the vendor's exported tissue-seg .pt2")
    pack.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored ViT weights")
    pack.set_defaults(run=_package)

    verify = commands.add_parser("verify", help="check an artifact's checksums and run every mode once")
    verify.add_argument("model_dir", type=Path)
    verify.set_defaults(run=_verify)

    demo = commands.add_parser("demo", help="package the demo models and run every mode, offline")
    demo.add_argument("--workdir", type=Path, default=Path("build/demo"))
    demo.set_defaults(run=_demo)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (KitError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

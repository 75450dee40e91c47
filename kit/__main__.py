"""`python -m kit COMMAND`: package and verify model artifacts, run the demo, check endpoints (smoke),
upload artifacts, wait for endpoints."""

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
    model_dir = package(parse_models(args.models), args.out, demo=args.demo, sources=sources, with_code=args.with_code)
    print(f"wrote {model_dir} and {args.out / 'model.tar.gz'}")


def _verify(args: argparse.Namespace) -> None:
    from kit.package import check_artifact

    print(json.dumps(check_artifact(args.model_dir), indent=2))


def _demo(args: argparse.Namespace) -> int:
    from kit.demo import run_demo

    return run_demo(args.workdir)


def _smoke(args: argparse.Namespace) -> int:
    from kit.aws import endpoints_from_stack
    from kit.package import parse_models
    from kit.smoke import smoke, write_outputs

    if bool(args.stack) == bool(args.endpoint):
        raise KitError("give --stack NAME, or --endpoint NAME with --models")
    if args.stack:
        import boto3

        endpoints = endpoints_from_stack(args.stack, boto3.Session(region_name=args.region))
    else:
        if not args.models:
            raise KitError("--endpoint needs --models (the models it must host)")
        endpoints = {args.endpoint: parse_models(args.models)}
    report = smoke(endpoints, region=args.region, endpoint_url=args.endpoint_url, requests=args.requests)
    print(report.text())
    write_outputs(report, args.json, args.junit_xml)
    return 0 if report.passed else 1


def _upload(args: argparse.Namespace) -> None:
    from kit.aws import upload_artifact

    for uri in upload_artifact(args.path, args.uri):
        print(f"uploaded and verified {uri}")


def _wait(args: argparse.Namespace) -> None:
    from kit.aws import wait_in_service

    described = wait_in_service(args.endpoint, timeout_s=args.timeout, poll_s=args.poll)
    print(f"{args.endpoint} is {described['EndpointStatus']}")


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
    pack.add_argument(
        "--with-code", action="store_true", help="add code/ so AWS's PyTorch serving image can run the handler"
    )
    pack.set_defaults(run=_package)

    verify = commands.add_parser("verify", help="check an artifact's checksums and run every mode once")
    verify.add_argument("model_dir", type=Path)
    verify.set_defaults(run=_verify)

    demo = commands.add_parser("demo", help="package the demo models and run every mode, offline")
    demo.add_argument("--workdir", type=Path, default=Path("build/demo"))
    demo.set_defaults(run=_demo)

    check = commands.add_parser("smoke", help="check endpoints: metadata, every mode, outputs, latency")
    check.add_argument("--endpoint", help="endpoint name (with --models)")
    check.add_argument("--models", help="comma-separated models the endpoint must host")
    check.add_argument("--stack", help="read endpoints and models from this stack's outputs instead")
    check.add_argument("--region")
    check.add_argument("--endpoint-url", help="e.g. http://127.0.0.1:8080 for a local server")
    check.add_argument("--requests", type=int, default=20, help="requests for the latency figures")
    check.add_argument("--json", type=Path)
    check.add_argument("--junit-xml", type=Path)
    check.set_defaults(run=_smoke)

    upload = commands.add_parser("upload", help="upload an artifact to S3 with checksums (dir -> prefix/)")
    upload.add_argument("path", type=Path, help="OUT/model (uncompressed) or OUT/model.tar.gz")
    upload.add_argument("uri", help="s3://BUCKET/PREFIX/ for a directory, s3://BUCKET/KEY for a tarball")
    upload.set_defaults(run=_upload)

    wait = commands.add_parser("wait", help="wait for an endpoint to be InService")
    wait.add_argument("--endpoint", required=True)
    wait.add_argument("--timeout", type=float, default=3600)
    wait.add_argument("--poll", type=float, default=30)
    wait.set_defaults(run=_wait)

    from kit.slides import run as slides_run  # until the command registry (issue 11) lands

    slides = commands.add_parser("slides", help="whole slides").add_subparsers(dest="verb", required=True)
    slides_run.add_arguments(slides.add_parser("run", help=slides_run.HELP))

    args = parser.parse_args(argv)
    if args.command == "slides":
        args.run = slides_run.run
    try:
        return int(args.run(args) or 0)
    except (KitError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`python -m kit slides convert SOURCE --to stamp --out DEST`: kit features files into another layout,
without running a model again.

SOURCE and DEST are each a directory or an s3:// prefix. Every `.h5` (either layout) and Zarr (the vendor
SDK's: a `.zarr` directory, or the `.zarr.zip` the server answers and S3 holds) under SOURCE becomes, under
DEST:
- `--to trident` / `--to stamp`: the same path with `.h5` (model_code/slides/layouts.py says what each
  tool reads);
- `--to clam`: CLAM's feature directory, `h5_files/<slide>.h5` (the trident layout, which CLAM's training
  takes with `use_h5`; float32, as CLAM writes it) and `pt_files/<slide>.pt`, the float32 tensor [N, D] its
  training loads by default.
  CLAM names files by slide id alone, so two slides with one name are refused before anything is written.
The kit's attributes travel unchanged (the recipe records the new layout: the numbers are the same).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kit import KitError
from kit.cli import add_aws
from kit.s3 import folder, join, parse
from model_code.slides.layouts import LOCAL_SUFFIXES, SUFFIXES

HELP = "turn kit features files into another layout (trident, stamp, clam) without running a model again"
TARGETS = ("trident", "stamp", "clam")
SOURCE_SUFFIXES = (SUFFIXES["zarr"], LOCAL_SUFFIXES["zarr"], SUFFIXES["h5"])  # a .zarr directory: a disk only
PREFIX = "s3://BUCKET/PREFIX"


@dataclass
class Conversion:
    """One source file (a local path or an S3 key) and the names of what it becomes under DEST."""

    source: str
    name: str  # its path under SOURCE
    outputs: list[str]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a directory or s3://bucket/prefix holding kit outputs (.h5, .zarr, .zarr.zip)")
    parser.add_argument("--to", choices=TARGETS, required=True, help="the layout to write: trident, stamp or clam")
    parser.add_argument("--out", required=True, help="a directory or s3://bucket/prefix for the converted files")
    add_aws(parser)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    for field, where in (("SOURCE", args.source), ("--out", args.out)):
        if where.startswith("s3://"):
            parse(where, field, shape=PREFIX)  # before AWS is asked anything
    s3 = _s3(args) if args.source.startswith("s3://") or args.out.startswith("s3://") else None
    conversions = plan(_sources(args.source, s3), args.to)
    if not args.out.startswith("s3://"):
        _refuse_overwriting_sources(args.source, Path(args.out), conversions)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="kit-convert-") as work, tqdm(conversions, unit="file") as bar:
        for conversion in bar:
            bar.set_postfix_str(conversion.name)
            try:
                _convert_one(conversion, args, s3, Path(work))
            except (OSError, ValueError, KeyError) as exc:
                failed += 1
                bar.write(f"{conversion.name}: failed: {exc}")
    print(f"{len(conversions)} files: {len(conversions) - failed} converted to {args.to}, {failed} failed")
    return 1 if failed else 0


def plan(sources: list[tuple[str, str]], target: str) -> list[Conversion]:
    """What each (source, name under SOURCE) becomes; outputs that two sources would share are refused."""
    conversions = []
    for source, name in sources:
        stem = _without_suffix(name)
        if target == "clam":
            slide = PurePosixPath(stem).name
            outputs = [f"h5_files/{slide}.h5", f"pt_files/{slide}.pt"]
        else:
            outputs = [f"{stem}.h5"]
        conversions.append(Conversion(source, name, outputs))
    owners: dict[str, list[str]] = {}
    for conversion in conversions:
        owners.setdefault(conversion.outputs[0], []).append(conversion.name)
    shared = [f"{output} ({', '.join(names)})" for output, names in owners.items() if len(names) > 1]
    if shared:
        raise KitError(f"files with one output name would overwrite each other: {'; '.join(shared)}")
    return conversions


def convert_file(source: Path, layout: str, h5_out: Path, pt_out: Path | None = None) -> None:
    """Write `source` (any kit output) as `h5_out` in `layout`, and the float32 features as `pt_out`; with
    `pt_out` (CLAM), the h5 file's features are float32 too: CLAM's models are, and its h5 branch
    (`use_h5`) hands them over as stored (float16 fails there: "mat1 and mat2 must have the same dtype")."""
    import json

    import h5py
    import numpy as np

    from model_code.slides.layouts import read_output
    from model_code.slides.provenance import RECIPE
    from model_code.slides.writers import open_writer

    output = read_output(source)
    arrays, attributes = output.arrays, output.attributes
    features, coords = arrays.pop("features"), arrays.pop("coords")
    ratios, mask = arrays.pop("tissue_ratios"), arrays.pop("tissue_mask")
    per_tile = {name: array for name, array in arrays.items() if array.ndim == 2 and len(array) == len(features)}
    widths = {"features": features.shape[1], **{name: array.shape[1] for name, array in per_tile.items()}}
    attributes["layout"] = layout
    dtype = "float32" if pt_out is not None else str(features.dtype)
    if RECIPE in attributes:
        attributes[RECIPE] = json.dumps(
            json.loads(attributes[RECIPE]) | {"layout": layout, "format": "h5", "dtype": dtype}, sort_keys=True
        )
    writer = open_writer("h5", h5_out, coords, ratios, widths, dtype, mask, layout)
    writer.write(0, {"features": features, **per_tile})
    writer.close(attributes)
    with h5py.File(h5_out, "a") as file:  # anything else the source holds (skipped_coords too), as it was
        for name, array in arrays.items():
            if name not in per_tile:
                if name in file:
                    del file[name]  # what the writer made empty, e.g. skipped_coords
                stored = np.char.encode(array, "utf-8") if array.dtype.kind == "U" else array  # gene names
                file.create_dataset(name, data=stored)
    if pt_out is not None:
        import torch

        torch.save(torch.from_numpy(features.astype(np.float32)), pt_out)


def _convert_one(conversion: Conversion, args: argparse.Namespace, s3: Any, work: Path) -> None:
    if args.source.startswith("s3://"):
        local = work / "source"
        bucket, _ = parse(args.source)
        s3.download_file(bucket, conversion.source, str(local))
    else:
        local = Path(conversion.source)
    built = [work / f"out{index}" for index in range(len(conversion.outputs))]
    layout = "trident" if args.to == "clam" else args.to
    convert_file(local, layout, built[0], built[1] if args.to == "clam" else None)
    for path, name in zip(built, conversion.outputs, strict=True):
        if args.out.startswith("s3://"):
            bucket, prefix = parse(args.out)
            s3.upload_file(str(path), bucket, join(prefix, name))
            path.unlink()
        else:
            target = Path(args.out) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, target)


def _sources(source: str, s3: Any) -> list[tuple[str, str]]:
    """(a local path or an S3 key, its path under SOURCE) for every kit output under SOURCE, in name order."""
    if source.startswith("s3://"):
        bucket, prefix = parse(source)
        base = folder(prefix)
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base)
        keys = [o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(SOURCE_SUFFIXES)]
        found = [(key, key.removeprefix(base)) for key in sorted(keys)]
    else:
        root = Path(source)
        if not root.is_dir():
            raise KitError(f"{source}: not a directory (give the directory of kit outputs, or an s3:// prefix)")
        files = sorted(p for p in root.rglob("*") if _is_output(p))
        found = [(str(p), p.relative_to(root).as_posix()) for p in files]
    if not found:
        raise KitError(f"no kit outputs ({', '.join(SOURCE_SUFFIXES)}) under {source}")
    return found


def _refuse_overwriting_sources(source: str, out: Path, conversions: list[Conversion]) -> None:
    if source.startswith("s3://"):
        return
    sources = {Path(c.source).resolve() for c in conversions}
    clash = [str(out / name) for c in conversions for name in c.outputs if (out / name).resolve() in sources]
    if clash:
        raise KitError(f"the conversion would overwrite its own sources ({', '.join(clash[:3])}): give another --out")


def _is_output(path: Path) -> bool:
    """A kit output: an h5 or Zarr zip file, or a Zarr directory."""
    if path.name.endswith(LOCAL_SUFFIXES["zarr"]):
        return path.is_dir()
    return path.name.endswith(SOURCE_SUFFIXES) and path.is_file()


def _without_suffix(name: str) -> str:
    return next(name.removesuffix(s) for s in SOURCE_SUFFIXES if name.endswith(s))


def _s3(args: argparse.Namespace) -> Any:
    from kit.cli import session

    return session(args).client("s3")

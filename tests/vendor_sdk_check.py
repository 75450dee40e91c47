"""The vendor's own client, `bioptimus-sdk`, against the local server: `make sdk-check`.

Run by the SDK's virtual environment (.venv-vendor, Python >= 3.12 as the SDK requires, the `vendor-sdk` extra's
pin), not by pytest. It starts `python -m model_code.serve` with the kit's interpreter, then:
- `verify_endpoint` (what `python -m bioptimus verify` runs) for every model, over the SDK's two remote backends:
  `remote` (its HTTP client on the REST routes) and `aws` (its boto3 client on /invocations, through
  AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME with dummy credentials);
- the SDK's whole-slide pipeline (`Inference`, backend `aws`: tissue-seg then one request a tile) on a generated
  40x slide, and the kit's slide path (`kit slides run --format zarr`) on the same slide: the same tiles, the same
  features (cosine >= 0.9999: the SDK's resampling and the kit's differ in rounding), the same coordinates and
  root attributes, and the SDK's own readers (`load_zarr_output`, `slide_embedding`) open the kit's file;
- M-Optimus over the same slide with a bulk-RNA file that lacks some genes (the SDK sends -1 for them): the SDK's
  pipeline and the kit's slide path (a tar with bulk_rna.json) give the same predictions, and the SDK's
  `pseudobulk` reads the kit's file with the same gene names.
Exits 1 on the first mismatch, naming it.

    .venv-vendor/bin/python -m tests.vendor_sdk_check --python .venv/bin/python --model-dir build/sdk-check/art/model
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from kit.local import free_port, local_server

ENDPOINT = "optimus-local"
MIN_COSINE = 0.9999
SAME_ATTRIBUTES = ("tile_size", "stride", "mpp", "slide_dimensions", "slide_dimensions_at_mpp", "num_tiles")
MISSING_GENES = 50  # left out of the bulk-RNA file: the SDK fills them with -1


class Mismatch(AssertionError):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Mismatch(what)


def verify(url: str) -> None:
    from bioptimus.observability.healthcheck import verify_endpoint

    for model in ("h1", "tissue-seg", "m-optimus"):
        for backend, where in (("remote", {"base_url": url}), ("aws", {"endpoint_name": ENDPOINT})):
            report = verify_endpoint(model, backend, **where)
            failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.passed]
            ran = [c for c in report.checks if not c.skipped]
            check(report.ok and not failed and len(ran) >= 4, f"verify {model} over {backend}: {failed}")
            print(f"verify {model} over {backend}: {len(ran)} checks passed")


def sdk_slide(slide: Path, out: Path, model: str, **run: Any) -> Path:
    """The SDK's whole-slide pipeline, as its users run it against a SageMaker endpoint; its output store."""
    from bioptimus.inference import Inference

    inference = Inference(model, backend="aws", endpoint_name=ENDPOINT, output_path=out, workers=1, max_concurrency=8)
    made = inference.predict(slide, **run) if run else inference.embed(slide)
    check(isinstance(made, Path) and made.is_dir(), f"the SDK wrote no store for {model}: {made}")
    return Path(made)


def rows(store: Any, name: str = "outputs") -> dict[tuple[int, int], np.ndarray]:
    coords, values = np.asarray(store["coords"]), np.asarray(store[name])
    return {(int(x), int(y)): row for (x, y), row in zip(coords, values, strict=True)}


def same_tiles(kit: Any, sdk: Any, what: str, counts: bool = False) -> None:
    """The same tiles with the same outputs: features to MIN_COSINE; gene counts (`counts`, whole numbers) apart
    by at most 1 where a value sits on a rounding boundary, in at most 1% of them."""
    ours, theirs = rows(kit), rows(sdk)
    check(ours.keys() == theirs.keys(), f"{what}: tiles differ: {len(ours)} kit, {len(theirs)} SDK, not the same set")
    pairs = [(ours[k], theirs[k]) for k in ours]
    if counts:
        apart = np.stack([np.abs(a - b) for a, b in pairs])
        check(apart.max() <= 1 and (apart > 0).mean() <= 0.01, f"{what}: counts differ: {apart.max()} at most")
        agreement = f"counts equal but {(apart > 0).mean():.2%} (by 1)"
    else:
        worst = min(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0)) for a, b in pairs)
        check(worst >= MIN_COSINE, f"{what}: outputs differ: worst cosine {worst:.6f} < {MIN_COSINE}")
        agreement = f"worst cosine {worst:.7f}"
    ratios = {k: float(r) for k, r in zip(ours, np.asarray(kit["tissue_ratios"]), strict=True)}
    sdk_ratios = {k: float(r) for k, r in zip(theirs, np.asarray(sdk["tissue_ratios"]), strict=True)}
    gap = max(abs(ratios[k] - sdk_ratios[k]) for k in ratios)
    check(gap <= 0.02, f"{what}: tissue ratios differ by up to {gap:.3f}")
    print(f"{what}: {len(ours)} tiles, the same as the SDK's; {agreement}; tissue ratios within {gap:.3f}")


def embeddings(python: str, url: str, slide: Path, work: Path) -> None:
    import zarr
    from bioptimus.inference.aggregate import slide_embedding
    from bioptimus.utils.utils import load_zarr_output

    sdk_path = sdk_slide(slide, work / "sdk", "h1")
    kit_run = [python, "-m", "kit", "slides", "run", str(slide), "--endpoint-url", url, "--model", "h1"]
    subprocess.run([*kit_run, "--out", str(work / "kit"), "--format", "zarr", "--dtype", "float32"], check=True)
    kit_path = work / "kit" / f"{slide.stem}.zarr"
    kit, sdk = zarr.open(str(kit_path), mode="r"), zarr.open(str(sdk_path), mode="r")
    same_tiles(kit, sdk, "h1 over the slide")
    for key in SAME_ATTRIBUTES:
        check(kit.attrs[key] == sdk.attrs[key], f"attribute {key}: kit {kit.attrs[key]}, SDK {sdk.attrs[key]}")
    loaded = load_zarr_output(kit_path)
    check(loaded["outputs"].shape == (kit.attrs["num_tiles"], 1536), "load_zarr_output: not the kit's outputs")
    ours, theirs = slide_embedding(kit_path), slide_embedding(sdk_path)
    cosine = float(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs)))
    check(cosine >= MIN_COSINE, f"slide_embedding of the kit's file: cosine {cosine:.6f} to the SDK's")
    print(f"the SDK's load_zarr_output and slide_embedding read the kit's {kit_path.name} (cosine {cosine:.7f})")


def m_optimus(url: str, slide: Path, work: Path) -> None:
    import zarr
    from bioptimus.inference.aggregate import pseudobulk

    with urllib.request.urlopen(f"{url}/api/metadata/m-optimus", timeout=60) as answer:
        genes = json.loads(answer.read())["input_genes"]
    counts = np.random.default_rng(0).integers(0, 500, len(genes)).astype(float)
    sent = counts.copy()
    sent[:MISSING_GENES] = -1
    csv = work / "rna.csv"
    csv.write_text(
        "sample," + ",".join(genes[MISSING_GENES:]) + "\ns1," + ",".join(f"{c:g}" for c in sent[MISSING_GENES:])
    )
    sdk_path = sdk_slide(slide, work / "sdk", "m-optimus", bulk_rna_path=csv)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(slide, arcname=slide.name)
        rna = json.dumps(sent.tolist()).encode()
        info = tarfile.TarInfo("bulk_rna.json")
        info.size = len(rna)
        archive.addfile(info, io.BytesIO(rna))
    headers = {
        "Content-Type": "application/x-tar",
        "X-Amzn-SageMaker-Custom-Attributes": "model=m-optimus;mode=prediction;format=zarr;dtype=float32",
    }
    request = urllib.request.Request(f"{url}/invocations", buffer.getvalue(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=600) as answer, zipfile.ZipFile(io.BytesIO(answer.read())) as zipped:
        zipped.extractall(work / "kit-m.zarr")
    kit, sdk = zarr.open(str(work / "kit-m.zarr"), mode="r"), zarr.open(str(sdk_path), mode="r")
    check(np.asarray(kit["outputs"]).shape[1] == 6002, "kit: M-Optimus predictions are not 6002 genes")
    same_tiles(kit, sdk, f"m-optimus with {MISSING_GENES} genes missing (-1)", counts=True)
    ours, theirs = pseudobulk(work / "kit-m.zarr"), pseudobulk(sdk_path)
    check(ours.gene_names is not None and ours.gene_names == theirs.gene_names, "pseudobulk: not the SDK's genes")
    apart = float(np.abs(ours.expression - theirs.expression).max())
    one_count = 1 / kit.attrs["num_tiles"]  # a mean over the tiles: one count apart in one tile (rounding)
    check(apart <= one_count + 1e-6, f"pseudobulk of the kit's file: {apart} from the SDK's")
    print(f"the SDK's pseudobulk reads the kit's file: its {len(ours.gene_names)} genes, within {apart:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="the kit's interpreter, which runs the server")
    parser.add_argument("--model-dir", type=Path, required=True, help="demo artifacts with h1, m-optimus, tissue-seg")
    args = parser.parse_args()
    print(f"bioptimus-sdk {version('bioptimus-sdk')} against the kit's server")
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "eu-west-1"}
    )
    port = free_port()
    command = [args.python, "-m", "model_code.serve", "--model-dir", str(args.model_dir), "--port", str(port)]
    with local_server(command, port) as server, tempfile.TemporaryDirectory(prefix="vendor-sdk-") as tmp:
        os.environ["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = server.url
        work = Path(tmp)
        slide = work / "forty.svs"
        make = (
            "import sys, pathlib; from kit.slides.synthetic import make_slide as m; m(pathlib.Path(sys.argv[1]), 0.25)"
        )
        subprocess.run([args.python, "-c", make, str(slide)], check=True)  # a 40x slide (0.25 um/px)
        try:
            verify(server.url)
            embeddings(args.python, server.url, slide, work)
            m_optimus(server.url, slide, work)
        except Mismatch as exc:
            print(f"MISMATCH: {exc}", file=sys.stderr)
            return 1
    print("the vendor's SDK works unchanged against the kit's server")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`kit upload`: upload an artifact to S3 with checksums, verified after the upload."""

from __future__ import annotations

import argparse
import base64
import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from kit import CheckFailed, KitError
from kit.artifacts import check_model_dir
from kit.cli import add_aws, add_json, session, write_output
from kit.s3 import parse

if TYPE_CHECKING:
    import boto3

HELP = "upload an artifact to S3 with checksums (dir -> prefix/)"
PART_BYTES = 64 * 1024 * 1024  # S3 checks every part's SHA-256 on arrival; the whole file's goes in the metadata
TARBALLS = (".tar.gz", ".tgz")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="OUT/model (uncompressed) or OUT/model.tar.gz")
    parser.add_argument("uri", help="s3://BUCKET/PREFIX/ for a directory, s3://BUCKET/KEY for a tarball")
    add_json(parser, "the URIs written")
    add_aws(parser)


def run(args: argparse.Namespace) -> int:
    check_upload(args.path, args.uri)  # before AWS is asked anything
    written = upload_artifact(args.path, args.uri, session(args))
    for uri in written:
        print(f"uploaded and verified {uri}")
    write_output(args.json, json.dumps({"uploaded": written}, indent=2).encode())
    return 0


def check_upload(path: Path, uri: str) -> None:
    """What can be checked without AWS: the URI, and that `path` is an artifact (a directory with its
    manifest, or a gzipped tarball; not a slide or any other file)."""
    _, key = parse(uri, needs_key=True)
    if path.is_dir():
        check_model_dir(path)
        if not key.endswith("/"):
            raise KitError(f"a model directory uploads to a prefix ending in '/', not '{uri}'")
    elif path.is_file():
        if not path.name.endswith(TARBALLS) or not tarfile.is_tarfile(path):
            raise KitError(f"{path} is not a model artifact: give OUT/model or OUT/model.tar.gz from `kit package`")
    else:
        raise KitError(f"{path} does not exist")


def upload_artifact(path: Path, uri: str, session: boto3.Session) -> list[str]:
    """Upload a model directory (to a prefix, uncompressed) or a model.tar.gz (to a key), verified.

    A directory is checked against its manifest before anything is sent; every object is sent with
    S3's SHA-256 checksums (S3 refuses a part that arrives different) and its whole-file sha256 in
    metadata, which is read back and compared after the upload. Returns the URIs written.
    """
    from boto3.s3.transfer import TransferConfig

    from model_code.manifest import MANIFEST, read_manifest, sha256_file

    bucket, key = parse(uri, needs_key=True)
    if path.is_dir():
        if not key.endswith("/"):
            raise KitError(f"a model directory uploads to a prefix ending in '/', not '{uri}'")
        manifest = read_manifest(path)  # refuses missing or altered files
        files = {rel: manifest.sha256[rel] for rel in manifest.sha256}
        files[MANIFEST] = sha256_file(path / MANIFEST)
    elif path.is_file():
        if key.endswith("/"):
            key += path.name
        files = {"": sha256_file(path)}
    else:
        raise KitError(f"{path} does not exist")
    s3 = session.client("s3")
    transfer = TransferConfig(multipart_chunksize=PART_BYTES, multipart_threshold=PART_BYTES)
    written = []
    for rel, digest in sorted(files.items()):
        source = path / rel if rel else path
        target = f"{key}{rel}" if rel else key
        s3.upload_file(
            str(source),
            bucket,
            target,
            ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": digest}},
            Config=transfer,
        )
        head = s3.head_object(Bucket=bucket, Key=target, ChecksumMode="ENABLED")
        stored = head.get("Metadata", {}).get("sha256")
        if stored != digest or head["ContentLength"] != source.stat().st_size:
            raise CheckFailed(
                f"s3://{bucket}/{target}: stored sha256 {stored} / size {head['ContentLength']} do not match"
            )
        single_part = head.get("ChecksumSHA256")
        if single_part and "-" not in single_part and single_part != base64.b64encode(bytes.fromhex(digest)).decode():
            raise CheckFailed(f"s3://{bucket}/{target}: S3's SHA-256 does not match the file's")
        written.append(f"s3://{bucket}/{target}")
    return written

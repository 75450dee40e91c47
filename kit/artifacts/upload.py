"""Deploy helpers over boto3: upload an artifact with checksums, find endpoints from stack outputs,
wait for an endpoint to be InService."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig

from kit import KitError
from model_code.manifest import MANIFEST, read_manifest, sha256_file

# Parts of 64 MiB: S3 checks every part's SHA-256 on arrival; the whole file's goes in the metadata.
TRANSFER = TransferConfig(multipart_chunksize=64 * 1024 * 1024, multipart_threshold=64 * 1024 * 1024)


def _split(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise KitError(f"'{uri}' is not s3://BUCKET/KEY")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def upload_artifact(path: Path, uri: str, session: boto3.Session | None = None) -> list[str]:
    """Upload a model directory (to a prefix, uncompressed) or a model.tar.gz (to a key), verified.

    A directory is checked against its manifest before anything is sent; every object is sent with
    S3's SHA-256 checksums (S3 refuses a part that arrives different) and its whole-file sha256 in
    metadata, which is read back and compared after the upload. Returns the URIs written.
    """
    bucket, key = _split(uri)
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
    s3 = (session or boto3.Session()).client("s3")
    written = []
    for rel, digest in sorted(files.items()):
        source = path / rel if rel else path
        target = f"{key}{rel}" if rel else key
        s3.upload_file(
            str(source),
            bucket,
            target,
            ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": digest}},
            Config=TRANSFER,
        )
        head = s3.head_object(Bucket=bucket, Key=target, ChecksumMode="ENABLED")
        stored = head.get("Metadata", {}).get("sha256")
        if stored != digest or head["ContentLength"] != source.stat().st_size:
            raise KitError(
                f"s3://{bucket}/{target}: stored sha256 {stored} / size {head['ContentLength']} do not match"
            )
        single_part = head.get("ChecksumSHA256")
        if single_part and "-" not in single_part and single_part != base64.b64encode(bytes.fromhex(digest)).decode():
            raise KitError(f"s3://{bucket}/{target}: S3's SHA-256 does not match the file's")
        written.append(f"s3://{bucket}/{target}")
    return written


def endpoints_from_stack(stack: str, session: boto3.Session | None = None) -> dict[str, list[str]]:
    """endpoint name -> models, from the outputs `<Name>EndpointName` and `<Name>Models` of the stack."""
    cloudformation = (session or boto3.Session()).client("cloudformation")
    stacks = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    endpoints = {}
    for output, name in outputs.items():
        if output.endswith("EndpointName"):
            models = outputs.get(output.removesuffix("EndpointName") + "Models")
            if models is None:
                raise KitError(f"stack {stack} has output {output} but no {output.removesuffix('EndpointName')}Models")
            endpoints[name] = models.split(",")
    if not endpoints:
        raise KitError(f"stack {stack} has no <Name>EndpointName outputs; is it the kit's endpoints stack?")
    return endpoints


def wait_in_service(
    endpoint: str, session: boto3.Session | None = None, timeout_s: float = 3600, poll_s: float = 30
) -> dict[str, Any]:
    """Poll DescribeEndpoint until InService; a Failed endpoint or the timeout raise with the reason."""
    sagemaker = (session or boto3.Session()).client("sagemaker")
    deadline = time.monotonic() + timeout_s
    while True:
        described: dict[str, Any] = sagemaker.describe_endpoint(EndpointName=endpoint)
        status = described["EndpointStatus"]
        if status == "InService":
            return described
        if status in ("Failed", "OutOfService", "Deleting"):
            reason = described.get("FailureReason", "SageMaker gave no reason")
            raise KitError(f"endpoint {endpoint} is {status}: {reason}")
        if time.monotonic() >= deadline:
            raise KitError(f"endpoint {endpoint} still {status} after {timeout_s:g} s")
        time.sleep(poll_s)

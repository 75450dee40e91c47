"""S3 for the kit's commands: URIs parsed as the stacks' configuration parses them (stacks/s3_uri.py), names
joined under a prefix, and "no such object" told by the error code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kit import KitError
from stacks import s3_uri

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

# A HEAD has no body, so botocore names its error by the status: HeadObject (and download_file, which heads first)
# says "404", for a missing bucket too; GetObject and ListObjectsV2 say NoSuchKey, NoSuchBucket; and "NotFound",
# which the kit's checks took before.
NOT_FOUND = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})


def parse(uri: str, field: str = "", *, shape: str = "s3://BUCKET/KEY", needs_key: bool = False) -> tuple[str, str]:
    """'s3://bucket/some/key' -> ('bucket', 'some/key'), 's3://bucket' or 's3://bucket/' -> ('bucket', '');
    anything else (or no key, with `needs_key`) is a usage error naming `field` and the SHAPE wanted."""
    try:
        return s3_uri.parse(uri, shape, needs_key=needs_key)
    except ValueError as exc:
        raise KitError(f"{field} {exc}" if field else str(exc)) from None


def folder(prefix: str) -> str:
    """A key prefix (or a URI) as a folder: '' or ending in '/'."""
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def join(prefix: str, name: str) -> str:
    """`name` in the folder `prefix`: ('out', 'a.h5') and ('out/', 'a.h5') -> 'out/a.h5'; ('', 'a.h5') -> 'a.h5'."""
    return folder(prefix) + name


def is_not_found(error: ClientError) -> bool:
    """Whether S3 said there is no such object (or bucket)."""
    return error.response.get("Error", {}).get("Code") in NOT_FOUND


def head(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """HeadObject's answer, or None where there is no such object."""
    from botocore.exceptions import ClientError

    try:
        return dict(s3.head_object(Bucket=bucket, Key=key))
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise

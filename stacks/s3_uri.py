"""An S3 URI, s3://BUCKET/KEY: split, or parsed (checked) where someone gave it.

No CDK imports (like names.py): the kit parses with it too (kit/s3.py), so a URI that cdk.json's context
accepts is one the kit's commands accept, and the other way round.
"""

from __future__ import annotations

import ipaddress
import re

SCHEME = "s3://"
# S3's rules for a general purpose bucket's name (docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html)
# The reserved suffixes end access point aliases, directory and table buckets, which the stacks' policies (on
# arn:aws:s3:::BUCKET) do not reach: refused here rather than by AccessDenied in a job.
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def split(uri: str) -> tuple[str, str]:
    """'s3://bucket/some/key' -> ('bucket', 'some/key'), 's3://bucket' -> ('bucket', ''), unchecked: for URIs
    made by the stacks (whose bucket may be a CDK token)."""
    bucket, _, key = uri.removeprefix(SCHEME).partition("/")
    return bucket, key


def parse(uri: str, shape: str = "s3://BUCKET/KEY", *, needs_key: bool = False) -> tuple[str, str]:
    """split(uri) of a URI someone gave, after checking its scheme, its bucket's name and, with `needs_key`,
    that it names a key; else ValueError "'URI' is not SHAPE", with why where there is more to say."""
    bucket, key = split(uri)
    if not uri.startswith(SCHEME) or not bucket:
        raise ValueError(f"'{uri}' is not {shape}")
    problem = bucket_problem(bucket)
    if problem:
        raise ValueError(f"'{uri}' is not {shape}: '{bucket}' is not an S3 bucket name: {problem}")
    if needs_key and not key:
        raise ValueError(f"'{uri}' is not {shape}: it names no key")
    return bucket, key


def bucket_problem(bucket: str) -> str | None:
    """Why `bucket` is not a general purpose bucket's name, or None."""
    if not BUCKET.fullmatch(bucket):
        return "3 to 63 lower-case letters, digits, '.' and '-', starting and ending with a letter or digit"
    if ".." in bucket:
        return "no two '.' in a row"
    if bucket.startswith(RESERVED_PREFIXES) or bucket.endswith(RESERVED_SUFFIXES):
        return f"no prefix {', '.join(RESERVED_PREFIXES)} and no suffix {', '.join(RESERVED_SUFFIXES)}"
    try:
        ipaddress.ip_address(bucket)
    except ValueError:
        return None
    return "not an IP address"

"""kit/s3.py and stacks/s3_uri.py: S3 URIs parsed one way for the stacks and the kit, "no such object" by the
error code S3 really sends (checked against moto's S3)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kit import KitError
from kit.s3 import folder, head, is_not_found, join, parse
from stacks import s3_uri
from tests.support.aws import mocked_aws

REGION = "eu-west-1"


@pytest.mark.parametrize(
    ("uri", "parts"),
    [
        ("s3://bucket/some/key.svs", ("bucket", "some/key.svs")),
        ("s3://bucket/prefix/", ("bucket", "prefix/")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://bucket", ("bucket", "")),  # the whole bucket, as `aws s3 ls s3://bucket` reads it
        ("s3://my.bucket-1/a//b", ("my.bucket-1", "a//b")),  # a key is taken as it is
    ],
)
def test_parse_splits_bucket_and_key(uri: str, parts: tuple[str, str]) -> None:
    assert parse(uri) == parts == s3_uri.parse(uri)


@pytest.mark.parametrize(
    ("uri", "said"),
    [
        ("s3:/bad/uri", "'s3:/bad/uri' is not s3://BUCKET/KEY"),
        ("bucket/key", "'bucket/key' is not s3://BUCKET/KEY"),
        ("s3://", "'s3://' is not s3://BUCKET/KEY"),
        ("s3:///key", "'s3:///key' is not s3://BUCKET/KEY"),
        ("S3://bucket/key", "is not s3://BUCKET/KEY"),
        ("s3://My_Bucket/k", "'My_Bucket' is not an S3 bucket name: 3 to 63 lower-case letters"),
        ("s3://ab/k", "'ab' is not an S3 bucket name"),
        ("s3://a..b/k", "no two '.' in a row"),
        ("s3://192.168.1.1/k", "not an IP address"),
        ("s3://xn--bucket/k", "no prefix xn--"),
        ("s3://slides-s3alias/k", "no suffix -s3alias"),
        ("s3://slides--usw2-az1--x-s3/k", "no suffix"),
    ],
)
def test_parse_refuses_what_is_not_a_uri_or_a_bucket(uri: str, said: str) -> None:
    with pytest.raises(KitError) as caught:
        parse(uri)
    assert str(caught.value).startswith(f"'{uri}' is not s3://BUCKET/KEY") and said in str(caught.value)
    with pytest.raises(ValueError, match="is not s3://BUCKET/KEY"):
        s3_uri.parse(uri)


def test_the_error_names_the_field_and_the_shape_wanted() -> None:
    with pytest.raises(KitError) as caught:
        parse("s3:/x/", "--input", shape="s3://BUCKET/PREFIX/")
    assert str(caught.value) == "--input 's3:/x/' is not s3://BUCKET/PREFIX/"
    for uri in ("s3://bucket", "s3://bucket/"):
        with pytest.raises(KitError, match="it names no key"):
            parse(uri, needs_key=True)
    assert parse("s3://bucket/k", needs_key=True) == ("bucket", "k")


def test_split_takes_a_cdk_token_for_the_bucket() -> None:
    """The stacks split URIs they made, whose bucket may be an unresolved token; no check, no error."""
    assert s3_uri.split("s3://${Token[TOKEN.123]}/cohorts/") == ("${Token[TOKEN.123]}", "cohorts/")
    assert s3_uri.split("s3://bucket") == ("bucket", "")


def test_folder_and_join() -> None:
    assert [folder(p) for p in ("", "out", "out/", "s3://b/out", "s3://b")] == [
        "",
        "out/",
        "out/",
        "s3://b/out/",
        "s3://b/",
    ]
    assert [join(p, "sub/a.h5") for p in ("", "out", "out/")] == ["sub/a.h5", "out/sub/a.h5", "out/sub/a.h5"]


def _error(code: str, operation: str = "HeadObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "..."}}, operation)


def test_not_found_is_told_by_the_code_alone() -> None:
    assert all(is_not_found(_error(code)) for code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"))
    assert not any(is_not_found(_error(code)) for code in ("403", "AccessDenied", "SlowDown", "NoSuchUpload"))
    assert not is_not_found(ClientError({"Error": {"Message": "Not Found"}}, "HeadObject"))  # the words, no code
    assert not is_not_found(ClientError({}, "HeadObject"))


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with mocked_aws(monkeypatch, REGION) as session:
        client = session.client("s3")
        client.create_bucket(Bucket="lab", CreateBucketConfiguration={"LocationConstraint": REGION})
        yield client


def test_what_s3_sends_for_a_missing_object_or_bucket_is_not_found(s3: Any, tmp_path: Path) -> None:
    """The call sites' own calls: HeadObject says "404" (a missing bucket too), GetObject NoSuchKey and
    NoSuchBucket, download_file (which heads first) "404"."""
    calls = {
        "head_object": lambda bucket: s3.head_object(Bucket=bucket, Key="nothing"),
        "get_object": lambda bucket: s3.get_object(Bucket=bucket, Key="nothing"),
        "download_file": lambda bucket: s3.download_file(bucket, "nothing", str(tmp_path / "x")),
    }
    codes = {}
    for name, call in calls.items():
        for bucket in ("lab", "no-such-bucket"):
            with pytest.raises(ClientError) as caught:
                call(bucket)
            codes[name, bucket] = caught.value.response["Error"]["Code"]
            assert is_not_found(caught.value), codes
    assert codes[("head_object", "lab")] == codes[("download_file", "lab")] == "404"
    assert codes[("get_object", "lab")] == "NoSuchKey" and codes[("get_object", "no-such-bucket")] == "NoSuchBucket"


def test_head_answers_none_for_a_missing_object_and_raises_the_rest(s3: Any) -> None:
    s3.put_object(Bucket="lab", Key="a.svs", Body=b"slide", Metadata={"sha256": "0" * 64})
    found = head(s3, "lab", "a.svs")
    assert found is not None and found["ContentLength"] == 5 and found["Metadata"] == {"sha256": "0" * 64}
    assert head(s3, "lab", "b.svs") is None and head(s3, "no-such-bucket", "a.svs") is None

    class Denied:
        def head_object(self, **_: str) -> None:
            raise _error("403")

    with pytest.raises(ClientError):
        head(Denied(), "lab", "a.svs")

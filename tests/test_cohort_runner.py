"""`kit slides run --endpoint`: a cohort of generated slides through SageMaker async inference end to end —
moto for S3, SNS, CloudFormation and CloudWatch, SageMaker's async machinery stood in by
tests/support/async_sagemaker.py around the kit's real server — with a failing slide, an existing output, resumes."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import h5py
import numpy as np
import pytest

from kit.__main__ import main
from kit.cohorts.runner import instance_hours
from kit.endpoints.samples import synthetic_counts
from kit.slides.synthetic import make_slide
from model_code.slides.options import SlideOptions
from model_code.slides.provenance import recipe
from tests.support.async_sagemaker import AsyncSageMaker
from tests.support.aws import mocked_aws
from tests.support.cohort_aws import BUCKET, REGION, deploy
from tests.support.serving import Running

ENDPOINT = "optimus-h1-slides"


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cohort")
    return {
        "a": make_slide(root / "case-a.svs", 0.5),
        "b": make_slide(root / "case-b.svs", 0.5, origin_px=(300, 200)),
        "no-mpp": make_slide(root / "no-mpp.svs", None),
    }


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch, running: Running) -> Iterator[tuple[boto3.Session, AsyncSageMaker]]:
    with mocked_aws(monkeypatch, REGION) as session:
        deploy(session)
        sagemaker = AsyncSageMaker(session, running.url, BUCKET, ENDPOINT)
        monkeypatch.setattr("kit.cohorts.command.session", lambda args: session)
        yield session, sagemaker
        sagemaker.stop()


def slides_run(out: Path, *extra: str) -> int:
    argv = ["slides", "run", "--endpoint", "h1-slides", "--model", "h1", "--out", str(out), "--poll", "0.2"]
    return main([*argv, "--option", "min_tissue=0.25", "--retries", "1", *extra])


def puts(session: boto3.Session) -> list[str]:
    keys: list[str] = []

    def upload(params: dict[str, Any], **_: Any) -> None:
        if "/async/input/" in params["Key"]:  # the runner's uploads, not the answers the stand-in writes
            keys.append(params["Key"])

    session.events.register("provide-client-params.s3.PutObject", upload)
    return keys


def test_cohort_runs_end_to_end_with_a_failing_slide_and_resumes(
    cloud: tuple[boto3.Session, AsyncSageMaker], slides: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    session, sagemaker = cloud
    uploaded = puts(session)
    out = tmp_path / "features"
    cohort = tmp_path / "cohort.csv"
    cohort.write_text(f"slide,slide_id\n{slides['b']},patient-7\n{slides['no-mpp']},\n")
    assert slides_run(out, str(slides["a"]), "--cohort", str(cohort), "--price-per-hour", "1.5") == 1
    report = capsys.readouterr().out
    assert "3 slides: 2 done, 1 failed" in report
    assert "no-mpp" in report and "slide_mpp" in report  # the server's reason, from the failure object
    assert sorted(p.name for p in out.iterdir()) == ["case-a.h5", "cohort-state.json", "patient-7.h5"]
    with h5py.File(out / "patient-7.h5", "r") as written:
        assert written.attrs["slide_name"] == "patient-7" and written.attrs["min_tissue"] == 0.25
        assert written["features"].shape[0] == written.attrs["tiles"] > 0
    state = {r["slide_id"]: r for r in json.loads((out / "cohort-state.json").read_text())["requests"]}
    assert state["no-mpp"]["attempts"] == 2 and state["no-mpp"]["status"] == "failed"  # 1 + --retries 1
    assert state["case-a"]["attempts"] == 1 and state["case-a"]["tiles"] > 0
    (call,) = [c for c in sagemaker.calls if c["InferenceId"] == "case-a-1"]
    assert call["ContentType"] == "application/octet-stream" and call["InvocationTimeoutSeconds"] == 3600
    assert call["CustomAttributes"] == "model=h1;format=h5;dtype=float16;min_tissue=0.25;slide_name=case-a"
    assert call["InputLocation"].startswith(f"s3://{BUCKET}/{ENDPOINT}/async/input/case-a/")
    digest = hashlib.sha256(slides["a"].read_bytes()).hexdigest()
    assert call["InputLocation"].endswith(f"/case-a/{digest[:32]}.svs")
    key = call["InputLocation"].split("/", 3)[3]
    assert session.client("s3").head_object(Bucket=BUCKET, Key=key)["Metadata"]["sha256"] == digest
    assert len(uploaded) == 3  # each slide once, though no-mpp was sent twice

    # resume with the missing option: finished slides are skipped, the failed one resubmitted, nothing re-uploaded
    calls = len(sagemaker.calls)
    assert slides_run(out, str(slides["a"]), "--cohort", str(cohort), "--option", "slide_mpp=0.5") == 0
    assert "3 slides: 3 done, 0 failed" in capsys.readouterr().out
    assert [c["InferenceId"] for c in sagemaker.calls[calls:]] == ["no-mpp-3"]
    assert len(uploaded) == 3 and (out / "no-mpp.h5").exists()


def test_zarr_answers_land_as_the_directories_the_vendor_sdk_opens(
    cloud: tuple[boto3.Session, AsyncSageMaker], slides: dict[str, Path], tmp_path: Path
) -> None:
    """The async answer is the server's one-file zip (SageMaker writes it to S3 as it is); the runner unpacks it
    into OUT/<slide_id>.zarr, and a rerun takes that directory for done."""
    import zarr

    _, sagemaker = cloud
    out = tmp_path / "features"
    assert slides_run(out, str(slides["a"]), "--format", "zarr") == 0
    group = zarr.open(str(out / "case-a.zarr"), mode="r")  # as bioptimus.utils.load_zarr_output opens it
    assert group["outputs"].shape[0] == group.attrs["num_tiles"] > 0 and (out / "case-a.zarr").is_dir()
    assert sorted(p.name for p in out.iterdir()) == ["case-a.zarr", "cohort-state.json"]
    assert slides_run(out, str(slides["a"]), "--format", "zarr") == 0 and len(sagemaker.calls) == 1


def test_an_existing_output_is_not_sent(
    cloud: tuple[boto3.Session, AsyncSageMaker], slides: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    session, sagemaker = cloud
    uploaded = puts(session)
    out = tmp_path / "features"
    out.mkdir()
    asked = recipe(SlideOptions(model="h1", min_tissue=0.25))
    with h5py.File(out / "case-a.h5", "w") as done:  # made the same way
        done.attrs.update({"tiles": 5, "recipe": json.dumps(asked)})
    assert slides_run(out, str(slides["a"]), str(slides["b"])) == 0
    assert [c["InferenceId"] for c in sagemaker.calls] == ["case-b-1"]
    assert len(uploaded) == 1 and "case-b" in uploaded[0]
    assert "2 slides: 2 done, 0 failed" in capsys.readouterr().out
    with h5py.File(out / "case-a.h5", "a") as done:  # made another way: refused before anything is sent
        done.attrs["recipe"] = json.dumps({**asked, "mpp": 1.0})
    assert slides_run(out, str(slides["a"])) == 2
    assert "case-a.h5 (mpp 1.0 there, 0.5 asked)" in capsys.readouterr().err and len(sagemaker.calls) == 1


def test_queued_slides_are_followed_not_resent_after_an_interruption(
    cloud: tuple[boto3.Session, AsyncSageMaker], slides: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _, sagemaker = cloud
    sagemaker.running.clear()  # the endpoint is scaling up from zero: requests wait in its queue
    out = tmp_path / "features"
    assert slides_run(out, str(slides["a"]), "--wait-hours", "0.0001") == 2
    assert "1 slide(s) still queued" in capsys.readouterr().err
    sagemaker.running.set()
    assert slides_run(out, str(slides["a"])) == 0
    assert len(sagemaker.calls) == 1 and (out / "case-a.h5").exists()


def test_s3_slides_must_be_where_the_endpoint_reads(
    cloud: tuple[boto3.Session, AsyncSageMaker], slides: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    session, sagemaker = cloud
    s3 = session.client("s3")
    s3.put_object(Bucket=BUCKET, Key=f"{ENDPOINT}/async/input/cohort-9/s1.svs", Body=slides["a"].read_bytes())
    s3.put_object(Bucket=BUCKET, Key="elsewhere/s2.svs", Body=b"x")
    out = tmp_path / "features"
    assert slides_run(out, f"s3://{BUCKET}/{ENDPOINT}/async/input/cohort-9/") == 0
    assert sagemaker.calls[0]["InputLocation"] == f"s3://{BUCKET}/{ENDPOINT}/async/input/cohort-9/s1.svs"
    assert (out / "s1.h5").exists()
    assert slides_run(out, f"s3://{BUCKET}/elsewhere/") == 2
    assert "the endpoint reads only" in capsys.readouterr().err


def test_a_real_time_endpoint_is_refused(cloud: Any, slides: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    argv = ["slides", "run", str(slides["a"]), "--endpoint", "h1", "--model", "h1", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert 'optimus-h1 is a real-time endpoint: deploy an entry with "async": true' in capsys.readouterr().err


def test_instance_hours_from_cpu_sample_counts(cloud: tuple[boto3.Session, AsyncSageMaker]) -> None:
    session, _ = cloud
    cloudwatch, now = session.client("cloudwatch"), datetime.now(UTC).replace(second=30, microsecond=0)
    dimensions = [{"Name": "EndpointName", "Value": ENDPOINT}, {"Name": "VariantName", "Value": "AllTraffic"}]
    for minute in range(30):  # 2 instances for 30 minutes: 1 instance-hour
        for _ in range(2):
            cloudwatch.put_metric_data(
                Namespace="/aws/sagemaker/Endpoints",
                MetricData=[{"MetricName": "CPUUtilization", "Dimensions": dimensions, "Value": 50.0,
                             "Timestamp": now - timedelta(minutes=minute)}],
            )  # fmt: skip
    began = (now - timedelta(minutes=40)).timestamp()
    assert instance_hours(session, ENDPOINT, began, now.timestamp()) == pytest.approx(1.0)
    assert instance_hours(session, "optimus-other", began, now.timestamp()) is None


def test_a_slide_over_1_gb_or_of_several_files_is_refused_before_anything_is_uploaded(
    cloud: tuple[boto3.Session, AsyncSageMaker], slides: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    session, sagemaker = cloud
    big = tmp_path / "big.svs"
    with big.open("wb") as sparse:
        sparse.truncate(1_100_000_000)  # no disk, no memory: its size is what the runner checks
    started: list[str] = []
    session.events.register("provide-client-params.s3.*", lambda params, **_: started.append(params.get("Key", "")))
    assert slides_run(tmp_path / "out", str(slides["a"]), str(big)) == 2
    error = capsys.readouterr().err
    assert "big (1.10 GB)" in error and "over async inference's 1 GB" in error and "kit cohort run" in error
    assert [k for k in started if k] == [] and sagemaker.calls == []  # slide a was not sent either
    s3 = session.client("s3")
    for key in ("cohort-9/case.mrxs", "cohort-9/case/Data0001.dat"):
        s3.put_object(Bucket=BUCKET, Key=f"{ENDPOINT}/async/input/{key}", Body=b"x")
    assert slides_run(tmp_path / "out", f"s3://{BUCKET}/{ENDPOINT}/async/input/cohort-9/") == 2
    assert "multi-file slides (one object a request): case;" in capsys.readouterr().err


def test_bulk_rna_goes_as_a_streamed_tar_in_checked_parts(
    cloud: tuple[boto3.Session, AsyncSageMaker], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 20 MB slide with its bulk RNA: the tar is never built in memory, goes up as multipart (8 MB parts, each
    with its SHA-256), is byte for byte the tar tarfile writes, and the model gets the RNA."""
    session, sagemaker = cloud
    slide = make_slide(tmp_path / "case-r.svs", 0.5)
    with slide.open("ab") as padded:  # trailing bytes past the TIFF's last IFD: OpenSlide ignores them
        padded.write(np.random.default_rng(0).bytes(20 << 20))
    rna = tmp_path / "rna.json"
    rna.write_text(json.dumps(synthetic_counts()))
    (tmp_path / "cohort.csv").write_text(f"slide,bulk_rna\n{slide},{rna}\n")
    parts: list[dict[str, Any]] = []
    session.events.register("provide-client-params.s3.UploadPart", lambda params, **_: parts.append(params))
    argv = ["--cohort", str(tmp_path / "cohort.csv"), "--option", "mode=prediction"]
    assert slides_run(tmp_path / "out", *argv[:2], "--model", "m-optimus", *argv[2:]) == 0, capsys.readouterr()
    assert len(parts) == 3 and all(p["ChecksumAlgorithm"] == "SHA256" for p in parts)
    (call,) = sagemaker.calls
    assert call["ContentType"] == "application/x-tar"
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, path in ((slide.name, slide), ("bulk_rna.json", rna)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = path.stat().st_size, 0o644
            with path.open("rb") as source:
                archive.addfile(info, source)
    bucket, key = call["InputLocation"].removeprefix("s3://").split("/", 1)
    sent = session.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    assert sent == reference.getvalue()
    with h5py.File(tmp_path / "out" / "case-r.h5", "r") as written:
        assert written.attrs["bulk_rna"] and written.attrs["output"] == "prediction"

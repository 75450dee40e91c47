"""`kit cohort run` and `kit cohort status`: a cohort in S3 through a training job, with moto for S3,
CloudFormation and SageMaker's training jobs (the job's progress set on moto's job where its fake has no
such field): the CreateTrainingJob request against botocore's service model, the manifest and cohort
channel the worker reads, resume (a rerun starts a job for the missing slides only), status and download."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from kit.__main__ import main
from model_code.cohort import contract
from tests.support.aws import mocked_aws
from tests.support.cohort_aws import ACCOUNT, ARTIFACTS, BUCKET, IMAGE, JOB_ROLE, KEY_ARN, REGION, SLIDES, deploy
from tests.support.service_model import request_errors

OUT = f"s3://{BUCKET}/cohorts/study-1/"
COHORT = {  # key under s3://SLIDES/cohorts/study/ -> size
    "a.svs": 3_000_000,
    "sub/b.svs": 1_000_000,
    "c.mrxs": 10_000,  # MRXS: the .mrxs file and the folder of its name
    "c/Data0000.dat": 2_000_000,
    "c/Slidedat.ini": 1_000,
    "d/1.dcm": 500_000,  # a DICOM series: one folder
    "d/2.dcm": 400_000,
    "notes.txt": 10,  # not a slide
}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.Session]:
    with mocked_aws(monkeypatch, REGION) as session:
        deploy(session)
        s3 = session.client("s3")
        for key, size in COHORT.items():
            s3.put_object(Bucket=SLIDES, Key=f"cohorts/study/{key}", Body=b"s" * size)
        s3.put_object(Bucket=ARTIFACTS, Key="h1/v1/manifest.json", Body=json.dumps({"models": [{"name": "h1"}]}))
        s3.put_object(Bucket=ARTIFACTS, Key="h1/v1/h1/model.safetensors", Body=b"w" * 1000)
        monkeypatch.setattr("kit.cohorts.job_run.session", lambda args: session)
        monkeypatch.setattr("kit.cohorts.job_status.session", lambda args: session)
        yield session


def requests(session: boto3.Session) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    session.events.register(
        "provide-client-params.sagemaker.CreateTrainingJob", lambda params, **_: sent.append(params)
    )
    return sent


def cohort_run(*extra: str, source: str = f"s3://{SLIDES}/cohorts/study/") -> int:
    return main(["cohort", "run", source, "--model", "h1", "--artifact", "kit://h1/v1/", "--out", OUT, *extra])


def read(session: boto3.Session, uri: str) -> bytes:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return bytes(session.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def fake_job(name: str) -> Any:
    """moto's job, whose status and timings the tests set as SageMaker would report them."""
    from moto.sagemaker.models import sagemaker_backends

    return sagemaker_backends[ACCOUNT][REGION].training_jobs[name]


def test_run_starts_a_job_that_botocores_model_accepts(aws: boto3.Session, capsys: pytest.CaptureFixture[str]) -> None:
    sent = requests(aws)
    assert cohort_run("--instances", "20", "--spot", "--price-per-hour", "1.5", "--job-name", "study-1") == 0
    printed = capsys.readouterr().out
    assert "4 of 4 slides without an output yet" in printed and "c.mrxs" in printed
    assert "2.0 MB" in printed and "6.9 MB in all, the largest 3.0 MB" in printed
    assert "training job, spot" in printed and "python -m kit cohort status study-1 --follow" in printed
    (request,) = sent
    assert request_errors("sagemaker", "CreateTrainingJob", request) == []
    assert request["RoleArn"] == JOB_ROLE and request["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == contract.METRIC_DEFINITIONS
    assert request["EnableNetworkIsolation"] is True and request["EnableManagedSpotTraining"] is True
    assert request["HyperParameters"] == {"model": "h1", "format": "h5", "dtype": "float16"}
    assert request["CheckpointConfig"] == {"S3Uri": OUT, "LocalPath": "/opt/ml/checkpoints"}
    assert request["OutputDataConfig"] == {"S3OutputPath": OUT + ".kit/", "KmsKeyId": KEY_ARN}
    assert request["ResourceConfig"]["InstanceCount"] == 4  # at most one instance per slide
    assert "VolumeKmsKeyId" not in request["ResourceConfig"]  # ml.g5: NVMe instance storage
    stopping = request["StoppingCondition"]
    assert 3600 < stopping["MaxRuntimeInSeconds"] <= stopping["MaxWaitTimeInSeconds"]
    assert request["RetryStrategy"] == {"MaximumRetryAttempts": 2}
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert channels["model"]["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{ARTIFACTS}/h1/v1/"
    slides = channels["slides"]["DataSource"]["S3DataSource"]
    assert (slides["S3DataType"], channels["slides"]["InputMode"]) == ("ManifestFile", "FastFile")
    manifest = json.loads(read(aws, slides["S3Uri"]))
    assert manifest == [
        {"prefix": f"s3://{SLIDES}/cohorts/study/"},
        "a.svs", "c.mrxs", "c/Data0000.dat", "c/Slidedat.ini", "d/1.dcm", "d/2.dcm", "sub/b.svs",
    ]  # fmt: skip
    cohort = channels["cohort"]["DataSource"]["S3DataSource"]["S3Uri"]
    lines = [json.loads(line) for line in read(aws, cohort + contract.COHORT_FILE).decode().splitlines()]
    assert [line["slide"] for line in lines] == ["a.svs", "c.mrxs", "d", "sub/b.svs"]
    assert all(line["slide_id"] is None and line["bulk_rna"] is None for line in lines)
    described = aws.client("sagemaker").describe_training_job(TrainingJobName="study-1")
    assert described["RoleArn"] == JOB_ROLE


def test_a_type_with_an_ebs_volume_gets_the_key_and_file_mode_room_for_every_slide(
    aws: boto3.Session, capsys: pytest.CaptureFixture[str]
) -> None:
    sent = requests(aws)
    assert cohort_run("--instance-type", "ml.p3.2xlarge", "--input-mode", "File", "--dry-run") == 0
    assert "dry run: nothing started" in capsys.readouterr().out and sent == []
    assert cohort_run("--instance-type", "ml.p3.2xlarge", "--input-mode", "File") == 0
    (request,) = sent
    assert request_errors("sagemaker", "CreateTrainingJob", request) == []
    resources = request["ResourceConfig"]
    assert resources["VolumeKmsKeyId"] == KEY_ARN and resources["InstanceCount"] == 1
    assert resources["VolumeSizeInGB"] == 11  # 6.9 MB of slides and 1 KB of artifact, 20% over, + 10 GB
    assert (
        request["InputDataConfig"][1]["InputMode"] == "File"
        and "MaxWaitTimeInSeconds" not in request["StoppingCondition"]
    )


def test_a_rerun_starts_a_job_for_the_missing_slides_only(
    aws: boto3.Session, capsys: pytest.CaptureFixture[str]
) -> None:
    sent = requests(aws)
    assert cohort_run("--job-name", "first") == 0
    fake_job("first").training_job_status = "InProgress"
    assert cohort_run() == 2
    assert "job first still runs over" in capsys.readouterr().err and len(sent) == 1
    fake_job("first").training_job_status = "Stopped"  # e.g. MaxRuntimeInSeconds: two slides were done
    s3 = aws.client("s3")
    for done in ("a.h5", "sub/b.h5"):
        s3.put_object(Bucket=BUCKET, Key=f"cohorts/study-1/{done}", Body=b"features")
    assert cohort_run("--job-name", "second") == 0
    assert "2 of 4 slides without an output yet" in capsys.readouterr().out
    manifest = json.loads(read(aws, sent[1]["InputDataConfig"][1]["DataSource"]["S3DataSource"]["S3Uri"]))
    assert manifest[1:] == ["c.mrxs", "c/Data0000.dat", "c/Slidedat.ini", "d/1.dcm", "d/2.dcm"]
    for done in ("c.h5", "d.h5"):
        s3.put_object(Bucket=BUCKET, Key=f"cohorts/study-1/{done}", Body=b"features")
    assert cohort_run() == 0
    assert "all 4 slides have their outputs under" in capsys.readouterr().out and len(sent) == 2


def test_a_cohort_csv_names_slides_and_brings_their_mpp_and_bulk_rna(
    aws: boto3.Session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sent = requests(aws)
    s3 = aws.client("s3")
    s3.put_object(Bucket=SLIDES, Key="cohorts/other/e.svs", Body=b"e" * 100)
    (tmp_path / "rna.json").write_text("[1, 2, -1]")
    csv = tmp_path / "cohort.csv"
    csv.write_text(
        "slide,slide_id,slide_mpp,bulk_rna\n"
        f"s3://{SLIDES}/cohorts/study/a.svs,patient-1,0.25,rna.json\n"
        f"s3://{SLIDES}/cohorts/other/e.svs,,,\n"
    )
    s3.put_object(Bucket=BUCKET, Key="cohorts/study-1/patient-1.h5", Body=b"done")  # named by its slide_id
    assert (
        main(["cohort", "run", "--cohort", str(csv), "--model", "h1", "--artifact", "kit://h1/v1/", "--out", OUT]) == 0
    )
    assert "1 of 2 slides without an output yet" in capsys.readouterr().out
    cohort = sent[0]["InputDataConfig"][2]["DataSource"]["S3DataSource"]["S3Uri"]
    (line,) = [json.loads(t) for t in read(aws, cohort + contract.COHORT_FILE).decode().splitlines()]
    assert line == {"slide": "other/e.svs", "slide_id": None, "slide_mpp": None, "bulk_rna": None}  # root: cohorts/
    s3.delete_object(Bucket=BUCKET, Key="cohorts/study-1/patient-1.h5")
    assert (
        main(["cohort", "run", "--cohort", str(csv), "--model", "h1", "--artifact", "kit://h1/v1/", "--out", OUT]) == 0
    )
    cohort = sent[1]["InputDataConfig"][2]["DataSource"]["S3DataSource"]["S3Uri"]
    first = json.loads(read(aws, cohort + contract.COHORT_FILE).decode().splitlines()[0])
    assert first == {"slide": "study/a.svs", "slide_id": "patient-1", "slide_mpp": 0.25, "bulk_rna": "bulk_rna/0.json"}
    assert read(aws, cohort + "bulk_rna/0.json") == b"[1, 2, -1]"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--option", "mpp=99"], "--option: field 'mpp'"),
        (["--option", "slide_name=x"], "per slide"),
        (["--option", "mpp"], "--option 'mpp': give KEY=VALUE"),
        (["--option", "mpp=0.5", "--option", "mpp=1"], "field 'mpp': is given twice"),
        (["--model", "tissue-seg"], "--model tissue-seg: give h1"),
        (["--artifact", "kit://h1/v1/model.tar.gz"], "give kit://KEY/"),
        (["--retries", "0"], "--retries 0: 1 to 30"),
        (
            ["--out", f"s3://{BUCKET}/elsewhere/"],
            "the cohort-job role writes only under s3://optimus-results-test/cohorts/",
        ),
        (["--artifact", "kit://h1/v2/"], "no manifest.json there"),
        (["--model", "h0"], "does not hold h0 (it holds h1)"),
    ],
)
def test_what_cannot_run_is_refused_before_any_job(
    aws: boto3.Session, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sent = requests(aws)
    assert cohort_run(*argv) == 2  # the later of an option given twice wins
    assert message in capsys.readouterr().err and sent == []


def test_slides_the_role_cannot_read_or_on_local_disk_are_refused(
    aws: boto3.Session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.client("s3").put_object(Bucket=SLIDES, Key="private/x.svs", Body=b"x")
    assert cohort_run(source=f"s3://{SLIDES}/private/") == 2
    assert "the cohort-job role reads only s3://optimus-slides-test/cohorts/" in capsys.readouterr().err
    (tmp_path / "local.svs").write_bytes(b"x")
    assert cohort_run(source=str(tmp_path)) == 2
    assert "a training job reads slides from S3" in capsys.readouterr().err


def test_status_reports_slides_spot_and_cost_and_downloads_the_outputs(
    aws: boto3.Session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cohort_run("--instances", "2", "--spot", "--job-name", "study-1") == 0
    s3 = aws.client("s3")
    lines = {
        "algo-1": [{"slide": "a.svs", "status": "done", "reason": "", "tiles": 1200, "seconds": 30.0},
                   {"slide": "c.mrxs", "status": "failed", "reason": "no mpp in the slide: give slide_mpp",
                    "tiles": 0, "seconds": 1.0}],
        "algo-2": [{"slide": "sub/b.svs", "status": "failed", "reason": "interrupted", "tiles": 0, "seconds": 0},
                   {"slide": "sub/b.svs", "status": "done", "reason": "", "tiles": 800, "seconds": 20.0}],
    }  # fmt: skip
    for host, outcomes in lines.items():
        body = "".join(json.dumps(o) + "\n" for o in outcomes)
        s3.put_object(Bucket=BUCKET, Key=f"cohorts/study-1/status/{host}.jsonl", Body=body.encode())
    for done in ("a.h5", "sub/b.h5"):
        s3.put_object(Bucket=BUCKET, Key=f"cohorts/study-1/{done}", Body=f"features of {done}".encode())
    job = fake_job("study-1")
    job.training_job_status, job.secondary_status = "Completed", "Completed"
    job.training_time_in_seconds, job.billable_time_in_seconds = 4000, 1200
    statuses = ("Starting", "Training", "Interrupted", "Restarting", "Training", "Completed")
    job.secondary_status_transitions = [{"Status": s, "StartTime": job.creation_time} for s in statuses]
    capsys.readouterr()
    argv = ["cohort", "status", "study-1", "--follow", "--price-per-hour", "2", "--download", str(tmp_path / "f")]
    assert main(argv) == 1  # a slide failed
    report = capsys.readouterr().out
    assert "4 slides: 2 done, 1 failed, 1 remaining; 2,000 tiles at 40.0 tiles/s" in report
    assert "failed c.mrxs: no mpp in the slide: give slide_mpp" in report and "interrupted" not in report
    assert "spot interruptions: 1" in report
    assert "instance-hours: 0.67, $1.33 at $2/h; spot saved 70% (billable 1,200 s of 4,000 s)" in report
    assert (tmp_path / "f" / "sub" / "b.h5").read_bytes() == b"features of sub/b.h5"
    assert sorted(str(p.relative_to(tmp_path / "f")) for p in (tmp_path / "f").rglob("*.h5")) == ["a.h5", "sub/b.h5"]
    assert main(["cohort", "status", "no-such-job"]) == 2


def test_zarr_outputs_download_as_the_directories_the_vendor_sdk_opens(aws: boto3.Session, tmp_path: Path) -> None:
    import io
    import zipfile

    assert cohort_run("--format", "zarr", "--job-name", "study-z") == 0
    s3 = aws.client("s3")
    done = {"slide": "a.svs", "status": "done", "reason": "", "tiles": 3, "seconds": 1.0}
    s3.put_object(Bucket=BUCKET, Key="cohorts/study-1/status/algo-1.jsonl", Body=(json.dumps(done) + "\n").encode())
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:  # a Zarr store's entries, as the worker's writer zips them
        archive.writestr(".zgroup", '{"zarr_format": 2}')
        archive.writestr(".zattrs", '{"num_tiles": 3}')
    s3.put_object(Bucket=BUCKET, Key="cohorts/study-1/a.zarr.zip", Body=zipped.getvalue())  # OUT
    job = fake_job("study-z")
    job.training_job_status, job.secondary_status = "Completed", "Completed"
    assert main(["cohort", "status", "study-z", "--download", str(tmp_path / "f")]) == 0  # 3 slides remain
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["a.zarr"]
    assert json.loads((tmp_path / "f" / "a.zarr" / ".zattrs").read_text()) == {"num_tiles": 3}


def test_the_engines_do_not_import_the_slides_command() -> None:
    """kit/slides/run.py dispatches to kit/cohorts (--endpoint); nothing in kit/cohorts imports it back."""
    import ast

    root = Path(__file__).resolve().parents[1] / "kit" / "cohorts"
    imported = {
        (path.name, node.module)
        for path in root.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert ("command.py", "kit.cohorts.cohort") in imported  # the walk sees the imports
    assert [(name, module) for name, module in imported if module == "kit.slides.run"] == []

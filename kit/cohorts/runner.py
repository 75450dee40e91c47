"""The cohort runner behind `kit slides run --endpoint NAME`: every slide through a SageMaker async endpoint.

refused first, before anything is uploaded: a slide over async inference's 1 GB a request, or a multi-file one
(the error names the training-job path, `kit cohort run`, which takes both).
submit: local slides are uploaded to the endpoint's AsyncInput prefix under their sha256 (skipped when S3
already holds that object: same key, same checksum), slides with bulk RNA as the tar the slide path reads;
both streamed from disk in multipart uploads S3 checks part by part (SHA-256), never held in memory;
then one InvokeEndpointAsync per slide, its options in the custom attributes.
follow: SageMaker writes each answer (or the container's error) to the output (failure) location it returned;
the runner polls those objects, downloads answers to OUT/<slide_id>.h5 (or .zarr/) and checks them.
resume: OUT/cohort-state.json records every request; a rerun skips finished slides, keeps following the
ones still queued, and resubmits failed ones; each run gives a slide at most 1 + --retries submissions.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kit import KitError
from kit.cohorts.cohort import MRXS, CohortSlide, with_sizes
from kit.s3 import head, is_not_found, parse
from kit.slides.transport import Member, Part, part_chunks, parts_length, tar_parts
from stacks import names

if TYPE_CHECKING:
    import boto3

    from kit.cohorts.deployment import Deployment

STATE = "cohort-state.json"
# Async inference's request cap ("up to 1 GB"): read as 10^9 bytes, the stricter reading, so that nothing this
# lets through is refused by SageMaker after its upload.
ASYNC_MAX_BYTES = 1_000_000_000
UPLOAD_PARTS_IN_FLIGHT = 4  # parts of 8 MB (s3transfer's default) held at once: what an upload holds in memory
TAR, SLIDE = "application/x-tar", "application/octet-stream"


@dataclass
class Request:
    """One slide's life in the cohort, as the state file keeps it."""

    slide_id: str
    input_uri: str = ""
    output_uri: str = ""
    failure_uri: str = ""
    attempts: int = 0
    status: str = "new"  # new, queued, done, failed
    reason: str = ""
    tiles: int = 0
    submitted: float = 0.0
    seconds: float = 0.0  # from submission to the answer, queue included


@dataclass
class Cohort:
    deployment: Deployment
    aws: boto3.Session
    out_dir: Path
    suffix: str  # .h5 or .zarr (layouts.LOCAL_SUFFIXES)
    attributes: str
    retries: int = 2
    invocation_timeout_s: int = 3600
    requests: dict[str, Request] = field(default_factory=dict)
    tries: dict[str, int] = field(default_factory=dict)  # submissions in this run: 1 + retries at most

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE

    def target(self, slide_id: str) -> Path:
        return self.out_dir / f"{slide_id}{self.suffix}"

    def load(self) -> None:
        if self.state_path.is_file():
            saved = json.loads(self.state_path.read_text())
            self.requests = {r["slide_id"]: Request(**r) for r in saved["requests"]}

    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        body = {"endpoint": self.deployment.endpoint_name, "requests": [asdict(r) for r in self.requests.values()]}
        partial = self.state_path.with_suffix(".part")
        partial.write_text(json.dumps(body, indent=1))
        partial.replace(self.state_path)

    def submit(self, slide: CohortSlide) -> Request:
        """Upload (if local) and invoke, unless the slide is done, still queued, or out of attempts."""
        request = self.requests.setdefault(slide.slide_id, Request(slide.slide_id))
        if self.target(slide.slide_id).exists():
            request.status = "done"
            return request
        if request.status == "queued" or self.tries.get(slide.slide_id, 0) > self.retries:
            return request
        if not request.input_uri:
            request.input_uri = self._input(slide)
        runtime = self.aws.client("sagemaker-runtime")
        answer = runtime.invoke_endpoint_async(
            EndpointName=self.deployment.endpoint_name,
            InputLocation=request.input_uri,
            ContentType=TAR if slide.bulk_rna else SLIDE,
            CustomAttributes=f"{self.attributes};slide_name={slide.slide_id}"
            + (f";slide_mpp={slide.slide_mpp:g}" if slide.slide_mpp is not None else ""),
            InferenceId=f"{slide.slide_id}-{request.attempts + 1}"[-64:],
            InvocationTimeoutSeconds=self.invocation_timeout_s,
        )
        request.output_uri, request.failure_uri = answer["OutputLocation"], answer.get("FailureLocation", "")
        request.attempts += 1
        self.tries[slide.slide_id] = self.tries.get(slide.slide_id, 0) + 1
        request.status, request.reason, request.submitted = "queued", "", time.time()
        return request

    def _input(self, slide: CohortSlide) -> str:
        """The request body's S3 URI: an S3 slide as it is (it must be where the role reads), a local one
        uploaded under its checksum, streamed from disk in parts that S3 checks (SHA-256 each)."""
        allowed = self.deployment.uri("AsyncInput")
        if slide.in_s3:
            if slide.bulk_rna:
                raise KitError(f"{slide.slide_id}: a slide with bulk_rna must be a local file (it is sent as a tar)")
            if not slide.source.startswith(allowed):
                raise KitError(f"{slide.source}: the endpoint reads only {allowed}; copy it there (aws s3 cp)")
            return slide.source
        body = _body(slide)
        with body() as stream:
            digest = hashlib.file_digest(stream, "sha256").digest()
        key = f"{self.deployment.prefixes['AsyncInput']}{slide.slide_id}/{digest.hex()[:32]}"
        key += ".tar" if slide.bulk_rna else "".join(Path(slide.source).suffixes)
        from boto3.s3.transfer import TransferConfig

        s3 = self.aws.client("s3")
        if not _holds(s3, self.deployment.bucket, key, digest):
            with body() as stream:
                s3.upload_fileobj(
                    stream,
                    self.deployment.bucket,
                    key,
                    ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": digest.hex()}},
                    Config=TransferConfig(max_concurrency=UPLOAD_PARTS_IN_FLIGHT),
                )
        return f"s3://{self.deployment.bucket}/{key}"

    def follow_once(self) -> list[Request]:
        """Check each queued request's output and failure objects; the requests that ended now."""
        from kit.slides.features import output_tiles
        from kit.slides.transport import SlideFailed
        from model_code.slides.layouts import install

        s3, ended = self.aws.client("s3"), []
        for request in self.requests.values():
            if request.status != "queued":
                continue
            target = self.target(request.slide_id)
            partial = target.with_name(target.name + ".part")
            if _download(s3, request.output_uri, partial):
                try:
                    request.tiles, request.status = output_tiles(partial), "done"
                    install(partial, target)
                except SlideFailed as exc:
                    partial.unlink()
                    request.status, request.reason = "failed", str(exc)
            elif request.failure_uri and _download(s3, request.failure_uri, partial):
                request.status, request.reason = "failed", _reason(partial.read_bytes())
                partial.unlink()
            else:
                continue
            request.seconds = time.time() - request.submitted
            ended.append(request)
        return ended


def run_cohort(
    cohort: Cohort, slides: list[CohortSlide], poll_s: float, timeout_s: float
) -> tuple[list[Request], float]:
    """Submit, follow, resubmit failures (up to --retries), with a progress bar; the requests and wall time."""
    from kit.progress import progress

    began = time.time()
    cohort.load()
    by_id = {s.slide_id: s for s in slides}
    with progress(total=len(slides), unit="slide") as bar:
        while True:
            for slide in slides:
                cohort.submit(slide)
            cohort.save()
            finished = [r for s, r in cohort.requests.items() if s in by_id and r.status in ("done", "failed")]
            bar.update(len(finished) - bar.n)
            queued = [r for s, r in cohort.requests.items() if s in by_id and r.status == "queued"]
            bar.set_postfix_str(f"{len(queued)} queued")
            if not queued:
                break
            if time.time() - began > timeout_s:
                raise KitError(
                    f"{len(queued)} slide(s) still queued after {timeout_s:g} s: run again to keep following"
                )
            time.sleep(poll_s)
            for request in cohort.follow_once():
                verb = f"{request.tiles} tiles" if request.status == "done" else f"failed: {request.reason}"
                bar.write(f"{request.slide_id}: {verb} ({request.seconds:.0f} s, attempt {request.attempts})")
    return [cohort.requests[s.slide_id] for s in slides], time.time() - began


def instance_hours(aws: boto3.Session, endpoint: str, began: float, ended: float) -> float | None:
    """Instance-hours from CloudWatch: CPUUtilization's sample count per minute is the instance count."""
    cloudwatch = aws.client("cloudwatch")
    start = datetime.fromtimestamp(began, UTC).replace(second=0, microsecond=0)
    points = cloudwatch.get_metric_statistics(
        Namespace="/aws/sagemaker/Endpoints",
        MetricName="CPUUtilization",
        Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": names.VARIANT}],
        StartTime=start,
        EndTime=datetime.fromtimestamp(ended, UTC) + timedelta(minutes=1),
        Period=60,
        Statistics=["SampleCount"],
    )["Datapoints"]
    return sum(p["SampleCount"] for p in points) / 60 if points else None


def report(requests: list[Request], wall_s: float, hours: float | None, price: float | None) -> str:
    done = [r for r in requests if r.status == "done"]
    failed = [r for r in requests if r.status == "failed"]
    lines = [f"{'slide':32} {'status':7} {'tiles':>7} {'seconds':>8} {'tries':>5}  reason"]
    lines += [
        f"{r.slide_id[:32]:32} {r.status:7} {r.tiles:7d} {r.seconds:8.0f} {r.attempts:5d}  {r.reason}" for r in requests
    ]
    lines.append(
        f"{len(requests)} slides: {len(done)} done, {len(failed)} failed; {sum(r.tiles for r in done)} tiles; "
        f"wall time {wall_s / 60:.1f} min"
    )
    if hours is None:
        lines.append("instance-hours: no CPUUtilization samples yet (CloudWatch lags a few minutes; run again)")
    else:
        cost = f", ${hours * price:,.2f} at ${price}/h" if price is not None else " (--price-per-hour for the cost)"
        lines.append(f"instance-hours: {hours:.2f}{cost}")
    return "\n".join(lines)


def refuse_oversized(slides: list[CohortSlide], s3: Any) -> None:
    """Before anything is uploaded: every slide must fit one async request (one object, at most 1 GB with its
    bulk RNA), else the cohort belongs to a training job."""
    too_big, multi = [], []
    for slide in with_sizes(s3, slides):
        local_units = not slide.in_s3 and (Path(slide.source).is_dir() or slide.source.lower().endswith(MRXS))
        if len(slide.parts) > 1 or local_units:
            multi.append(slide.slide_id)
            continue
        size = slide.size or 0
        if slide.bulk_rna:
            size = parts_length(_tar_parts(Path(slide.source), slide.bulk_rna))
        if size > ASYNC_MAX_BYTES:
            too_big.append(f"{slide.slide_id} ({size / 1e9:.2f} GB)")
    if too_big or multi:
        said = (
            [f"{len(too_big)} slide(s) over async inference's 1 GB a request: {', '.join(too_big[:5])}"]
            if too_big
            else []
        )
        said += [f"multi-file slides (one object a request): {', '.join(multi[:5])}"] if multi else []
        raise KitError(
            f"{'; '.join(said)}; nothing was uploaded. Run the cohort as a training job instead "
            "(slides in S3, any size): python -m kit cohort run s3://BUCKET/SLIDES/ --model MODEL "
            "--artifact kit://KEY/ --out s3://BUCKET/FEATURES/"
        )


def _body(slide: CohortSlide) -> Callable[[], io.BufferedReader]:
    """Opens the request body as a stream: the slide file, or the tar of the slide and bulk_rna.json."""
    if slide.bulk_rna is None:
        return lambda: Path(slide.source).open("rb")
    parts = _tar_parts(Path(slide.source), slide.bulk_rna)
    return lambda: io.BufferedReader(_Concatenated(part_chunks(parts)), 1 << 20)


def _tar_parts(slide: Path, rna: Path) -> list[Part]:
    """The tar of the slide and bulk_rna.json the slide path reads, none of it read yet."""
    return tar_parts([Member(slide.name, slide), Member("bulk_rna.json", rna)])


class _Concatenated(io.RawIOBase):
    """A stream of byte strings as a readable file."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        size = min(len(buffer), len(self._pending))
        buffer[:size], self._pending = self._pending[:size], self._pending[size:]
        return size


def _holds(s3: Any, bucket: str, key: str, digest: bytes) -> bool:
    found = head(s3, bucket, key)
    return found is not None and found.get("Metadata", {}).get("sha256") == digest.hex()


def _download(s3: Any, uri: str, path: Path) -> bool:
    """Whether the object was there (and is now at `path`)."""
    from botocore.exceptions import ClientError

    try:
        s3.download_file(*parse(uri), str(path))
    except ClientError as exc:
        if is_not_found(exc):
            return False
        raise
    return True


def _reason(body: bytes) -> str:
    """The container's error (our layout: {"error": ..., "field": ...}), or the failure object's text."""
    text = body.decode(errors="replace").strip()
    try:
        error = json.loads(text)
    except json.JSONDecodeError:
        return text[:300]
    return str(error.get("error", text))[:300] if isinstance(error, dict) else text[:300]

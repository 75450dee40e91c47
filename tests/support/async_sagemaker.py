"""SageMaker's asynchronous inference, standing in around moto: each InvokeEndpointAsync is queued and
answered with its output and failure locations; a worker (one instance) reads the request body from S3,
POSTs it to the container — the kit's real server on a local port — with the content type and custom
attributes SageMaker passes on, and writes the answer to the output location or the error to the failure
location, as SageMaker does."""

from __future__ import annotations

import queue
import threading
import uuid
from typing import Any

import boto3
import httpx
from botocore.awsrequest import AWSResponse


class AsyncSageMaker:
    def __init__(self, session: boto3.Session, container_url: str, bucket: str, endpoint: str) -> None:
        self.session, self.url, self.bucket, self.endpoint = session, container_url, bucket, endpoint
        self.calls: list[dict[str, Any]] = []
        self.queue: queue.Queue[tuple[dict[str, Any], str, str] | None] = queue.Queue()
        self.running = threading.Event()
        self.running.set()
        self._params: dict[str, Any] = {}
        session.events.register("provide-client-params.sagemaker-runtime.InvokeEndpointAsync", self._capture)
        session.events.register("before-call.sagemaker-runtime.InvokeEndpointAsync", self._invoke)
        self.worker = threading.Thread(target=self._work, daemon=True)
        self.worker.start()

    def _capture(self, params: dict[str, Any], **_: Any) -> None:
        self._params = dict(params)

    def _invoke(self, **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        params = self._params
        assert params["EndpointName"] == self.endpoint, params["EndpointName"]
        self.calls.append(params)
        name = uuid.uuid4().hex
        output = f"s3://{self.bucket}/{self.endpoint}/async/output/{name}.out"
        failure = f"s3://{self.bucket}/{self.endpoint}/async/failures/{name}-error.out"
        self.queue.put((params, output, failure))
        answer = {"InferenceId": params.get("InferenceId", name), "OutputLocation": output, "FailureLocation": failure}
        return AWSResponse("https://runtime.sagemaker", 202, {}, None), answer

    def _work(self) -> None:
        s3 = self.session.client("s3")
        while (item := self.queue.get()) is not None:
            self.running.wait()
            params, output, failure = item
            bucket, _, key = params["InputLocation"].removeprefix("s3://").partition("/")
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            headers = {
                "Content-Type": params["ContentType"],
                "X-Amzn-SageMaker-Custom-Attributes": params.get("CustomAttributes", ""),
            }
            answer = httpx.post(f"{self.url}/invocations", content=body, headers=headers, timeout=600)
            where = output if answer.status_code == 200 else failure
            _, _, out_key = where.removeprefix("s3://").partition("/")
            s3.put_object(Bucket=self.bucket, Key=out_key, Body=answer.content)
            self.queue.task_done()

    def stop(self) -> None:
        self.running.set()
        self.queue.put(None)
        self.worker.join(timeout=60)

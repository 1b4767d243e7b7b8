"""Asynchronous jobs and the model registry without AWS: their buckets, tables and queues on moto, and Lambda's SQS
event source.

`local_lambda.py serve` starts moto's server on loopback, creates the resources the template declares
(`create_resources`, `create_registry`) and polls each queue for its function (`SqsEventSource`), as Lambda's event
source mapping does: receive a batch, invoke the function, delete the messages it did not report as failed.
Tests use the same pieces in-process, under moto's mock.

moto's server itself runs from here (`python scripts/local_jobs.py --port N`, see `moto_app`), so that a
presigned PUT keeps its bytes whatever its Content-Type, as S3 does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import boto3
import orjson

LOG = logging.getLogger("local_jobs")
MAX_RECEIVE_COUNT = 3  # as the template's RedrivePolicy
# The training queue as the template declares it (handler/training/jobs.py MAX_ATTEMPTS, 6 x the function's timeout)
TRAINING_MAX_RECEIVES = 2
TRAINING_VISIBILITY_S = 5400


@dataclass(frozen=True)
class JobResources:
    bucket: str
    table: str
    work_queue_url: str
    work_queue_arn: str
    results_queue_url: str
    results_queue_arn: str
    dead_letter_queue_url: str
    dead_letter_queue_arn: str

    def environment(self) -> dict[str, str]:
        """The functions' variables, as the template sets them from these resources."""
        return {
            "JOBS_BUCKET": self.bucket,
            "JOBS_TABLE": self.table,
            "JOB_QUEUE_URL": self.work_queue_url,
            "RESULTS_QUEUE_URL": self.results_queue_url,
            "JOB_DEAD_LETTER_QUEUE_ARN": self.dead_letter_queue_arn,
        }


def create_resources(prefix: str = "gpr-local", visibility_timeout_s: int = 60, **client_args: Any) -> JobResources:
    """The bucket, table (key `id`, TTL on `expiration`) and queues (with redrive to a DLQ) of jobs."""
    s3 = boto3.client("s3", **client_args)
    dynamodb = boto3.client("dynamodb", **client_args)
    sqs = boto3.client("sqs", **client_args)
    bucket, table = f"{prefix}-jobs", f"{prefix}-jobs"
    s3.create_bucket(Bucket=bucket)
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.update_time_to_live(
        TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"}
    )

    def queue(name: str, attributes: dict[str, Any]) -> tuple[str, str]:
        url = sqs.create_queue(QueueName=f"{prefix}-{name}", Attributes=attributes)["QueueUrl"]  # type: ignore[arg-type]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return url, arn

    dlq_url, dlq_arn = queue("dead-letters", {})
    redrive = orjson.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT}).decode()
    attributes: dict[str, Any] = {"VisibilityTimeout": str(visibility_timeout_s), "RedrivePolicy": redrive}
    work_url, work_arn = queue("work", attributes)
    results_url, results_arn = queue("results", attributes)
    return JobResources(bucket, table, work_url, work_arn, results_url, results_arn, dlq_url, dlq_arn)


@dataclass(frozen=True)
class RegistryResources:
    bucket: str
    table: str
    training_queue_url: str = ""
    training_queue_arn: str = ""

    def environment(self) -> dict[str, str]:
        """The functions' variables, as the template sets them from these resources; writes on, as the local API has
        no caller to keep out (the template's RegistryWritesWithoutAuth)."""
        return {
            "REGISTRY_BUCKET": self.bucket,
            "REGISTRY_TABLE": self.table,
            "REGISTRY_WRITES": "true",
            "TRAINING_QUEUE_URL": self.training_queue_url,
        }


def create_registry(prefix: str = "gpr-local", **client_args: Any) -> RegistryResources:
    """The model registry's bucket and table (key `pk` + `sk`, strings, as the template's RegistryTable; no TTL), and
    the training queue with its dead-letter queue (a job delivered at most twice, as the template's TrainingQueue)."""
    s3 = boto3.client("s3", **client_args)
    dynamodb = boto3.client("dynamodb", **client_args)
    bucket = table = f"{prefix}-registry"
    s3.create_bucket(Bucket=bucket)
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    sqs = boto3.client("sqs", **client_args)
    dead_url = sqs.create_queue(QueueName=f"{prefix}-training-dead-letters")["QueueUrl"]
    dead_arn = sqs.get_queue_attributes(QueueUrl=dead_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": TRAINING_MAX_RECEIVES})
    attributes = {"VisibilityTimeout": str(TRAINING_VISIBILITY_S), "RedrivePolicy": redrive}
    url = sqs.create_queue(QueueName=f"{prefix}-training", Attributes=attributes)["QueueUrl"]  # type: ignore[arg-type]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return RegistryResources(bucket, table, url, arn)


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """The event Lambda's SQS event source mapping sends for these ReceiveMessage results."""
    region = queue_arn.split(":")[3]
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {},
                "md5OfBody": hashlib.md5(m["Body"].encode(), usedforsecurity=False).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for m in messages
        ]
    }


class SqsEventSource:
    """Lambda's event source mapping for one queue, with ReportBatchItemFailures."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        queue_arn: str,
        invoke: Callable[[dict[str, Any]], Any],
        batch_size: int = 10,
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.invoke = invoke
        self.batch_size = batch_size
        self.stopping = threading.Event()  # `run`'s: once set, a failure is the server stopping, not a fault

    def poll(self, wait_s: int = 0) -> int:
        """One batch: received, handed to the function, deleted unless reported failed. Returns its size."""
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=wait_s,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return 0
        try:
            response = self.invoke(sqs_event(messages, self.queue_arn))
        except Exception:  # a function error: the whole batch comes back after its visibility timeout
            if not self.stopping.is_set():
                LOG.exception("invocation failed for %d message(s) of %s", len(messages), self.queue_arn)
            return len(messages)
        failed = {item["itemIdentifier"] for item in (response or {}).get("batchItemFailures", [])}
        done = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        done = [entry for entry, m in zip(done, messages, strict=True) if m["MessageId"] not in failed]
        if done:
            self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=done)
        return len(messages)

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set: within a second (the receive's wait), or once an invocation in flight ends."""
        self.stopping = stop
        while not stop.is_set():
            try:
                self.poll(wait_s=1)
            except Exception:  # the local server keeps going, as Lambda's pollers do
                if stop.is_set():  # moto or the function stopping under it: the server is stopping, say nothing
                    return
                LOG.exception("polling %s failed", self.queue_arn)
                stop.wait(1)


def drain(sources: list[SqsEventSource], timeout_s: float = 60.0) -> None:
    """Poll every source until none has messages (in flight ones included) or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(source.poll() for source in sources):
            continue
        pending = 0
        for source in sources:
            counts = source.sqs.get_queue_attributes(
                QueueUrl=source.queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            pending += sum(int(value) for value in counts.values())
        if not pending:
            return
        time.sleep(0.05)
    raise TimeoutError(f"queues not drained within {timeout_s} s")


def moto_app() -> Callable[[dict[str, Any], Any], Iterable[bytes]]:
    """moto's server application (S3, SQS, DynamoDB, ...), with S3's rule for PUT bodies: stored as sent.

    moto parses a body sent as `application/x-www-form-urlencoded` (Python urllib's default) or multipart as a
    form, as its Query APIs and S3's browser POST uploads need; for a PUT that leaves an empty object (or a
    form key) where S3 would store the bytes. Its dispatcher also reads such a body to guess the service,
    which loses a body that is not UTF-8. S3 parses no PUT body as a form; neither does this application.
    """
    from moto.moto_server.werkzeug_app import BackendRequest, DomainDispatcherApplication, create_backend_app

    class RawPutRequest(BackendRequest):
        @property
        def want_form_data_parsed(self) -> bool:  # werkzeug's hook: False keeps the stream for request.data
            return self.method != "PUT" and bool(super().want_form_data_parsed)

    def create_app(service: Any) -> Any:
        app = create_backend_app(service)
        app.request_class = RawPutRequest
        return app

    dispatcher = DomainDispatcherApplication(create_app)

    def application(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "PUT":
            # Routed on the URL and headers alone (a presigned PUT, unsigned by header, goes to S3): the
            # dispatcher must not read the body to guess the service.
            backend = dispatcher.get_application({**environ, "CONTENT_TYPE": ""})
            return backend(environ, start_response)
        return dispatcher(environ, start_response)

    return application


def serve_moto(host: str, port: int) -> None:
    """`moto_app` on host:port, threaded, as `python -m moto.server` serves moto's own; SIGTERM stops it."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(port))  # as moto.server: moto links some resources to its own port
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(host, port, moto_app(), threaded=True, request_handler=MotoRequestHandler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="moto's server for the local jobs (S3 keeps PUT bodies as sent)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", "-p", type=int, required=True)
    args = parser.parse_args(argv)
    serve_moto(args.host, args.port)


if __name__ == "__main__":
    main()

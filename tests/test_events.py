"""Bucket notifications to Prefect events: parsing, auth, batching, the HTTP receiver, SQS, keyed batches."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest
import requests

from encord_ingest.errors import ConfigError
from flows.credentials import load_secret_env
from integrations.events import Authenticator, Batcher, MalformedNotification, Receiver, SqsPoller, parse, sign
from integrations.events.emit import EmitError, PrefectEmitter, keys_size
from integrations.storage import open_source
from tasks.filters import KeyFilter
from tasks.keyed import KeyedStats, keyed_batches
from tasks.listing import ListingOptions

SECRET = "s3cr3t-value-never-logged"


# -- notification builders, as the providers send them -----------------------------------------------


def s3_notification(bucket: str, keys: list[str], event: str = "ObjectCreated:Put") -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventName": event,
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": quote_plus(key, safe="/"), "size": 3, "eTag": "abc", "sequencer": "00"},
                },
            }
            for key in keys
        ]
    }


def sns(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:uploads",
        "Message": json.dumps(body),
    }


def eventbridge(bucket: str, key: str, kind: str = "Object Created") -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": kind,
        "source": "aws.s3",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {"version": "0", "bucket": {"name": bucket}, "object": {"key": key, "size": 5}},
    }


def pubsub(bucket: str, key: str, event: str = "OBJECT_FINALIZE", attributes: bool = True) -> dict[str, Any]:
    data = base64.b64encode(json.dumps({"kind": "storage#object", "bucket": bucket, "name": key}).encode()).decode()
    attrs = {"eventType": event, "bucketId": bucket, "objectId": key, "payloadFormat": "JSON_API_V1"}
    return {
        "message": {"attributes": attrs if attributes else {}, "data": data, "messageId": "1"},
        "subscription": "projects/p/subscriptions/s",
    }


def event_grid(container: str, key: str, kind: str = "Microsoft.Storage.BlobCreated", api: str = "PutBlob") -> dict:
    return {
        "id": str(uuid.uuid4()),
        "eventType": kind,
        "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/acct",
        "subject": f"/blobServices/default/containers/{container}/blobs/{key}",
        "data": {"api": api, "url": f"https://acct.blob.core.windows.net/{container}/{key}"},
        "dataVersion": "",
        "eventTime": "2024-01-01T00:00:00Z",
    }


def cloudevent(container: str, key: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "type": "Microsoft.Storage.BlobCreated",
        "source": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/acct",
        "subject": f"blobServices/default/containers/{container}/blobs/{key}",  # no leading "/" here
        "id": str(uuid.uuid4()),
        "data": {"api": "PutBlockList"},
    }


def pairs(body: Any) -> list[tuple[str, str, str]]:
    return [(o.scheme, o.bucket, o.key) for o in parse(body).objects]


# -- parsing ---------------------------------------------------------------------------------------------


def test_s3_keys_are_url_decoded_and_only_creations_count() -> None:
    body = s3_notification("b", ["dir/red flower+1.jpg", "x/ü.png"])
    body["Records"].append(s3_notification("b", ["gone.jpg"], "ObjectRemoved:Delete")["Records"][0])
    parsed = parse(body)
    assert pairs(body) == [("s3", "b", "dir/red flower+1.jpg"), ("s3", "b", "x/ü.png")]
    assert parsed.ignored == 1


@pytest.mark.parametrize(
    "wrap",
    [
        lambda b: sns(b),
        lambda b: {"Records": [{"eventSource": "aws:sqs", "body": json.dumps(b)}]},
        lambda b: {"Records": [{"eventSource": "aws:sqs", "body": json.dumps(sns(b))}]},
        lambda b: {"Records": [{"EventSource": "aws:sns", "Sns": {"Message": json.dumps(b)}}]},
        lambda b: {"MessageId": "1", "Body": json.dumps(b)},
        lambda b: {"Messages": [{"MessageId": "1", "Body": json.dumps(sns(b))}]},
    ],
    ids=["sns", "sqs-lambda", "sqs-sns", "sns-lambda", "sqs-message", "sqs-receive"],
)
def test_s3_event_inside_every_aws_envelope(wrap: Any) -> None:
    assert pairs(wrap(s3_notification("b", ["k 1.jpg"]))) == [("s3", "b", "k 1.jpg")]


def test_eventbridge_object_created_and_others_ignored() -> None:
    assert pairs(eventbridge("b", "a/b.jpg")) == [("s3", "b", "a/b.jpg")]
    assert parse(eventbridge("b", "a/b.jpg", "Object Deleted")).ignored == 1


def test_gcs_pubsub_push_from_attributes_or_data() -> None:
    assert pairs(pubsub("g", "x/y.jpg")) == [("gs", "g", "x/y.jpg")]
    assert pairs(pubsub("g", "x/y.jpg", attributes=False)) == [("gs", "g", "x/y.jpg")]
    assert parse(pubsub("g", "x/y.jpg", "OBJECT_DELETE")).ignored == 1


def test_azure_event_grid_cloudevents_and_validation_handshake() -> None:
    assert [(o.scheme, o.bucket, o.key, o.account) for o in parse([event_grid("c", "d/e f.jpg")]).objects] == [
        ("az", "c", "d/e f.jpg", "acct")
    ]
    assert parse([event_grid("c", "d/x", api="CreateFile")]).ignored == 1, "ADLS placeholder, data comes later"
    assert pairs(cloudevent("c", "k.png")) == [("az", "c", "k.png")]
    assert pairs([cloudevent("c", "1.png"), cloudevent("c", "2.png")]) == [("az", "c", "1.png"), ("az", "c", "2.png")]
    validation = [{"eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {"validationCode": "42"}}]
    assert parse(validation).reply == {"validationResponse": "42"}


@pytest.mark.parametrize(
    "body",
    [
        {"hello": 1},
        [],
        [1],
        {"Records": "x"},
        {"Records": [{"eventSource": "aws:kinesis"}]},
        "text",
        {"Type": "Notification"},
    ],
)
def test_unknown_shapes_are_malformed(body: Any) -> None:
    with pytest.raises(MalformedNotification):
        parse(body)


# -- auth ------------------------------------------------------------------------------------------------


def test_every_credential_form_and_constant_time_helpers() -> None:
    auth = Authenticator([SECRET, "next-secret"])
    basic = base64.b64encode(f"sns:{SECRET}".encode()).decode()
    for headers, query in [
        ({"X-Ingest-Token": SECRET}, None),
        ({"Authorization": f"Bearer {SECRET}"}, None),
        ({"Authorization": f"Basic {basic}"}, None),
        ({}, SECRET),
        ({"X-Ingest-Token": "next-secret"}, None),
    ]:
        assert auth.check_tokens(headers, query).value == "ok", headers
    assert auth.check_tokens({"X-Ingest-Token": "nope"}, None).value == "wrong"
    assert auth.check_tokens({}, None).value == "missing"
    body = b'{"a": 1}'
    assert auth.check_signature({"X-Ingest-Signature": sign(SECRET, body)}, body).value == "ok"
    assert auth.check_signature({"X-Ingest-Signature": sign(SECRET, body)}, body + b" ").value == "wrong"
    assert SECRET not in repr(auth)
    with pytest.raises(ValueError):
        Authenticator(["", ""])


# -- batching --------------------------------------------------------------------------------------------


class FakePrefect:
    """Records emitted events; can be told to fail."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail = False
        self.lock = threading.Lock()

    def emit(self, events: list[dict[str, Any]]) -> None:
        if self.fail:
            raise EmitError("Prefect API unreachable")
        with self.lock:
            self.events.extend(events)

    def key_lists(self) -> list[list[str]]:
        return [e["payload"]["keys"] for e in self.events]


def test_burst_becomes_one_event_per_bucket_after_the_window() -> None:
    from integrations.events import BucketRef

    fake = FakePrefect()
    batcher = Batcher(fake.emit, window=0.3)
    futures = []
    for i in range(50):
        futures += batcher.add(BucketRef("s3", "b"), [f"k{i}.jpg", f"k{i}.jpg"])
    futures += batcher.add(BucketRef("gs", "g"), ["x.jpg"])
    assert all(f.result(timeout=5) for f in futures)
    assert sorted(len(k) for k in fake.key_lists()) == [1, 50], "deduplicated, one event per bucket"
    event = next(e for e in fake.events if e["resource"]["bucket"] == "b")
    assert event["event"] == "storage.object.created"
    assert event["resource"]["prefect.resource.id"] == "storage.bucket.s3.b"
    batcher.close()


def test_batches_are_cut_by_key_count_and_by_parameter_size() -> None:
    from integrations.events import BucketRef

    fake = FakePrefect()
    batcher = Batcher(fake.emit, window=30, max_keys=10, max_bytes=4096)
    long_keys = [f"{'x' * 200}/{i:04d}.jpg" for i in range(60)]
    futures = batcher.add(BucketRef("s3", "b"), [f"k{i}" for i in range(25)])
    futures += batcher.add(BucketRef("s3", "c"), long_keys)
    batcher.close()  # flushes what the (long) window still holds
    assert all(f.result(timeout=5) for f in futures)
    sizes = [len(k) for k in fake.key_lists()]
    assert sum(sizes) == 85 and max(sizes) <= 10
    assert all(keys_size(k) <= 4096 for k in fake.key_lists())
    assert sorted(k for ks in fake.key_lists() for k in ks if k.startswith("x")) == long_keys


def test_emit_failure_fails_the_futures() -> None:
    from integrations.events import BucketRef

    fake = FakePrefect()
    fake.fail = True
    batcher = Batcher(fake.emit, window=0.05)
    (future,) = batcher.add(BucketRef("s3", "b"), ["a"])
    with pytest.raises(EmitError):
        future.result(timeout=5)
    batcher.close()


def test_emitter_posts_to_the_events_endpoint_and_reports_refusals() -> None:
    emitter = PrefectEmitter("http://127.0.0.1:9/api", api_key="")
    assert emitter.endpoint == "http://127.0.0.1:9/api/events"
    with pytest.raises(EmitError, match="unreachable"):
        emitter.emit([{"event": "x"}])


# -- the HTTP receiver (fake Prefect) --------------------------------------------------------------------


@pytest.fixture
def fake_prefect() -> FakePrefect:
    return FakePrefect()


@pytest.fixture
def receiver(fake_prefect: FakePrefect) -> Iterator[Receiver]:
    rec = Receiver(Authenticator([SECRET]), Batcher(fake_prefect.emit, window=0.2), max_body=64 * 1024).start()
    try:
        yield rec
    finally:
        rec.stop()


def post(rec: Receiver, body: Any, headers: dict[str, str] | None = None, path: str = "/events") -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json", "X-Ingest-Token": SECRET, **(headers or {})}
    return requests.post(f"{rec.url}{path}", data=data, headers={k: v for k, v in h.items() if v}, timeout=10)


def test_receiver_accepts_every_provider_and_emits_after_the_window(
    receiver: Receiver, fake_prefect: FakePrefect
) -> None:
    bodies = [
        s3_notification("b", ["1.jpg", "2.jpg"]),
        sns(s3_notification("b", ["3.jpg"])),
        eventbridge("b", "4.jpg"),
        pubsub("g", "5.jpg"),
        [event_grid("c", "6.jpg")],
    ]
    results: list[requests.Response] = []
    threads = [threading.Thread(target=lambda b=b: results.append(post(receiver, b))) for b in bodies]
    threads.append(
        threading.Thread(
            target=lambda: results.append(
                post(receiver, cloudevent("c", "7.jpg"), {"Content-Type": "application/cloudevents+json"})
            )
        )
    )
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results) == [200] * 6, [r.text for r in results]
    by_bucket = {e["resource"]["url"]: sorted(e["payload"]["keys"]) for e in fake_prefect.events}
    assert by_bucket == {
        "s3://b": ["1.jpg", "2.jpg", "3.jpg", "4.jpg"],
        "gs://g": ["5.jpg"],
        "az://c": ["6.jpg", "7.jpg"],
    }, "concurrent posts within the window share one event per bucket"
    assert next(e for e in fake_prefect.events if e["resource"]["url"] == "az://c")["resource"]["account"] == "acct"


def test_sns_from_text_plain_with_basic_auth_and_pubsub_with_query_token(
    receiver: Receiver, fake_prefect: FakePrefect
) -> None:
    basic = base64.b64encode(f"sns:{SECRET}".encode()).decode()
    res = post(
        receiver,
        sns(s3_notification("b", ["x.jpg"])),
        {"Content-Type": "text/plain; charset=UTF-8", "X-Ingest-Token": "", "Authorization": f"Basic {basic}"},
    )
    assert res.status_code == 200, res.text
    res = post(receiver, pubsub("g", "y.jpg"), {"X-Ingest-Token": ""}, path=f"/events?token={SECRET}")
    assert res.status_code == 200, res.text
    assert sorted(k for ks in fake_prefect.key_lists() for k in ks) == ["x.jpg", "y.jpg"]


def test_handshakes_answer_without_emitting(receiver: Receiver, fake_prefect: FakePrefect) -> None:
    validation = [{"eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {"validationCode": "abc"}}]
    assert post(receiver, validation).json() == {"validationResponse": "abc"}
    confirm = {"Type": "SubscriptionConfirmation", "TopicArn": "arn:t", "SubscribeURL": "https://sns.example/x"}
    assert post(receiver, confirm, {"Content-Type": "text/plain"}).json()["status"] == "sns-subscription-confirmation"
    res = requests.options(
        f"{receiver.url}/events", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}, timeout=10
    )
    assert res.status_code == 200 and res.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert requests.options(f"{receiver.url}/events", headers={"WebHook-Request-Origin": "evil"}).status_code == 403
    assert fake_prefect.events == []


@pytest.mark.parametrize(
    ("headers", "body", "path", "status"),
    [
        ({"X-Ingest-Token": ""}, {"Records": []}, "/events", 401),
        ({"X-Ingest-Token": "wrong"}, {"Records": []}, "/events", 403),
        ({"X-Ingest-Token": "", "Authorization": "Bearer wrong"}, {"Records": []}, "/events", 403),
        ({"X-Ingest-Token": "", "X-Ingest-Signature": "sha256=deadbeef"}, {"Records": []}, "/events", 403),
        ({"X-Ingest-Token": "", "X-Ingest-Signature": "md5=x"}, {"Records": []}, "/events", 403),
        ({}, b"{broken", "/events", 400),
        ({}, b"", "/events", 400),
        ({}, {"unknown": True}, "/events", 400),
        ({}, b"\xff\xfe", "/events", 400),
        ({"Content-Type": "application/xml"}, b"<x/>", "/events", 415),
        ({"Content-Type": ""}, b"{}", "/events", 415),
        ({}, b"[" + b" " * (65 * 1024) + b"]", "/events", 413),
        ({}, {"Records": []}, "/other", 404),
    ],
)
def test_refusals_have_clear_json_errors(
    receiver: Receiver,
    fake_prefect: FakePrefect,
    caplog: pytest.LogCaptureFixture,
    headers: dict[str, str],
    body: Any,
    path: str,
    status: int,
) -> None:
    caplog.set_level(logging.DEBUG)
    res = post(receiver, body, headers, path)
    assert res.status_code == status, res.text
    assert res.headers["Content-Type"] == "application/json"
    error = res.json()
    assert error["status"] == status and error["error"] and error["detail"]
    if status == 401:
        assert "WWW-Authenticate" in res.headers
    assert fake_prefect.events == []
    assert SECRET not in "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("encord_ingest"))


def test_signature_auth_and_query_token_never_logged(
    receiver: Receiver, fake_prefect: FakePrefect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = json.dumps(s3_notification("b", ["s.jpg"])).encode()
    res = post(receiver, body, {"X-Ingest-Token": "", "X-Ingest-Signature": sign(SECRET, body)})
    assert res.status_code == 200, res.text
    assert post(receiver, s3_notification("b", ["q.jpg"]), {"X-Ingest-Token": ""}, f"/events?token={SECRET}").ok
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("encord_ingest"))
    assert "POST /events" in ours and SECRET not in ours


def test_prefect_down_means_503_so_the_sender_retries(receiver: Receiver, fake_prefect: FakePrefect) -> None:
    fake_prefect.fail = True
    res = post(receiver, s3_notification("b", ["x.jpg"]))
    assert res.status_code == 503 and "retry" in res.json()["detail"]


def test_method_and_health(receiver: Receiver) -> None:
    assert requests.get(f"{receiver.url}/healthz", timeout=10).json() == {"ok": True}
    res = requests.put(f"{receiver.url}/events", data=b"{}", timeout=10)
    assert res.status_code == 405 and res.headers["Allow"] == "POST, OPTIONS"


# -- SQS polling (moto) ----------------------------------------------------------------------------------


@pytest.fixture
def sqs(aws: dict[str, str]) -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=aws["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _queue(sqs: Any) -> str:
    return sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimeout": "1"})["QueueUrl"]


def _visible(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def _wait(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_sqs_messages_are_deleted_only_after_prefect_accepted(sqs: Any) -> None:
    url = _queue(sqs)
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(s3_notification("b", ["1.jpg", "2.jpg"])))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(sns(s3_notification("b", ["3.jpg"]))))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(eventbridge("b", "4.jpg")))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))
    fake = FakePrefect()
    fake.fail = True
    batcher = Batcher(fake.emit, window=0.1)
    poller = SqsPoller(sqs, url, batcher, wait_seconds=1)
    while poller.poll_once():
        pass
    _wait(lambda: poller.failed == 3 and poller.deleted == 1)
    assert _visible(sqs, url) == 3, "refused keys stay queued (the test event is gone)"

    fake.fail = False
    time.sleep(1.2)  # visibility timeout
    _wait(lambda: (poller.poll_once() or True) and poller.deleted == 4, timeout=20)
    batcher.close()
    assert sorted(k for ks in fake.key_lists() for k in ks) == ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]
    assert _visible(sqs, url) == 0


def test_sqs_malformed_message_is_left_for_the_redrive_policy(sqs: Any) -> None:
    url = _queue(sqs)
    sqs.send_message(QueueUrl=url, MessageBody="not json at all")
    fake = FakePrefect()
    batcher = Batcher(fake.emit, window=0.05)
    poller = SqsPoller(sqs, url, batcher, wait_seconds=1)
    assert poller.poll_once() == 1
    batcher.close()
    assert poller.malformed == 1 and poller.deleted == 0 and fake.events == []
    assert _visible(sqs, url) == 1


# -- keyed batches (moto S3) -----------------------------------------------------------------------------


def test_keyed_batches_head_pair_and_skip(s3: Any, aws_in_environ: None) -> None:
    bucket = f"keyed-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    objects = {
        "in/a.jpg": b"aa",
        "in/a.jpg.json": b"{}",
        "in/a.jpg.metadata.json": b"{}",  # most specific wins
        "in/b.png": b"bbb",
        "in/b.json": b"{}",
        "in/c.jpg": b"c",
        "in/c.jpg.bak": b"x",
        "in/d.jpg": b"d",
        "in/d.jpg.json": b"{}",
        "in/lonely.json": b"{}",
        "in/skip.tmp": b"t",
        "out/x.jpg": b"x",
    }
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    source = open_source(f"s3://{bucket}/in/")
    stats = KeyedStats()
    opts = ListingOptions(key_filter=KeyFilter.build([], ["*.tmp"]))
    asked = [
        "in/a.jpg", "in/b.png", "in/c.jpg", "in/a.jpg",  # duplicate
        "in/d.jpg.json",  # only the sidecar was notified: its object is checked again
        "in/lonely.json", "in/gone.jpg", "in/skip.tmp", "out/x.jpg",
    ]  # fmt: skip
    batches = list(keyed_batches(source, asked, opts, 2, stats))
    entries = [e for b in batches for e in b]
    assert [len(b) for b in batches] == [2, 2]
    got = {e.obj.key: (e.obj.size, e.sidecar.key if e.sidecar else None) for e in entries}
    assert got == {
        "in/a.jpg": (2, "in/a.jpg.metadata.json"),
        "in/b.png": (3, "in/b.json"),
        "in/c.jpg": (1, None),
        "in/d.jpg": (1, "in/d.jpg.json"),
    }
    assert all(e.obj.etag for e in entries)
    assert (stats.requested, stats.listed, stats.sidecars, stats.orphans) == (8, 5, 1, 1)
    assert (stats.missing, stats.outside, stats.excluded) == (1, 1, 1)
    assert stats.missing_keys == ["in/gone.jpg"] and stats.outside_keys == ["out/x.jpg"]
    assert stats.orphan_keys == ["in/lonely.json"]


# -- credentials from Secret blocks ----------------------------------------------------------------------


def test_secret_env_only_sets_credential_variables() -> None:
    with pytest.raises(ConfigError, match="PATH"):
        load_secret_env(None, {"PATH": "some-block"})
    assert load_secret_env(None, None) == []


# -- the bridge as a process: `python -m integrations.events http|sqs` ----------------------------------


class _FakeApi(ThreadingHTTPServer):
    """Stands in for Prefect's POST /api/events (204), recording what arrived."""

    def __init__(self) -> None:
        events: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/api/events":
                    events.extend(json.loads(body))
                self.send_response(204 if self.path == "/api/events" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.events = events
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api"


@contextlib.contextmanager
def bridge(args: list[str], env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`python -m integrations.events ...` in its own process group, killed whatever happens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "integrations.events", "--window", "0.2", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready "), line
        yield proc, line.split()[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def finish(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, as a service manager stops it: pending keys are flushed, exit 0."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    return err


def test_http_bridge_process_posts_prefect_events_and_keeps_the_secret_out_of_its_logs() -> None:
    fake = _FakeApi()
    env = {"ENCORD_INGEST_RECEIVER_SECRET": SECRET, "PREFECT_API_URL": fake.api}
    try:
        with bridge(["-v", "http", "--port", "0"], env) as (proc, url):
            res = requests.post(
                f"{url}/events?token={SECRET}", json=s3_notification("b", ["p/1.jpg", "p/2.jpg"]), timeout=30
            )
            assert res.status_code == 200, res.text
            assert requests.post(f"{url}/events", json={}, timeout=30).status_code == 401
            err = finish(proc)
    finally:
        fake.shutdown()
    assert [sorted(e["payload"]["keys"]) for e in fake.events] == [["p/1.jpg", "p/2.jpg"]]
    assert fake.events[0]["resource"]["prefect.resource.id"] == "storage.bucket.s3.b"
    assert "POST /events" in err and SECRET not in err


def test_http_bridge_refuses_to_start_without_a_secret() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "integrations.events", "http", "--port", "0"],
        env={k: v for k, v in os.environ.items() if k != "ENCORD_INGEST_RECEIVER_SECRET"}
        | {"PREFECT_API_URL": "http://127.0.0.1:9/api"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "ENCORD_INGEST_RECEIVER_SECRET" in done.stderr


def test_sqs_bridge_process_empties_the_queue_into_one_event(sqs: Any, aws: dict[str, str]) -> None:
    url = _queue(sqs)
    for key in ("q/1.jpg", "q/2.jpg", "q/3.jpg"):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(sns(s3_notification("b", [key]))))
    fake = _FakeApi()
    args = ["sqs", "--queue-url", url, "--wait-seconds", "1"]
    try:
        with bridge(args, {**aws, "PREFECT_API_URL": fake.api}) as (proc, _):
            _wait(lambda: _visible(sqs, url) == 0, timeout=60)
            finish(proc)
    finally:
        fake.shutdown()
    assert sorted(k for e in fake.events for k in e["payload"]["keys"]) == ["q/1.jpg", "q/2.jpg", "q/3.jpg"]
    assert len(fake.events) <= 2, "messages of one burst share events"


# -- flow helpers ----------------------------------------------------------------------------------------


def test_event_for_another_bucket_is_refused_before_anything_runs() -> None:
    from encord_ingest.errors import UsageError
    from flows.events import check_bucket
    from tasks.run import IngestParams

    params = IngestParams(source="s3://mine/data/", folder="f", integration="i")
    check_bucket(params, "mine")
    check_bucket(params, "")
    with pytest.raises(UsageError, match=r"prefect\.resource\.id"):
        check_bucket(params, "theirs")


def test_folder_links_for_encord_the_emulator_and_a_template(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.artifacts import FOLDER_URL_ENV, folder_url

    monkeypatch.delenv(FOLDER_URL_ENV, raising=False)
    assert folder_url("https://api.encord.com", "u1") == "https://app.encord.com/"
    assert folder_url("https://api.us.encord.com/", "u1") == "https://app.us.encord.com/"
    assert folder_url("http://127.0.0.1:5000", "u1") == "http://127.0.0.1:5000/_emulator/state?folder=u1"
    monkeypatch.setenv(FOLDER_URL_ENV, "{app}/folders/{folder}")
    assert folder_url("https://api.encord.com", "u1") == "https://app.encord.com/folders/u1"


def test_keys_report_lists_what_was_not_ingested() -> None:
    from tasks.artifacts import keys_markdown

    stats = KeyedStats(requested=4, listed=2, orphans=1, missing=1, outside=1)
    stats.missing_keys, stats.outside_keys, stats.orphan_keys = ["in/gone.jpg"], ["out/x.jpg"], ["in/l.json"]
    text = keys_markdown(stats, source="s3://b/in/", bucket="b")
    assert "| 4 | 1 | 0 | 1 | 0 | 1 | 1 |" in text
    assert "`in/gone.jpg`" in text and "`out/x.jpg`" in text and "`in/l.json`" in text


def test_event_run_waits_for_the_source_lease_then_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.events as events
    from encord_ingest.errors import LedgerLockedError
    from tasks.run import IngestParams, RunSummary

    calls: list[int] = []

    def locked_twice(params: Any, run_id: str, **kwargs: Any) -> RunSummary:
        calls.append(1)
        if len(calls) <= 2:
            raise LedgerLockedError("another run is ingesting s3://b/in/")
        return RunSummary(run_id=run_id, registered=1)

    monkeypatch.setattr(events, "run_ingest", locked_twice)
    monkeypatch.setattr(events, "LEASE_RETRY_SECONDS", 0.01)
    params = IngestParams(source="s3://b/in/", folder="f", integration="i")
    summary, _ = events.run_keys(params, ["in/a.jpg"], "r1", lease_wait=5)
    assert summary.registered == 1 and len(calls) == 3
    calls.clear()
    with pytest.raises(LedgerLockedError):
        events.run_keys(params, ["in/a.jpg"], "r2", lease_wait=0)
    assert len(calls) == 1

"""Object-created notifications from S3, GCS and Azure, reduced to (bucket, key) pairs.

Every provider wraps the same fact differently: S3 sends `Records` directly, through SNS
(`Message` is a JSON string), through SQS (`Body`), or through EventBridge (`detail`); GCS
Pub/Sub push sends the object in `message.attributes` (and base64 `data`); Azure Event Grid
sends a list of events or CloudEvents. Only "object created" counts; other events are ignored,
shapes we do not recognise raise `MalformedNotification` (the receiver answers 400).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, unquote_plus, urlparse

MAX_DEPTH = 4
# Event Grid schema subjects start with "/", the CloudEvents schema's do not.
_AZURE_SUBJECT = re.compile(r"^/?blobServices/default/containers/(?P<container>[^/]+)/blobs/(?P<key>.+)$")
_AZURE_ACCOUNT = re.compile(r"/storageAccounts/(?P<account>[^/]+)", re.IGNORECASE)
# ADLS Gen2 reports an empty file on CreateFile; the data lands with FlushWithClose (another event).
_AZURE_SKIP_APIS = {"CreateFile", "CreateDirectory"}
_GCS_CREATED = {"OBJECT_FINALIZE", "google.cloud.storage.object.v1.finalized"}


class MalformedNotification(ValueError):
    """The body is JSON but no notification shape we know; the message says what was expected."""


@dataclass(slots=True, frozen=True)
class ObjectCreated:
    """One new object. `bucket` is the S3/GCS bucket or the Azure container."""

    scheme: str
    bucket: str
    key: str
    account: str = ""


@dataclass(slots=True)
class Parsed:
    """What one body held: created objects, ignored events, and a handshake reply if one is due."""

    objects: list[ObjectCreated] = field(default_factory=list)
    ignored: int = 0
    reply: dict[str, Any] | None = None
    kinds: set[str] = field(default_factory=set)

    def merge(self, other: Parsed) -> None:
        self.objects.extend(other.objects)
        self.ignored += other.ignored
        self.reply = self.reply or other.reply
        self.kinds |= other.kinds


def parse(body: Any, depth: int = 0) -> Parsed:
    """Parse a decoded JSON body (dict or list) of any supported shape."""
    if depth > MAX_DEPTH:
        raise MalformedNotification("notification envelopes nested too deeply")
    if isinstance(body, list):
        out = Parsed()
        if not body:
            raise MalformedNotification("empty event list")
        for event in body:
            out.merge(_parse_dict(event, depth))
        return out
    return _parse_dict(body, depth)


def parse_text(text: str | bytes, depth: int = 0) -> Parsed:
    try:
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedNotification(f"body is not valid JSON: {exc.__class__.__name__}") from None
    return parse(body, depth)


def _parse_dict(event: Any, depth: int) -> Parsed:
    if not isinstance(event, dict):
        raise MalformedNotification("expected a JSON object or a list of objects")
    if "specversion" in event:
        return _cloudevent(event)
    if "Records" in event:
        return _records(event["Records"], depth)
    if event.get("Type") in ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"):
        return _sns(event, depth)
    if "detail-type" in event and event.get("source") == "aws.s3":
        return _eventbridge(event)
    if isinstance(event.get("message"), dict) and "subscription" in event:
        return _pubsub(event["message"])
    if "eventType" in event and ("subject" in event or "data" in event):
        return _event_grid(event)
    if event.get("Event") == "s3:TestEvent":
        return Parsed(ignored=1, kinds={"s3-test"})
    if "Body" in event or "body" in event:
        return parse_text(event.get("Body", event.get("body")) or "", depth + 1)
    if isinstance(event.get("Messages"), list):
        out = Parsed()
        for message in event["Messages"]:
            out.merge(_parse_dict(message, depth + 1))
        return out
    raise MalformedNotification(
        "unknown notification shape: expected S3 Records, SNS, SQS, EventBridge, "
        "Pub/Sub push, Event Grid or CloudEvents JSON"
    )


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedNotification(f"{what} missing or not a string")
    return value


def _records(records: Any, depth: int) -> Parsed:
    if not isinstance(records, list):
        raise MalformedNotification("Records must be a list")
    out = Parsed()
    for record in records:
        if not isinstance(record, dict):
            raise MalformedNotification("each of Records must be an object")
        source = record.get("eventSource") or record.get("EventSource") or ""
        if source == "aws:sqs":
            out.merge(parse_text(_text(record.get("body"), "SQS record body"), depth + 1))
        elif source == "aws:sns":
            sns = record.get("Sns") or {}
            out.merge(parse_text(_text(sns.get("Message"), "SNS record Message"), depth + 1))
        elif "s3" in record:
            out.merge(_s3_record(record))
        else:
            raise MalformedNotification(f"unsupported record source {source!r}")
    return out


def _s3_record(record: dict[str, Any]) -> Parsed:
    name = str(record.get("eventName", ""))
    s3 = record.get("s3")
    if not isinstance(s3, dict):
        raise MalformedNotification("S3 record without an s3 object")
    if not name.startswith(("ObjectCreated:", "s3:ObjectCreated:")):
        return Parsed(ignored=1, kinds={"s3"})
    bucket = _text((s3.get("bucket") or {}).get("name"), "s3.bucket.name")
    raw_key = _text((s3.get("object") or {}).get("key"), "s3.object.key")
    # S3 URL-encodes keys in notifications ("red flower.jpg" arrives as "red+flower.jpg").
    return Parsed(objects=[ObjectCreated("s3", bucket, unquote_plus(raw_key))], kinds={"s3"})


def _sns(event: dict[str, Any], depth: int) -> Parsed:
    kind = event["Type"]
    if kind == "Notification":
        parsed = parse_text(_text(event.get("Message"), "SNS Message"), depth + 1)
        parsed.kinds.add("sns")
        return parsed
    if kind == "SubscriptionConfirmation":
        reply = {"status": "sns-subscription-confirmation", "topic": str(event.get("TopicArn", ""))}
        return Parsed(reply=reply, kinds={"sns-subscribe"}, ignored=1)
    return Parsed(ignored=1, kinds={"sns"})


def _eventbridge(event: dict[str, Any]) -> Parsed:
    if event.get("detail-type") != "Object Created":
        return Parsed(ignored=1, kinds={"eventbridge"})
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise MalformedNotification("EventBridge event without detail")
    bucket = _text((detail.get("bucket") or {}).get("name"), "detail.bucket.name")
    key = _text((detail.get("object") or {}).get("key"), "detail.object.key")
    return Parsed(objects=[ObjectCreated("s3", bucket, key)], kinds={"eventbridge"})


def _pubsub(message: dict[str, Any]) -> Parsed:
    attrs = message.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise MalformedNotification("message.attributes must be an object")
    event_type = attrs.get("eventType")
    if event_type is not None and event_type not in _GCS_CREATED:
        return Parsed(ignored=1, kinds={"gcs"})
    bucket, key = attrs.get("bucketId"), attrs.get("objectId")
    if not (bucket and key):
        resource = _pubsub_data(message.get("data"))
        bucket, key = resource.get("bucket"), resource.get("name")
        if event_type is None and resource.get("kind") != "storage#object":
            raise MalformedNotification("Pub/Sub message is not a Cloud Storage notification")
    return Parsed(
        objects=[ObjectCreated("gs", _text(bucket, "bucketId"), _text(key, "objectId"))],
        kinds={"gcs"},
    )


def _pubsub_data(data: Any) -> dict[str, Any]:
    if not isinstance(data, str) or not data:
        raise MalformedNotification("Pub/Sub message has neither bucketId/objectId attributes nor data")
    try:
        decoded = json.loads(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise MalformedNotification(f"Pub/Sub message data is not base64 JSON: {exc.__class__.__name__}") from None
    if not isinstance(decoded, dict):
        raise MalformedNotification("Pub/Sub message data must be a JSON object")
    return decoded


def _azure_blob(subject: Any, topic_or_source: Any, data: Any) -> ObjectCreated:
    match = _AZURE_SUBJECT.match(str(subject or ""))
    if match is None:
        raise MalformedNotification("Azure event subject is not blobServices/default/containers/C/blobs/KEY")
    account_match = _AZURE_ACCOUNT.search(str(topic_or_source or ""))
    account = account_match.group("account") if account_match else ""
    if not account and isinstance(data, dict) and data.get("url"):
        account = (urlparse(str(data["url"])).hostname or "").split(".", 1)[0]
    return ObjectCreated("az", match.group("container"), match.group("key"), account)


def _event_grid(event: dict[str, Any]) -> Parsed:
    kind = event.get("eventType")
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    if kind == "Microsoft.EventGrid.SubscriptionValidationEvent":
        code = _text(data.get("validationCode"), "data.validationCode")
        return Parsed(reply={"validationResponse": code}, kinds={"azure-validation"})
    if kind != "Microsoft.Storage.BlobCreated" or data.get("api") in _AZURE_SKIP_APIS:
        return Parsed(ignored=1, kinds={"azure"})
    return Parsed(objects=[_azure_blob(event.get("subject"), event.get("topic"), data)], kinds={"azure"})


def _cloudevent(event: dict[str, Any]) -> Parsed:
    kind = event.get("type")
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    if kind == "Microsoft.Storage.BlobCreated":
        if data.get("api") in _AZURE_SKIP_APIS:
            return Parsed(ignored=1, kinds={"azure-cloudevents"})
        return Parsed(
            objects=[_azure_blob(event.get("subject"), event.get("source"), data)], kinds={"azure-cloudevents"}
        )
    if kind in _GCS_CREATED:
        bucket = data.get("bucket") or str(event.get("source", "")).rpartition("/buckets/")[2]
        key = data.get("name") or unquote(str(event.get("subject", "")).removeprefix("objects/"))
        return Parsed(objects=[ObjectCreated("gs", _text(bucket, "bucket"), _text(key, "name"))], kinds={"gcs"})
    if not isinstance(kind, str):
        raise MalformedNotification("CloudEvent without a type")
    return Parsed(ignored=1, kinds={"cloudevents"})

"""Bucket notifications (S3, GCS, Azure) to Prefect events that start event-driven ingest runs.

`notifications` parses provider payloads, `auth` checks shared secrets and signatures,
`batcher` groups keys per bucket, `emit` posts Prefect events, `receiver` is the HTTP
endpoint and `sqs` the queue poller. Run with `python -m integrations.events http|sqs`.
"""

from integrations.events.auth import Authenticator, sign
from integrations.events.batcher import Batcher
from integrations.events.emit import EVENT_NAME, BucketRef, PrefectEmitter, resource_id
from integrations.events.notifications import MalformedNotification, ObjectCreated, parse, parse_text
from integrations.events.receiver import Receiver
from integrations.events.sqs import SqsPoller

__all__ = [
    "EVENT_NAME",
    "Authenticator",
    "Batcher",
    "BucketRef",
    "MalformedNotification",
    "ObjectCreated",
    "PrefectEmitter",
    "Receiver",
    "SqsPoller",
    "parse",
    "parse_text",
    "resource_id",
    "sign",
]

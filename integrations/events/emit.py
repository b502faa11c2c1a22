"""Prefect events for new objects: one event names one bucket and a list of keys.

Posted to `POST {PREFECT_API_URL}/events` (a JSON list of events; 204 when accepted) rather
than through `emit_event`, whose background worker gives no confirmation: the receiver answers
its sender, and the SQS poller deletes messages, only once Prefect has accepted the event.
A deployment's `DeploymentEventTrigger` on `storage.object.created` turns each event into one
flow run with `keys` and `bucket` as parameters (see deployments/prefect.yaml).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests

EVENT_NAME = "storage.object.created"
RESOURCE_PREFIX = "storage.bucket."


class EmitError(RuntimeError):
    """Prefect did not accept the events (unreachable, or a non-2xx answer)."""


@dataclass(slots=True, frozen=True)
class BucketRef:
    """Where keys live; the resource id a trigger matches is derived from it."""

    scheme: str
    bucket: str
    account: str = ""

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.bucket}"

    @property
    def resource_id(self) -> str:
        return resource_id(self.scheme, self.bucket)


def resource_id(scheme: str, bucket: str) -> str:
    """`storage.bucket.s3.raw-images`: what a deployment trigger's `match` names."""
    return f"{RESOURCE_PREFIX}{scheme}.{bucket}"


def build_event(ref: BucketRef, keys: Sequence[str]) -> dict[str, Any]:
    resource = {
        "prefect.resource.id": ref.resource_id,
        "prefect.resource.name": ref.url,
        "bucket": ref.bucket,
        "scheme": ref.scheme,
        "url": ref.url,
    }
    if ref.account:
        resource["account"] = ref.account
    return {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": EVENT_NAME,
        "resource": resource,
        "payload": {"keys": list(keys), "count": len(keys)},
    }


def keys_size(keys: Sequence[str]) -> int:
    """Bytes the key list takes as a JSON flow-run parameter."""
    return len(json.dumps(list(keys)).encode())


class PrefectEmitter:
    """Posts events to a Prefect API (open-source server, or Cloud with PREFECT_API_KEY)."""

    def __init__(self, api_url: str | None = None, api_key: str | None = None, timeout: float = 15.0) -> None:
        url = api_url or os.environ.get("PREFECT_API_URL", "")
        if not url:
            raise ValueError("no Prefect API: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)")
        self.endpoint = url.rstrip("/") + "/events"
        self._key = api_key if api_key is not None else os.environ.get("PREFECT_API_KEY", "")
        self.timeout = timeout
        self.session = requests.Session()

    def __repr__(self) -> str:
        return f"PrefectEmitter({self.endpoint!r})"

    def emit(self, events: list[dict[str, Any]]) -> None:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        try:
            res = self.session.post(self.endpoint, data=json.dumps(events), headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise EmitError(f"Prefect API unreachable at {self.endpoint}: {exc.__class__.__name__}") from None
        if res.status_code >= 300:
            raise EmitError(f"Prefect API refused {len(events)} event(s): HTTP {res.status_code} {res.text[:200]}")
